"""GCDModule: the five losses, the PGI groups, EAGC's reference phase, timm backbones, a short
fit and the embedded recipe."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import cluster_accuracy_by_hand, make_trainer

from lightning_mtl.cli import run_cli
from lightning_mtl.objectives import combine
from lightning_mtl.strategies import LinearScalarization
from lightning_mtl.tasks.gcd import EAGC, DigitsGCDDataModule, conceptor, feature_energy
from lightning_mtl.tasks.gcd.models import DigitsMultiObjective, GCDModule, timm_backbone


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(12, 1, 8, 8, generator=generator)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 5, 6, 7, 8, 9, 1])
    is_labeled = torch.tensor([True] * 6 + [False] * 6)
    return images, labels, is_labeled


@pytest.mark.parametrize("use_swav", [True, False])
def test_compute_objectives_returns_the_finite_losses(use_swav: bool) -> None:
    losses = GCDModule(use_swav=use_swav).compute_objectives(_batch(), 0)
    expected = {"ce", "cluster", "con", "supcon"} | ({"swav"} if use_swav else set())
    assert set(losses) == expected
    for value in losses.values():
        assert value.dim() == 0 and torch.isfinite(value)


def test_ce_is_the_cross_entropy_of_the_labeled_rows_of_both_views() -> None:
    model = GCDModule().eval()  # eval: batch norm uses running statistics, views are fixed
    _, labels, is_labeled = _batch()
    views = torch.rand(12, 2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = model.compute_objectives((views, labels, is_labeled), 0)["ce"]
    rows = []
    for view in (views[:, 0], views[:, 1]):
        features = F.normalize(model.backbone(view), dim=1)
        logits = 10 * features @ F.normalize(model.prototypes.weight, dim=1).T
        rows.append(F.cross_entropy(logits[is_labeled], labels[is_labeled], reduction="sum"))
    assert math.isclose(loss.item(), (sum(rows) / 12).item(), rel_tol=1e-5)


@pytest.mark.parametrize("use_swav", [True, False])
def test_groups_weigh_the_losses_the_pgi_way(use_swav: bool) -> None:
    model = GCDModule(use_swav=use_swav)
    losses = {k: v.item() for k, v in model.compute_objectives(_batch(), 0).items()}
    names, objectives = combine(
        {k: torch.tensor(v) for k, v in losses.items()}, model.objective_groups
    )
    assert names == ("cls", "rep")
    rep = 0.35 * losses["supcon"] + 0.65 * losses["con"] + 0.65 * losses["cluster"]
    if use_swav:
        rep += 0.35 * losses["swav"]
    assert math.isclose(objectives[0].item(), 0.35 * losses["ce"], rel_tol=1e-5)
    assert math.isclose(objectives[1].item(), rep, rel_tol=1e-5, abs_tol=1e-6)


def test_given_groups_replace_the_pgi_ones() -> None:
    # One objective per loss, e.g. for MGDA over the five SimGCD losses.
    per_loss = {name: {name: 1.0} for name in ("ce", "cluster", "con", "supcon", "swav")}
    assert GCDModule(groups=per_loss).objective_groups == per_loss
    pair = {"labeled": {"ce": 1.0, "supcon": 0.5}, "rest": {"con": 1.0, "cluster": 1.0}}
    model = DigitsMultiObjective(groups={"both": {"cls": 0.5, "rep": 2.0}})
    assert model.objective_groups == {"both": {"cls": 0.5, "rep": 2.0}}
    assert GCDModule(use_swav=False, groups=pair).objective_groups == pair
    assert DigitsMultiObjective().objective_groups is None  # cls and rep themselves


@pytest.mark.parametrize("swav_mask", ["labeled", "unlabeled", "all"])
def test_swav_mask_picks_the_rows_whose_terms_count(swav_mask: str) -> None:
    from lightning_mtl.tasks.gcd import swav_loss

    torch.manual_seed(0)
    model = GCDModule(swav_mask=swav_mask).eval()
    _, labels, is_labeled = _batch()
    views = torch.rand(12, 2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = model.compute_objectives((views, labels, is_labeled), 0)["swav"]
    scores = [
        F.normalize(model.backbone(views[:, v]), dim=1)
        @ F.normalize(model.prototypes.weight, dim=1).T
        for v in (0, 1)
    ]
    rows = {"labeled": is_labeled, "unlabeled": ~is_labeled, "all": torch.ones(12, dtype=bool)}
    # Codes over the whole batch; the mean of the terms over the chosen rows only.
    per_row = torch.stack(
        [swav_loss(scores[0], scores[1], mask=torch.arange(12) == i) for i in range(12)]
    )
    expected = per_row[rows[swav_mask]].mean()
    torch.testing.assert_close(loss, expected)


def test_separate_swav_prototypes_leave_the_classifier_out_of_swav() -> None:
    from lightning_mtl.tasks.gcd import swav_loss

    torch.manual_seed(0)
    model = GCDModule(swav_prototypes="separate").eval()
    assert model.swav_prototypes is not None
    _, labels, is_labeled = _batch()
    views = torch.rand(12, 2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = model.compute_objectives((views, labels, is_labeled), 0)["swav"]
    features = [F.normalize(model.backbone(views[:, v]), dim=1) for v in (0, 1)]
    rows = F.normalize(model.swav_prototypes.weight, dim=1)
    expected = swav_loss(features[0] @ rows.T, features[1] @ rows.T, mask=is_labeled)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.prototypes.weight.grad is None  # the classifier takes no part in SwAV
    assert model.swav_prototypes.weight.grad is not None


def test_swav_codes_use_the_process_group_under_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    reduced: list[tuple[int, ...]] = []

    def record(tensor: torch.Tensor, *args: object, **kwargs: object) -> None:
        reduced.append(tuple(tensor.shape))  # one process: the sum over processes is itself

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", record)
    GCDModule().compute_objectives(_batch(), 0)
    assert reduced  # Sinkhorn summed its normalisers over the (here, single) process group


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="swav_prototypes"):
        GCDModule(swav_prototypes="own")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="swav_mask"):
        GCDModule(swav_mask="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_old"):
        GCDModule(num_old=11)
    with pytest.raises(ValueError, match="feature_dim"):
        GCDModule(eagc=EAGC(feature_dim=8))
    with pytest.raises(ValueError, match="reference_epochs"):
        GCDModule(eagc=EAGC(feature_dim=64), reference_epochs=0)


# The digits GCD model's parameters a weight decay must spare under the authors' rule (SimGCD's
# train.py and EAGC's methods/SimGCD.py: DINO's get_params_groups exempts "*.bias" and every
# one-dimensional parameter): the biases, and the batch norm's scale (backbone.7.weight).
_EXEMPT_FROM_DECAY = {
    "backbone.0.bias",
    "backbone.2.bias",
    "backbone.6.bias",
    "backbone.7.weight",
    "backbone.7.bias",
    "adapter.0.bias",
    "projector.0.bias",
    "projector.2.bias",
    "projector.4.bias",
}
_HEADS = ("adapter.", "projector.", "prototypes.")


@pytest.mark.parametrize("decay_biases_and_norms", [False, True])
def test_weight_decay_spares_biases_and_norm_parameters_as_the_authors_code_does(
    decay_biases_and_norms: bool,
) -> None:
    lr, head_lr, weight_decay = 0.05, 0.5, 0.01
    model = GCDModule(
        lr=lr,
        head_lr=head_lr,
        weight_decay=weight_decay,
        feature_adapter=True,
        decay_biases_and_norms=decay_biases_and_norms,
    )
    model.trainer = pl.Trainer(max_epochs=10, logger=False, enable_checkpointing=False)
    optimizer = model.configure_optimizers()["optimizer"]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    # With a zero gradient, SGD's first step (momentum buffer = the decayed gradient) is
    # p ← p − rate · weight_decay · p: the decay alone.
    for name, parameter in model.named_parameters():
        rate = head_lr if name.startswith(_HEADS) else lr
        decayed = decay_biases_and_norms or name not in _EXEMPT_FROM_DECAY
        factor = 1 - rate * weight_decay if decayed else 1.0
        torch.testing.assert_close(parameter.detach(), before[name] * factor, msg=name)


def test_eagc_reference_phase_spares_biases_and_norm_parameters_from_decay() -> None:
    model = GCDModule(eagc=EAGC(feature_dim=64), reference_weight_decay=0.01, reference_lr=0.1)
    model.trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False)
    before = {name: p.detach().clone() for name, p in model.backbone.named_parameters()}
    zero_images = torch.zeros(2, 1, 8, 8)
    # Freeze the batch statistics and zero every gradient: the phase's one step is the decay.
    model.backbone.eval()
    model.backbone.train = lambda mode=True: model.backbone  # type: ignore[method-assign]
    for parameter in model.backbone.parameters():
        parameter.register_hook(torch.zeros_like)
    model.train_reference([(zero_images, torch.tensor([0, 1]), torch.tensor([0, 1]))], epochs=1)
    for name, parameter in model.backbone.named_parameters():
        factor = 1.0 if f"backbone.{name}" in _EXEMPT_FROM_DECAY else 1 - 0.1 * 0.01
        torch.testing.assert_close(parameter.detach(), before[name] * factor, msg=name)


def test_short_fit_under_pgi_learns_the_old_classes(single_thread: None) -> None:
    torch.manual_seed(0)
    trainer = make_trainer(max_epochs=3)
    model, data = GCDModule(use_swav=False), DigitsGCDDataModule(batch_size=64)
    trainer.fit(model, data)
    # Chance is 0.2 on the five old classes; a model that does not learn stays near it.
    assert float(trainer.callback_metrics["val/old"]) > 0.6
    expected = cluster_accuracy_by_hand(model, data.val_dataloader(), num_old=5)
    for group in ("all", "old", "new"):
        assert float(trainer.callback_metrics[f"val/{group}"]) == pytest.approx(expected[group])


def _eagc_fit(tmp_path: Path, **trainer_kwargs: object) -> tuple[GCDModule, DigitsGCDDataModule]:
    torch.manual_seed(0)
    model = GCDModule(
        strategy=LinearScalarization(), use_swav=False, eagc=EAGC(64), reference_epochs=2
    )
    data = DigitsGCDDataModule(batch_size=64)
    options = {"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 1}
    options.update(trainer_kwargs)
    make_trainer(default_root_dir=tmp_path, **options).fit(model, data)
    return model, data


def test_eagc_reference_phase_trains_then_freezes_the_anchor(
    tmp_path: Path, single_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    after_phase: dict[str, torch.Tensor] = {}
    train_reference = GCDModule.train_reference

    def record(self: GCDModule, labeled: object, epochs: int) -> None:
        initial = {k: v.clone() for k, v in self.backbone.state_dict().items()}
        train_reference(self, labeled, epochs)
        after_phase.update({k: v.clone() for k, v in self.backbone.state_dict().items()})
        assert any(not torch.equal(initial[k], after_phase[k]) for k in initial)

    monkeypatch.setattr(GCDModule, "train_reference", record)
    model, data = _eagc_fit(tmp_path)
    assert model.anchor is not None and model.eagc is not None
    anchor_state = model.anchor.backbone.state_dict()
    # The anchor is the backbone as the phase left it, and stayed so while the backbone trained.
    assert all(torch.equal(anchor_state[k], after_phase[k]) for k in after_phase)
    assert not all(torch.equal(model.backbone.state_dict()[k], after_phase[k]) for k in after_phase)
    assert not any(p.requires_grad for p in model.anchor.parameters())
    assert not model.anchor.training
    # C and the initial μ come from the anchor features of every labeled image.
    labeled = data.train_dataset.is_labeled.nonzero().squeeze(1)
    images = torch.stack([data.train_dataset[int(i)][0] for i in labeled])
    with torch.no_grad():
        features = model.anchor.backbone(images)
    torch.testing.assert_close(model.eagc.conceptor, conceptor(features, 2.0))
    assert bool(model.eagc.initialised)


def test_eagc_state_is_restored_on_resume_without_a_second_reference_phase(
    tmp_path: Path, single_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = _eagc_fit(tmp_path, enable_checkpointing=True)
    (checkpoint,) = (tmp_path / "checkpoints").glob("*.ckpt")

    def fail(*args: object) -> None:
        raise AssertionError("the reference phase ran again on resume")

    monkeypatch.setattr(GCDModule, "train_reference", fail)
    resumed = GCDModule(
        strategy=LinearScalarization(), use_swav=False, eagc=EAGC(64), reference_epochs=2
    )
    trainer = make_trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(resumed, DigitsGCDDataModule(batch_size=64), ckpt_path=checkpoint)
    assert resumed.eagc is not None and model.eagc is not None
    torch.testing.assert_close(resumed.eagc.conceptor, model.eagc.conceptor)
    assert resumed.anchor is not None and model.anchor is not None
    for key, value in model.anchor.state_dict().items():
        torch.testing.assert_close(resumed.anchor.state_dict()[key], value)


def test_eagc_edits_the_gradient_reaching_the_backbone() -> None:
    torch.manual_seed(0)
    model = GCDModule(strategy=LinearScalarization(), use_swav=False, eagc=EAGC(64, w_aga=0.0))
    assert model.eagc is not None
    model.eagc.initialise(torch.randn(40, 64))
    _, labels, is_labeled = _batch()
    views = torch.rand(12, 2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model.eval()
    captured: list[torch.Tensor] = []

    def capture(module: object, args: object, out: torch.Tensor) -> None:
        out.register_hook(captured.append)

    handle = model.backbone.register_forward_hook(capture)
    model.compute_objectives((views, labels, is_labeled), 0)["ce"].backward()
    handle.remove()
    (edited,) = captured
    # The unedited gradient of ce w.r.t. the features, recomputed without EAGC.
    z = model.backbone(views.transpose(0, 1).flatten(0, 1)).detach().requires_grad_(True)
    scores = 10 * F.normalize(z, dim=1) @ F.normalize(model.prototypes.weight, dim=1).T
    mask = is_labeled.repeat(2)
    F.cross_entropy(scores[mask], labels.repeat(2)[mask], reduction="sum").div(12).backward()
    plain = z.grad
    assert plain is not None
    energy = feature_energy(z.detach(), model.eagc.conceptor)
    mean = model.eagc.energy_mean  # eval mode: μ is not updated
    beta = 0.5 * (1 - energy / mean).clamp(0, 1) * (~mask)
    expected = plain - beta[:, None] * (plain @ model.eagc.conceptor)
    torch.testing.assert_close(edited, expected, rtol=1e-4, atol=1e-7)


def test_timm_backbone_loads_local_weights_and_freezes_all_but_the_last_block(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    source = timm_backbone("vit_tiny_patch16_224", trainable_blocks=None)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    loaded = timm_backbone("vit_tiny_patch16_224", tmp_path / "weights.pth", trainable_blocks=2)
    for (name, value), (other_name, other) in zip(
        source.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert name == other_name and torch.equal(value, other)
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    expected = {
        n for n, _ in loaded.named_parameters() if n.startswith(("blocks.10.", "blocks.11."))
    }
    assert trainable == expected
    with pytest.raises(FileNotFoundError, match="no hub download"):
        timm_backbone("vit_tiny_patch16_224", tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="trainable_blocks"):
        timm_backbone("vit_tiny_patch16_224", trainable_blocks=13)


def test_gcd_module_on_a_timm_vit_trains_only_the_last_block() -> None:
    torch.manual_seed(0)
    model = GCDModule(
        strategy=LinearScalarization(), backbone="vit_tiny_patch16_224", num_classes=4, num_old=2
    )
    assert model.prototypes.in_features == 192
    views = torch.rand(4, 2, 3, 224, 224)
    batch = (views, torch.tensor([0, 1, 2, 3]), torch.tensor([True, True, False, False]))
    sum(model.compute_objectives(batch, 0).values()).backward()
    with_grad = {n for n, p in model.backbone.named_parameters() if p.grad is not None}
    assert with_grad and all(n.startswith("blocks.11.") for n in with_grad)


def test_embedded_gcd_recipe_reports_all_old_new(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], single_thread: None
) -> None:
    cli = run_cli(
        [
            "fit",
            "--config",
            "digits_gcd_pgi",
            "--trainer.max_epochs",
            "3",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
        ]
    )
    metrics = {key: float(value) for key, value in cli.trainer.callback_metrics.items()}
    expected = cluster_accuracy_by_hand(cli.model, cli.datamodule.test_dataloader(), num_old=5)
    for group in ("all", "old", "new"):
        assert metrics[f"test/{group}"] == pytest.approx(expected[group])
    printed = capsys.readouterr().out
    assert all(f"test/{group}" in printed for group in ("all", "old", "new"))


class _RankSkewedReference(GCDModule):
    """Each rank sees differently scaled images in the reference phase, so that the ranks'
    reference backbones differ unless the phase makes them equal."""

    def train_reference(self, labeled: object, epochs: int) -> None:
        scale = 1.0 + 0.5 * self.trainer.global_rank
        skewed = [(images * scale, labels, mask) for images, labels, mask in labeled]
        super().train_reference(skewed, epochs)


class _BackboneChecksums(pl.Callback):
    """Writes every rank's backbone and anchor sums at the start of training to ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_start(self, trainer: pl.Trainer, pl_module: GCDModule) -> None:
        assert pl_module.anchor is not None
        sums = [
            float(sum(p.double().sum() for p in m.parameters()))
            for m in (pl_module.backbone, pl_module.anchor)
        ]
        (self.folder / f"rank{trainer.global_rank}.txt").write_text(repr(sums))


@pytest.mark.slow
def test_eagc_reference_phase_leaves_every_ddp_rank_with_rank_zeros_backbone(
    tmp_path: Path,
) -> None:
    # With SwAV, so that its Sinkhorn all-reduce runs over a real (gloo) process group too.
    model = _RankSkewedReference(
        strategy=LinearScalarization(), use_swav=True, eagc=EAGC(64), reference_epochs=1
    )
    trainer = make_trainer(
        max_steps=2,
        limit_val_batches=0,
        devices=2,
        strategy="ddp_spawn",
        callbacks=[_BackboneChecksums(tmp_path)],
    )
    trainer.fit(model, DigitsGCDDataModule(batch_size=64))
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text() for r in (0, 1))
    assert rank0 == rank1
