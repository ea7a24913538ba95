"""CelebA and NYUv2 multi-task modules with their small backbones, their metrics, the recipes."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer
from lightning.pytorch import LightningDataModule, LightningModule
from test_data_celeba_nyuv2 import write_fake_celeba, write_fake_nyuv2
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mtl.cli import MultiObjectiveCLI
from lightning_mtl.objectives import Objectives
from lightning_mtl.strategies import RGB, LinearScalarization
from lightning_mtl.tasks.multitask import delta_m
from lightning_mtl.tasks.multitask.data.celeba import CELEBA_ATTRIBUTES
from lightning_mtl.tasks.multitask.models.celeba import BinaryTaskScores, CelebAMultiTask
from lightning_mtl.tasks.multitask.models.nyuv2 import (
    NYUV2_METRICS,
    DepthErrors,
    NormalAngleErrors,
    NYUv2MultiTask,
    SegmentationScores,
    depth_loss,
    normal_loss,
    nyuv2_delta_m,
    segmentation_loss,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _snapshot(module: nn.Module) -> list[Tensor]:
    return [parameter.detach().clone() for parameter in module.parameters()]


def _changed(module: nn.Module, before: list[Tensor]) -> bool:
    after = list(module.parameters())
    return any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def _losses(output: dict[str, Tensor] | Objectives) -> dict[str, Tensor]:
    return dict(output.losses if isinstance(output, Objectives) else output)


# --- CelebA -----------------------------------------------------------------------------------


def brightness_attributes(count: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Images of a random brightness ``b`` plus noise; attribute ``k`` is ``b > t_k``.

    The 40 thresholds spread over ``(−0.8, 0.8)``, so every attribute is learnable from the mean
    brightness and their frequencies range from 10% to 90%.
    """
    generator = torch.Generator().manual_seed(seed)
    level = torch.rand(count, generator=generator) * 2 - 1
    images = level.view(count, 1, 1, 1) + 0.1 * torch.randn(count, 3, 16, 16, generator=generator)
    targets = (level[:, None] > torch.linspace(-0.8, 0.8, 40)).long()
    return images, targets


def test_celeba_objectives_are_named_by_attribute() -> None:
    model = CelebAMultiTask(trunk="small", width=4)
    images, targets = brightness_attributes(4)
    losses = model.compute_objectives((images, targets), 0)
    assert list(_losses(losses)) == list(CELEBA_ATTRIBUTES)
    for loss in _losses(losses).values():
        assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    # The paper's CelebA setting is the default strategy, on the trunk's parameters.
    strategy = model.balancing_strategy
    assert isinstance(strategy, RGB)
    assert (strategy.alpha_steps, strategy.proximity_weight) == (50, 1.0)
    assert model.balancing_scope == "shared"
    on_features = CelebAMultiTask(
        trunk="small", width=4, scope="representation", strategy=LinearScalarization()
    )
    output = on_features.compute_objectives((images, targets), 0)
    assert isinstance(output, Objectives) and output.representation is not None
    assert output.representation.shape == (4, 32)
    # RGB's EMA direction lives in parameter space: feature gradients of different images would
    # be averaged from step to step.
    with pytest.raises(ValueError, match="keeps state in the coordinates of the balanced scope"):
        CelebAMultiTask(trunk="small", width=4, scope="representation")


def test_celeba_rgb_fit_learns_and_changes_the_trunk() -> None:
    pl.seed_everything(0)
    images, targets = brightness_attributes(64)
    model = CelebAMultiTask(trunk="small", width=4, lr=3e-3)
    fixed = (images[:32], targets[:32])

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(sum(_losses(model.compute_objectives(fixed, 0)).values()))

    before_loss, before_trunk = fixed_loss(), _snapshot(model.trunk)
    loader = DataLoader(TensorDataset(images, targets), batch_size=16)
    trainer = make_trainer(max_steps=10, limit_val_batches=0)
    trainer.fit(model, loader)
    assert trainer.global_step == 10
    assert _changed(model.trunk, before_trunk)
    # 40 BCEs at about 0.69 each (29.1) drop to about 22.2 in 10 steps at this rate.
    assert fixed_loss() < 0.9 * before_loss
    strategy = model.balancing_strategy
    assert isinstance(strategy, RGB) and strategy.angles is not None
    assert strategy.angles.shape == (40,)


def test_celeba_validation_logs_accuracy_f1_and_delta_m() -> None:
    images, targets = brightness_attributes(24, seed=1)
    baselines = dict.fromkeys(CELEBA_ATTRIBUTES, 0.8)
    model = CelebAMultiTask(trunk="small", width=4, baselines=baselines)
    trainer = make_trainer()
    trainer.validate(
        model, DataLoader(TensorDataset(images, targets), batch_size=10), verbose=False
    )
    logged = {name: float(value) for name, value in trainer.callback_metrics.items()}
    model.eval()
    with torch.no_grad():
        predicted = model(images) > 0
    accuracy = (predicted == targets.bool()).float().mean(0)
    by_name = dict(zip(CELEBA_ATTRIBUTES, accuracy.tolist(), strict=True))
    assert logged["val/acc_Smiling"] == pytest.approx(by_name["Smiling"])
    assert logged["val/acc_mean"] == pytest.approx(accuracy.mean().item(), abs=1e-6)
    assert 0.0 <= logged["val/f1_mean"] <= 1.0 and "val/f1_Young" in logged
    assert logged["val/delta_m"] == pytest.approx(delta_m(by_name, baselines), abs=1e-4)


def test_binary_task_scores_accumulate_counts() -> None:
    scores = BinaryTaskScores(num_tasks=2)
    # Task 0: TP, FN | TN, FP → acc 0.5, F1 = 2/(2+1+1); task 1 never positive → F1 0.
    scores.update(torch.tensor([[3.0, -1.0], [-1.0, -2.0]]), torch.tensor([[1, 0], [1, 0]]))
    scores.update(torch.tensor([[-1.0, -1.0], [1.0, -3.0]]), torch.tensor([[0, 0], [0, 0]]))
    result = scores.compute()
    assert result["acc"].tolist() == [0.5, 1.0]
    assert result["f1"].tolist() == pytest.approx([0.5, 0.0])


def test_celeba_argument_and_shape_errors() -> None:
    with pytest.raises(ValueError, match="trunk must be"):
        CelebAMultiTask(trunk="vgg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distinct"):
        CelebAMultiTask(trunk="small", attributes=["a", "a"])
    with pytest.raises(ValueError, match="one score per attribute"):
        CelebAMultiTask(trunk="small", baselines={"Smiling": 0.9})
    model = CelebAMultiTask(trunk="small", width=4, attributes=["Bald", "Young"])
    with pytest.raises(ValueError, match=r"targets must have shape \[B, 2\]"):
        model.compute_objectives((torch.zeros(2, 3, 16, 16), torch.zeros(2, 3)), 0)


# --- NYUv2 ------------------------------------------------------------------------------------


def dense_batch(count: int, height: int = 16, width: int = 24, seed: int = 0) -> tuple[Tensor, ...]:
    """Images whose channels determine the targets, with unlabelled and missing pixels."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, height, width, generator=generator)
    label = (images[:, 0] > 0.5).long()
    label[:, 0, :4] = -1
    depth = 1 + images[:, 1:2].clone()
    depth[:, :, 1, :3] = 0
    x = images[:, 2] - 0.5
    normal = F.normalize(torch.stack([x, torch.full_like(x, 0.3), torch.ones_like(x)], 1), dim=1)
    normal[:, :, 2, :2] = 0
    return images, label, depth, normal


def test_nyuv2_objectives_and_outputs() -> None:
    model = NYUv2MultiTask(backbone="small", width=4)
    batch = dense_batch(2)
    losses = _losses(model.compute_objectives(batch, 0))
    assert list(losses) == ["segmentation", "depth", "normal"]
    for loss in losses.values():
        assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    segmentation, depth, normal = model(batch[0])
    assert segmentation.shape == (2, 13, 16, 24) and depth.shape == (2, 1, 16, 24)
    assert torch.allclose(normal.norm(dim=1), torch.ones(2, 16, 24), atol=1e-5)
    strategy = model.balancing_strategy
    assert isinstance(strategy, RGB)
    assert (strategy.alpha_steps, strategy.proximity_weight) == (5, 0.0)
    with pytest.raises(ValueError, match="keeps state in the coordinates of the balanced scope"):
        NYUv2MultiTask(backbone="small", width=4, scope="representation")
    on_features = NYUv2MultiTask(
        backbone="small", width=4, scope="representation", strategy=LinearScalarization()
    )
    output = on_features.compute_objectives(batch, 0)
    assert isinstance(output, Objectives) and output.representation is not None
    assert output.representation.shape == (2, 8, 4, 6)


def test_nyuv2_rgb_fit_learns_and_changes_the_encoder() -> None:
    pl.seed_everything(0)
    data = dense_batch(16)
    model = NYUv2MultiTask(backbone="small", width=4, lr=3e-3)
    fixed = tuple(t[:8] for t in data)

    def fixed_losses() -> dict[str, float]:
        with torch.no_grad():
            return {k: float(v) for k, v in _losses(model.compute_objectives(fixed, 0)).items()}

    before_losses, before_encoder = fixed_losses(), _snapshot(model.encoder)
    trainer = make_trainer(max_steps=10, limit_val_batches=0)
    trainer.fit(model, DataLoader(TensorDataset(*data), batch_size=8))
    assert trainer.global_step == 10
    assert _changed(model.encoder, before_encoder)
    after = fixed_losses()
    # Each of the three objectives falls (by 7–20% in 10 steps at this rate).
    for name, before in before_losses.items():
        assert after[name] < 0.97 * before, name


def test_nyuv2_losses_by_hand() -> None:
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 1, 0, 0] = math.log(2.0)  # probabilities 1/2, 1/4, 1/4 at pixel 0
    label = torch.tensor([[[1, -1]]])
    assert segmentation_loss(logits, label).item() == pytest.approx(math.log(2.0))
    all_ignored = segmentation_loss(logits.requires_grad_(), torch.full((1, 1, 2), -1))
    assert all_ignored.item() == 0.0 and all_ignored.requires_grad
    pred = torch.tensor([1.0, 5.0, 2.0, 7.0]).view(1, 1, 2, 2)
    target = torch.tensor([2.0, 0.0, 2.5, 7.0]).view(1, 1, 2, 2)
    assert depth_loss(pred, target).item() == pytest.approx((1 + 0.5 + 0) / 3)
    # Prediction lengths do not matter; the missing normal (0 vector) is left out.
    pred_normal = torch.tensor([[2.0, 0, 0], [0, 0, 3.0], [0, 1.0, 0]]).T.reshape(1, 3, 1, 3)
    true_normal = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0]]).T.reshape(1, 3, 1, 3)
    assert normal_loss(pred_normal, true_normal).item() == pytest.approx(0.5)


def test_segmentation_scores_by_hand_with_ignored_pixels() -> None:
    target = torch.tensor([[[0, 0, 1, 1, 2, -1]]])
    preds = torch.tensor([[[0, 1, 1, 1, 0, 2]]])
    # Confusion (true × pred, labelled pixels only): class 0 → {0, 1}; 1 → {1, 1}; 2 → {0}.
    # IoU: 0 → 1/(2+2−1) = 1/3; 1 → 2/(2+3−2) = 2/3; 2 → 0/1 = 0 (its prediction of the
    # ignored pixel does not count). Class 3 never occurs and has no IoU.
    whole = SegmentationScores(num_classes=4)
    whole.update(preds, target)
    result = whole.compute()
    assert result["miou"].item() == pytest.approx(1 / 3)
    assert result["pixel_acc"].item() == pytest.approx(3 / 5)
    split = SegmentationScores(num_classes=4)
    split.update(preds[..., :3], target[..., :3])
    logits = F.one_hot(preds[..., 3:], 4).permute(0, 3, 1, 2).float()
    split.update(logits, target[..., 3:])
    assert torch.equal(split.confusion, whole.confusion)


def test_depth_errors_by_hand_accumulate_over_pixels() -> None:
    errors = DepthErrors()
    errors.update(
        torch.tensor([1.0, 3.0]).view(1, 1, 1, 2), torch.tensor([2.0, 0.0]).view(1, 1, 1, 2)
    )
    errors.update(torch.tensor([3.0, 4.0, 6.0]).view(1, 1, 1, 3), torch.full((1, 1, 1, 3), 4.0))
    # Valid pixels: |1−2| = 1 (rel 1/2), |3−4| = 1 (1/4), 0, |6−4| = 2 (1/2); the 0 is skipped.
    result = errors.compute()
    assert result["abs_err"].item() == pytest.approx(4 / 4)
    assert result["rel_err"].item() == pytest.approx((0.5 + 0.25 + 0 + 0.5) / 4)


def _at_angles(degrees: list[float], length: float = 1.0) -> tuple[Tensor, Tensor]:
    """Predictions at the given angles from the +z target, as ``[1, 3, 1, N]`` maps."""
    angles = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    pred = torch.stack([angles.sin(), torch.zeros_like(angles), angles.cos()]) * length
    target = torch.tensor([0.0, 0.0, 1.0]).view(3, 1).expand(3, len(degrees))
    return pred.float().view(1, 3, 1, -1), target.reshape(1, 3, 1, -1).clone()


def test_normal_angle_errors_by_hand() -> None:
    pred, target = _at_angles([0.0, 15.0, 25.0, 45.0, 90.0, 60.0], length=3.0)
    target[..., -1] = 0  # the last pixel has no normal
    result = NormalAngleErrors()(pred, target)
    assert result["mean_angle"].item() == pytest.approx((0 + 15 + 25 + 45 + 90) / 5, abs=1e-3)
    assert result["median_angle"].item() == pytest.approx(25.0, abs=0.01)
    assert result["within_11_25"].item() == pytest.approx(1 / 5)
    assert result["within_22_5"].item() == pytest.approx(2 / 5)
    assert result["within_30"].item() == pytest.approx(3 / 5)


def test_normal_median_is_within_a_bin_of_the_exact_one() -> None:
    generator = torch.Generator().manual_seed(0)
    degrees = (torch.rand(2001, generator=generator) * 120).tolist()
    metric = NormalAngleErrors()
    for start in range(0, 2001, 500):  # accumulated over several batches
        metric.update(*_at_angles(degrees[start : start + 500]))
    exact = torch.tensor(degrees).median().item()
    assert metric.compute()["median_angle"].item() == pytest.approx(exact, abs=0.011)


def test_nyuv2_validation_logs_every_metric_and_delta_m() -> None:
    baselines = dict.fromkeys(NYUV2_METRICS, 0.5)
    model = NYUv2MultiTask(backbone="small", width=4, baselines=baselines)
    trainer = make_trainer()
    loader = DataLoader(TensorDataset(*dense_batch(6)), batch_size=4)
    trainer.validate(model, loader, verbose=False)
    logged = {name: float(value) for name, value in trainer.callback_metrics.items()}
    values = {name: logged[f"val/{name}"] for name in NYUV2_METRICS}
    assert 0.0 <= values["segmentation_miou"] <= 1.0 and values["depth_abs_err"] > 0
    assert values["normal_median_angle"] <= 180.0
    assert logged["val/delta_m"] == pytest.approx(nyuv2_delta_m(values, baselines), rel=1e-5)
    expected_flat = nyuv2_delta_m(values, baselines, "metric")
    assert logged["val/delta_m_metrics"] == pytest.approx(expected_flat, rel=1e-5)
    with pytest.raises(ValueError, match="nine metrics"):
        NYUv2MultiTask(backbone="small", baselines={"segmentation_miou": 0.4})


def test_groups_reach_the_balancing_of_both_modules() -> None:
    face = {"face": {"Smiling": 1.0, "Young": 0.5}}
    celeba = CelebAMultiTask(trunk="small", attributes=["Smiling", "Young"], width=4, groups=face)
    assert celeba.objective_groups == face
    geometry = {"semantic": {"segmentation": 1.0}, "geometry": {"depth": 1.0, "normal": 1.0}}
    nyuv2 = NYUv2MultiTask(backbone="small", width=4, groups=geometry)
    assert nyuv2.objective_groups == geometry
    assert CelebAMultiTask(trunk="small", width=4).objective_groups is None


# --- recipes ----------------------------------------------------------------------------------


class RecordingCLI(MultiObjectiveCLI):
    """The package's CLI, keeping the metrics that ``fit`` left (``test`` replaces them)."""

    fitted: dict[str, float]

    def after_fit(self) -> None:
        self.fitted = {name: float(value) for name, value in self.trainer.callback_metrics.items()}
        super().after_fit()


def _run_recipe(
    recipe: str, tmp_path: Path, overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> RecordingCLI:
    # LightningCLI warns when pytest's own arguments sit in sys.argv next to `args`.
    monkeypatch.setattr(sys, "argv", ["lightning-mtl"])
    return RecordingCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=[
            "fit",
            "--config",
            recipe,
            "--trainer.max_epochs",
            "1",
            "--trainer.accelerator",
            "cpu",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "logs"),
            "--data.init_args.batch_size",
            "2",
            "--data.init_args.num_workers",
            "0",
            *overrides,
        ],
    )


def test_celeba_recipe_runs_on_a_fake_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (8, 40), generator=generator) * 2 - 1
    rows = {
        f"{i + 1:06d}.jpg": (tuple(signs[i].tolist()), [0, 0, 0, 0, 1, 1, 2, 2][i])
        for i in range(8)
    }
    root = write_fake_celeba(tmp_path / "celeba", rows=rows, attributes=list(CELEBA_ATTRIBUTES))
    overrides = ["--data.init_args.root", str(root), "--data.init_args.image_size", "16"]
    overrides += ["--model.init_args.trunk", "small", "--model.init_args.width", "4"]
    cli = _run_recipe("celeba_rgb.yaml", tmp_path, overrides, monkeypatch)
    assert isinstance(cli.model, CelebAMultiTask) and cli.trainer.global_step == 2
    strategy = cli.model.balancing_strategy
    assert isinstance(strategy, RGB) and strategy.alpha_steps == 50
    # EquilibriumMonitor measured step 0 (every 200 steps); fit validated, then tested.
    assert 0.0 <= cli.fitted["mer/conflict_epoch"] <= 1.0
    assert "val/acc_mean" in cli.fitted and "test/acc_mean" in cli.trainer.callback_metrics


def test_nyuv2_recipe_runs_on_a_fake_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_fake_nyuv2(tmp_path / "nyuv2", train=4, val=2)
    overrides = ["--data.init_args.root", str(root)]
    overrides += ["--model.init_args.backbone", "small", "--model.init_args.width", "4"]
    cli = _run_recipe("nyuv2_rgb.yaml", tmp_path, overrides, monkeypatch)
    assert isinstance(cli.model, NYUv2MultiTask) and cli.trainer.global_step == 2
    strategy = cli.model.balancing_strategy
    assert isinstance(strategy, RGB) and (strategy.alpha_steps, strategy.proximity_weight) == (5, 0)
    assert 0.0 <= cli.fitted["mer/conflict_epoch"] <= 1.0 and "val/normal_mean_angle" in cli.fitted
    assert "test/segmentation_miou" in cli.trainer.callback_metrics
