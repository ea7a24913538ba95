"""Tests for EAGC: conceptor, energy, running mean, the edited feature gradient, Lightning use."""

from __future__ import annotations

import copy
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mtl import MultiObjectiveMixin
from lightning_mtl.strategies import LinearScalarization
from lightning_mtl.tasks.gcd import EAGC, ReferenceAnchor, conceptor, feature_energy

D = 4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _labeled_features(rows: int = 40) -> Tensor:
    # Anisotropic, so the conceptor has eigenvalues spread over (0, 1) and energies differ.
    return torch.randn(rows, D) * torch.tensor([3.0, 1.0, 0.3, 0.1])


def _initialised(**kwargs: object) -> EAGC:
    eagc = EAGC(D, **kwargs)  # type: ignore[arg-type]
    eagc.initialise(_labeled_features())
    return eagc


def _hand_energy(row: Tensor, matrix: Tensor) -> float:
    row64, matrix64 = row.double(), matrix.double()
    value = float(row64 @ matrix64 @ row64) / float(row64 @ row64)
    return min(max(value, 0.0), 1.0)


def _batch() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Five rows (two labeled): features, reference features, mask, upstream gradient ``w``."""
    z = torch.tensor(
        [
            [2.0, 0.5, 0.1, 0.0],  # labeled, high energy
            [0.1, 0.2, 1.0, 1.0],  # unlabeled, low energy: strong projection
            [-1.5, 1.0, 0.0, 0.2],  # labeled
            [1.0, 1.0, 1.0, 1.0],  # unlabeled, medium energy
            [3.0, 0.1, 0.0, 0.0],  # unlabeled, as energetic as the labeled set: β = 0
        ]
    )
    z_ref = z + 0.1 * torch.randn(5, D)
    is_labeled = torch.tensor([True, False, True, False, False])
    return z, z_ref, is_labeled, torch.randn(5, D)


def _feature_grad(eagc: EAGC, z: Tensor, z_ref: Tensor, mask: Tensor, w: Tensor) -> Tensor:
    leaf = z.clone().requires_grad_(True)
    (w * eagc(leaf, z_ref, mask)).sum().backward()
    assert leaf.grad is not None
    return leaf.grad


# ------------------------------------------------------------------------------- conceptor


@pytest.mark.parametrize("aperture", [0.5, 2.0, 10.0])
def test_conceptor_matches_eigen_decomposition(aperture: float) -> None:
    features = torch.randn(50, 5, dtype=torch.float64) @ torch.randn(5, 5, dtype=torch.float64)
    moment = features.T @ features / 50
    eigenvalues, vectors = torch.linalg.eigh(moment)
    expected = vectors @ torch.diag(eigenvalues / (eigenvalues + aperture**-2)) @ vectors.T
    matrix = conceptor(features, aperture)
    assert matrix.dtype == torch.float64
    torch.testing.assert_close(matrix, expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(matrix, matrix.T)
    spectrum = torch.linalg.eigvalsh(matrix)
    assert bool((spectrum > -1e-12).all() and (spectrum < 1).all())


def test_conceptor_float32_and_blocks_of_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    features = torch.randn(30, 3)
    whole = conceptor(features)
    import lightning_mtl.tasks.gcd.eagc as module

    monkeypatch.setattr(module, "_CHUNK_ROWS", 7)  # 30 rows in 5 blocks
    assert whole.dtype == torch.float32
    torch.testing.assert_close(conceptor(features), whole, rtol=0, atol=1e-6)
    assert conceptor(features.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize(
    ("features", "aperture", "match"),
    [
        (torch.randn(4), 2.0, "2-D"),
        (torch.zeros(4, 3, dtype=torch.long), 2.0, "floating"),
        (torch.zeros(0, 3), 2.0, "non-empty"),
        (torch.randn(4, 3), 0.0, "aperture"),
        (torch.randn(4, 3), float("inf"), "aperture"),
    ],
)
def test_conceptor_rejects_bad_inputs(features: Tensor, aperture: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        conceptor(features, aperture)


# ------------------------------------------------------------------------------- energy


def test_feature_energy_by_hand() -> None:
    matrix = torch.diag(torch.tensor([1.0, 0.5, 0.0, 0.0]))
    z = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],  # fully in the subspace
            [0.0, 2.0, 0.0, 0.0],  # half weight, norm does not matter
            [1.0, 1.0, 0.0, 0.0],  # (1 + 0.5) / 2
            [1.0, 0.0, 1.0, 0.0],  # 1 / 2
            [0.0, 0.0, 0.0, 5.0],  # orthogonal
            [0.0, 0.0, 0.0, 0.0],  # zero row: 0, not NaN
        ]
    )
    energy = feature_energy(z, matrix)
    torch.testing.assert_close(energy, torch.tensor([1.0, 0.5, 0.75, 0.5, 0.0, 0.0]))


def test_feature_energy_is_clamped_to_unit_interval() -> None:
    z = torch.randn(6, D)
    assert torch.equal(feature_energy(z, 2.0 * torch.eye(D)), torch.ones(6))
    assert torch.equal(feature_energy(z, -torch.eye(D)), torch.zeros(6))
    energy = feature_energy(z, conceptor(_labeled_features()))
    assert bool(((energy >= 0) & (energy <= 1)).all())


def test_feature_energy_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[D, D\]"):
        feature_energy(torch.randn(3, D), torch.eye(D + 1))
    with pytest.raises(ValueError, match="2-D"):
        feature_energy(torch.randn(D), torch.eye(D))


# ------------------------------------------------------------------------------- running mean


def test_initialise_sets_conceptor_and_mean_energy_of_labeled_set() -> None:
    features = _labeled_features()
    eagc = EAGC(D)
    eagc.initialise(features)
    torch.testing.assert_close(eagc.conceptor, conceptor(features.double()).float())
    mean = sum(_hand_energy(row, eagc.conceptor) for row in features) / len(features)
    assert float(eagc.energy_mean) == pytest.approx(mean, rel=1e-6)
    assert bool(eagc.initialised)


def test_running_mean_update_by_hand() -> None:
    eagc = _initialised(momentum=0.9)
    z, z_ref, is_labeled, _ = _batch()
    start = float(eagc.energy_mean)
    labeled = [_hand_energy(row, eagc.conceptor) for row in z[is_labeled]]
    expected = 0.9 * start + 0.1 * sum(labeled) / len(labeled)
    eagc(z, z_ref, is_labeled)  # training mode, no grad needed for the update
    assert float(eagc.energy_mean) == pytest.approx(expected, rel=1e-6)
    eagc.eval()
    eagc(z, z_ref, is_labeled)
    assert float(eagc.energy_mean) == pytest.approx(expected, rel=1e-6)  # eval: unchanged
    eagc.train()
    eagc(z, z_ref, torch.zeros(5, dtype=torch.bool))  # no labeled row: unchanged
    assert float(eagc.energy_mean) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------- backward


def test_backward_edit_matches_hand_computed_gradient() -> None:
    eagc = _initialised(w_aga=0.7, w_eep=0.5)
    z, z_ref, is_labeled, w = _batch()
    matrix = eagc.conceptor.double()
    energies = [_hand_energy(row, matrix) for row in z]
    # μ is updated from this batch's labeled rows before β is computed.
    mean = 0.95 * float(eagc.energy_mean) + 0.05 * (energies[0] + energies[2]) / 2
    grad = _feature_grad(eagc, z, z_ref, is_labeled, w)

    expected = w.double().clone()
    betas = []
    for i in range(5):
        if is_labeled[i]:
            expected[i] += 0.7 / (2 * D) * (z[i] - z_ref[i]).double()  # N = 2 labeled rows
        else:
            beta = 0.5 * min(max(1 - energies[i] / mean, 0.0), 1.0)
            betas.append(beta)
            expected[i] -= beta * (w[i].double() @ matrix)
    assert any(0 < beta < 0.5 for beta in betas) and min(betas) == 0.0  # a non-trivial batch
    torch.testing.assert_close(grad.double(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(grad, w)


def test_aga_term_is_gradient_of_l2_pull() -> None:
    eagc = _initialised(enable_eep=False, w_aga=0.7)
    z, z_ref, is_labeled, w = _batch()
    aga = _feature_grad(eagc, z, z_ref, is_labeled, w) - w
    leaf = z.clone().requires_grad_(True)
    count = int(is_labeled.sum())
    pull = 0.7 / (2 * count * D) * (leaf[is_labeled] - z_ref[is_labeled]).pow(2).sum()
    (expected,) = torch.autograd.grad(pull, leaf)
    torch.testing.assert_close(aga, expected)
    assert torch.equal(aga[~is_labeled], torch.zeros(3, D))


def test_no_labeled_rows_gives_no_aga_term_and_no_nan() -> None:
    eagc = _initialised()
    z, z_ref, _, w = _batch()
    mean = eagc.energy_mean.clone()
    none = torch.zeros(5, dtype=torch.bool)
    grad = _feature_grad(eagc, z, z_ref, none, w)
    assert bool(torch.isfinite(grad).all())
    assert torch.equal(eagc.energy_mean, mean)
    eagc.enable_aga = False  # same conceptor and μ (no labeled row left μ alone)
    eep_only = _feature_grad(eagc, z, z_ref, none, w)
    torch.testing.assert_close(grad, eep_only)  # the AGA part contributed nothing


@pytest.mark.parametrize(("aga", "eep"), [(False, False), (True, False), (False, True)])
def test_switches(aga: bool, eep: bool) -> None:
    z, z_ref, is_labeled, w = _batch()
    grad = _feature_grad(_initialised(enable_aga=aga, enable_eep=eep), z, z_ref, is_labeled, w)
    if not aga:
        assert torch.equal(grad[is_labeled], w[is_labeled])
    if not eep:
        assert torch.equal(grad[~is_labeled], w[~is_labeled])
    if aga or eep:
        assert not torch.equal(grad, w)


def test_forward_is_identity_and_skips_graph_without_grad() -> None:
    eagc = _initialised().eval()
    z, z_ref, is_labeled, _ = _batch()
    assert eagc(z, z_ref, is_labeled) is z  # nothing to edit, nothing to update
    leaf = z.clone().requires_grad_(True)
    out = eagc(leaf, z_ref, is_labeled)
    assert torch.equal(out, leaf) and out.grad_fn is not None


def test_loss_scale_keeps_aga_term_after_unscaling() -> None:
    eagc = _initialised().eval()
    z, z_ref, is_labeled, w = _batch()
    plain = _feature_grad(eagc, z, z_ref, is_labeled, w)
    leaf = z.clone().requires_grad_(True)
    scale = torch.tensor(1024.0)
    (scale * (w * eagc(leaf, z_ref, is_labeled, loss_scale=scale)).sum()).backward()
    assert leaf.grad is not None
    torch.testing.assert_close(leaf.grad / scale, plain)


def test_batched_backward_matches_per_objective_backward() -> None:
    # The mixin's Jacobian path uses is_grads_batched (vmap over the backward pass).
    eagc = _initialised().eval()
    z, z_ref, is_labeled, w = _batch()
    leaf = z.clone().requires_grad_(True)
    out = eagc(leaf, z_ref, is_labeled)
    objectives = torch.stack([(w * out).sum(), out.pow(2).sum()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (batched,) = torch.autograd.grad(
            objectives, leaf, torch.eye(2), is_grads_batched=True, retain_graph=True
        )
    for row in range(2):
        (single,) = torch.autograd.grad(objectives[row], leaf, retain_graph=True)
        torch.testing.assert_close(batched[row], single)


def test_bf16_autocast_gradient_close_to_fp32() -> None:
    eagc = _initialised().eval()  # eval: both runs see the same μ
    x = torch.randn(5, 6)
    _, _, is_labeled, w = _batch()
    backbone = nn.Linear(6, D)
    reference = copy.deepcopy(backbone)
    with torch.no_grad():
        reference.weight.add_(0.05 * torch.randn_like(reference.weight))

    def weight_grad(autocast: bool) -> Tensor:
        backbone.zero_grad()
        seen: list[torch.dtype] = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            z = backbone(x)
            z.register_hook(lambda grad: seen.append(grad.dtype))
            with torch.no_grad():
                z_ref = reference(x)
            out = eagc(z, z_ref, is_labeled)
            (w * out.float()).sum().backward()
        assert seen == [z.dtype] and out.dtype == z.dtype
        assert backbone.weight.grad is not None
        return backbone.weight.grad.clone()

    full = weight_grad(False)
    half = weight_grad(True)
    torch.testing.assert_close(half, full, rtol=0.03, atol=0.03 * float(full.abs().max()))


# ------------------------------------------------------------------------------- state


def test_state_dict_round_trip_strict() -> None:
    eagc = _initialised()
    z, z_ref, is_labeled, w = _batch()
    eagc(z, z_ref, is_labeled)  # moves μ away from its initial value
    state = eagc.state_dict()
    assert set(state) == {"conceptor", "energy_mean", "initialised"}
    fresh = EAGC(D)
    fresh.load_state_dict(state, strict=True)
    for name, value in state.items():
        assert torch.equal(getattr(fresh, name), value)
    eagc.eval(), fresh.eval()
    torch.testing.assert_close(
        _feature_grad(fresh, z, z_ref, is_labeled, w), _feature_grad(eagc, z, z_ref, is_labeled, w)
    )
    parent = nn.ModuleDict({"eagc": EAGC(D)})  # the flag follows loads through a parent too
    parent.load_state_dict({f"eagc.{name}": value for name, value in state.items()})
    _feature_grad(parent["eagc"], z, z_ref, is_labeled, w)


def test_eep_before_initialise_raises_and_aga_alone_works() -> None:
    z, z_ref, is_labeled, w = _batch()
    with pytest.raises(RuntimeError, match="initialise"):
        _feature_grad(EAGC(D), z, z_ref, is_labeled, w)
    aga_only = EAGC(D, enable_eep=False)
    grad = _feature_grad(aga_only, z, z_ref, is_labeled, w)
    assert torch.equal(grad[~is_labeled], w[~is_labeled])
    assert float(aga_only.energy_mean) == 0.0  # not updated before initialise


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"feature_dim": 0}, "feature_dim"),
        ({"feature_dim": D, "w_aga": -1.0}, "w_aga"),
        ({"feature_dim": D, "w_eep": float("nan")}, "w_eep"),
        ({"feature_dim": D, "aperture": 0.0}, "aperture"),
        ({"feature_dim": D, "momentum": 1.5}, "momentum"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EAGC(**kwargs)  # type: ignore[arg-type]


def test_forward_and_initialise_reject_bad_shapes() -> None:
    eagc = _initialised()
    z, z_ref, is_labeled, _ = _batch()
    with pytest.raises(ValueError, match="columns"):
        eagc(torch.randn(5, D + 1), torch.randn(5, D + 1), is_labeled)
    with pytest.raises(ValueError, match="z_ref"):
        eagc(z, z_ref[:4], is_labeled)
    with pytest.raises(ValueError, match="is_labeled"):
        eagc(z, z_ref, is_labeled[:4])
    with pytest.raises(ValueError, match="bool"):
        eagc(z, z_ref, is_labeled.float())
    with pytest.raises(ValueError, match="columns"):
        eagc.initialise(torch.randn(8, D + 1))
    integer_mask = eagc(z.clone().requires_grad_(True), z_ref, is_labeled.long())
    assert integer_mask.shape == z.shape


def test_reference_anchor_is_frozen_copy_in_eval_mode() -> None:
    backbone = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    anchor = ReferenceAnchor.from_backbone(backbone)
    parent = nn.ModuleDict({"backbone": backbone, "anchor": anchor}).train()
    assert backbone.training and not anchor.training and not anchor.backbone[1].training
    assert all(p.requires_grad for p in backbone.parameters())
    assert not any(p.requires_grad for p in anchor.parameters())
    stats = anchor.backbone[1].running_mean.clone()
    x = torch.randn(8, 3)
    out = anchor(x)
    assert not out.requires_grad
    assert torch.equal(out, anchor(x))  # dropout off, batch-norm statistics used and kept
    assert torch.equal(anchor.backbone[1].running_mean, stats)
    assert any(name.startswith("anchor.") for name in parent.state_dict())
    with pytest.raises(ValueError, match=r"nn\.Module"):
        ReferenceAnchor.from_backbone("resnet")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- Lightning


class _GCDModule(MultiObjectiveMixin, pl.LightningModule):
    """Backbone → EAGC → head; CE on labeled rows, entropy minimisation on all rows."""

    def __init__(self, labeled_inputs: Tensor) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, D), nn.Tanh())
        self.head = nn.Linear(D, 3)
        self.anchor = ReferenceAnchor.from_backbone(self.backbone)
        self.eagc = EAGC(D, w_eep=3.0)
        self.eagc.initialise(self.anchor(labeled_inputs))
        self.seen: list[tuple[Tensor, Tensor]] = []
        self.configure_balancing(LinearScalarization())

    def compute_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y, is_labeled = batch
        z = self.backbone(x)
        self.seen.append((z.detach().clone(), is_labeled.clone()))
        z = self.eagc(z, self.anchor(x), is_labeled)
        logits = self.head(z)
        labeled = is_labeled.float()
        per_row = F.cross_entropy(logits, y, reduction="none")
        supervised = (per_row * labeled).sum() / labeled.sum().clamp(min=1)
        probs = logits.softmax(dim=1)
        entropy = -(probs * probs.clamp(min=1e-8).log()).sum(dim=1).mean()
        return {"sup": supervised, "unsup": entropy}

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.5)


@pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")
def test_lightning_training_updates_running_mean_as_expected() -> None:
    x = torch.randn(40, 6)
    y = torch.randint(0, 3, (40,))
    is_labeled = torch.arange(40) % 2 == 0
    is_labeled[16:24] = False  # the third batch has no labeled row: μ must not move there
    module = _GCDModule(x[is_labeled])
    start_mean = module.eagc.energy_mean.clone()
    start_conceptor = module.eagc.conceptor.clone()
    start_backbone = copy.deepcopy(module.backbone.state_dict())
    start_anchor = copy.deepcopy(module.anchor.state_dict())

    trainer = pl.Trainer(
        max_steps=5,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = DataLoader(TensorDataset(x, y, is_labeled), batch_size=8)
    trainer.fit(module, data)

    assert trainer.global_step == 5 and len(module.seen) == 5
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in module.anchor.parameters()}
    expected = float(start_mean)
    for z, mask in module.seen:
        if bool(mask.any()):
            energies = [_hand_energy(row, start_conceptor) for row in z[mask]]
            expected = 0.95 * expected + 0.05 * sum(energies) / len(energies)
    assert float(module.eagc.energy_mean) == pytest.approx(expected, rel=1e-5)
    assert float(module.eagc.energy_mean) != pytest.approx(float(start_mean), rel=1e-7)
    assert torch.equal(module.eagc.conceptor, start_conceptor)
    for name, value in module.anchor.state_dict().items():
        assert torch.equal(value, start_anchor[name])
    assert any(
        not torch.equal(value, start_backbone[name])
        for name, value in module.backbone.state_dict().items()
    )
