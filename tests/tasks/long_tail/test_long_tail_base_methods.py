"""LongTailClassifier's base methods (LDAM-DRW, logit adjustment, mixup with any loss) as per-class
objectives, and the CIFAR-LT learning-rate schedule."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer
from torch import nn

from lightning_mtl.strategies import PLOT
from lightning_mtl.tasks.common.optim import WarmupMultiStep
from lightning_mtl.tasks.long_tail import DigitsLongTailDataModule, LongTailClassifier
from lightning_mtl.tasks.long_tail.losses import LDAMLoss, mixup_pairs
from lightning_mtl.tasks.long_tail.resnet_cifar import NormalizedLinear

COUNTS = [400, 100, 30, 5]
IMAGES = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 3, 0])


def attach(model: LongTailClassifier, epoch: int = 0) -> LongTailClassifier:
    """Run ``setup`` against a stand-in trainer whose data module has ``COUNTS``."""
    model.trainer = SimpleNamespace(  # type: ignore[assignment]
        datamodule=SimpleNamespace(class_counts=COUNTS), current_epoch=epoch, global_step=0
    )
    model.setup("fit")
    return model


def by_class(per_sample: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reference split, with a Python loop: Σ over the class's samples / B."""
    batch = len(labels)
    return {
        f"class_{c}": sum(per_sample[i] for i in range(batch) if labels[i] == c) / batch
        for c in sorted(set(labels.tolist()))
    }


def drw_by_hand(counts: list[int], beta: float = 0.9999) -> torch.Tensor:
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    return torch.tensor([w * len(counts) / sum(raw) for w in raw])


def test_logit_adjusted_objectives() -> None:
    model = attach(LongTailClassifier(num_classes=4, loss="logit_adjusted", logit_adjust_tau=0.5))
    objectives = model.compute_objectives((IMAGES, LABELS), 0)
    prior = torch.tensor(COUNTS, dtype=torch.float32) / sum(COUNTS)
    per_sample = F.cross_entropy(model(IMAGES) + 0.5 * prior.log(), LABELS, reduction="none")
    expected = by_class(per_sample, LABELS)
    assert list(objectives) == list(expected)
    for name in expected:
        torch.testing.assert_close(objectives[name], expected[name])


def ldam_by_hand(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE of 30 · (z − Δ_y at the true class), Δ_c = 0.5 · (n_min / n_c)^{1/4}."""
    margins = torch.tensor([0.5 * (min(COUNTS) / n) ** 0.25 for n in COUNTS])
    shifted = logits - F.one_hot(labels, 4) * margins[labels, None]
    return F.cross_entropy(30.0 * shifted, labels, reduction="none")


@pytest.mark.parametrize("epoch", [2, 3])
def test_ldam_with_deferred_reweighting(epoch: int) -> None:
    model = attach(LongTailClassifier(num_classes=4, loss="ldam", drw_start_epoch=3), epoch)
    assert isinstance(model.criterion, LDAMLoss)
    objectives = model.compute_objectives((IMAGES, LABELS), 0)
    raw = ldam_by_hand(model(IMAGES), LABELS)
    if epoch < 3:  # before DRW: the plain LDAM mean
        expected = by_class(raw, LABELS)
        total = raw.mean()
    else:  # DRW: the reference's weighted mean Σ w_i l_i / Σ w_i, split by class
        w = drw_by_hand(COUNTS)[LABELS]
        expected = {
            name: value * len(LABELS) / w.sum() for name, value in by_class(w * raw, LABELS).items()
        }
        total = (w * raw).sum() / w.sum()
    for name in expected:
        torch.testing.assert_close(objectives[name], expected[name])
    torch.testing.assert_close(sum(objectives.values()), total)


def test_mixup_objectives_split_each_pair_between_its_two_classes() -> None:
    model = LongTailClassifier(num_classes=4, mixup_alpha=1.0)  # no trainer: global step 0
    objectives = model.compute_objectives((IMAGES, LABELS), 0)
    mixed, perm, lam = mixup_pairs(IMAGES, 1.0, torch.Generator().manual_seed(0))
    assert 0.0 < lam < 1.0 and not torch.equal(perm, torch.arange(8))
    logits = model(mixed)
    expected = dict.fromkeys(objectives, torch.tensor(0.0))
    for i in range(8):
        a, b = int(LABELS[i]), int(LABELS[perm[i]])
        expected[f"class_{a}"] = (
            expected[f"class_{a}"] + lam * F.cross_entropy(logits[i : i + 1], LABELS[i : i + 1]) / 8
        )
        expected[f"class_{b}"] = (
            expected[f"class_{b}"]
            + (1 - lam) * F.cross_entropy(logits[i : i + 1], LABELS[perm[i]].view(1)) / 8
        )
    for name in expected:
        torch.testing.assert_close(objectives[name], expected[name])
    # The sum is the soft-target mixup loss of the reference.
    soft = lam * F.one_hot(LABELS, 4).float() + (1 - lam) * F.one_hot(LABELS[perm], 4).float()
    torch.testing.assert_close(sum(objectives.values()), F.cross_entropy(logits, soft))
    # Switched off at run time (cRT's second stage): the un-mixed per-class losses.
    model.mixup_enabled = False
    plain = model.compute_objectives((IMAGES, LABELS), 0)
    reference = by_class(F.cross_entropy(model(IMAGES), LABELS, reduction="none"), LABELS)
    for name in reference:
        torch.testing.assert_close(plain[name], reference[name])


def test_mixup_with_ldam_drw_in_the_perturbing_pass() -> None:
    model = attach(
        LongTailClassifier(num_classes=4, loss="ldam", drw_start_epoch=0, mixup_alpha=1.0)
    )
    loss = model.compute_perturbation_objectives((IMAGES, LABELS), 0)["base"]
    mixed, perm, lam = mixup_pairs(IMAGES, 1.0, torch.Generator().manual_seed(0))
    logits = model(mixed)
    w = drw_by_hand(COUNTS)
    own = (w[LABELS] * ldam_by_hand(logits, LABELS)).sum() / w[LABELS].sum()
    partner = LABELS[perm]
    other = (w[partner] * ldam_by_hand(logits, partner)).sum() / w[LABELS].sum()
    torch.testing.assert_close(loss, lam * own + (1 - lam) * other)


def test_plot_balances_the_unmixed_classes_with_any_base_loss() -> None:
    model = attach(
        LongTailClassifier(num_classes=4, loss="balanced_softmax", mixup_alpha=1.0, strategy=PLOT())
    )
    objectives = model.compute_objectives((IMAGES, LABELS), 0)
    per_sample = F.cross_entropy(
        model(IMAGES) + torch.tensor(COUNTS, dtype=torch.float32).log(), LABELS, reduction="none"
    )
    for name, value in by_class(per_sample, LABELS).items():
        torch.testing.assert_close(objectives[name], value)


def test_classifier_and_argument_checks() -> None:
    assert isinstance(LongTailClassifier(backbone="resnet32", loss="ldam").net.fc, NormalizedLinear)
    assert isinstance(LongTailClassifier(backbone="resnet32").net.fc, nn.Linear)
    assert isinstance(
        LongTailClassifier(backbone="resnet32", loss="ldam", normalized_classifier=False).net.fc,
        nn.Linear,
    )
    with pytest.raises(ValueError, match="loss must be one of"):
        LongTailClassifier(loss="focal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr_schedule"):
        LongTailClassifier(lr_schedule="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a data module with class_counts"):
        model = LongTailClassifier(loss="ldam")
        model.trainer = SimpleNamespace(datamodule=None)  # type: ignore[assignment]
        model.setup("fit")


def test_warmup_multistep_factors_by_hand() -> None:
    schedule = WarmupMultiStep(warmup_epochs=5, milestones=(160, 180), gamma=0.1)
    expected = [0.2, 0.4, 0.6, 0.8] + [1.0] * 156 + [0.1] * 20 + [0.01] * 20
    assert [schedule(e) for e in range(200)] == pytest.approx(expected)
    assert WarmupMultiStep(0, (2,), 0.5)(0) == 1.0
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStep(5, (180, 160))
    with pytest.raises(ValueError, match="gamma"):
        WarmupMultiStep(5, (160,), 0.0)


class LearningRates(pl.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self.values.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_warmup_multistep_schedule_in_training(single_thread: None) -> None:
    model = LongTailClassifier(
        lr=0.1, lr_schedule="warmup_multistep", warmup_epochs=2, milestones=[3, 4]
    )
    rates = LearningRates()
    make_trainer(max_epochs=5, limit_train_batches=1, limit_val_batches=0, callbacks=[rates]).fit(
        model, datamodule=DigitsLongTailDataModule(batch_size=16)
    )
    assert rates.values == pytest.approx([0.05, 0.1, 0.1, 0.01, 0.001])
    optimizer = model.optimizers().optimizer
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 5e-4
    assert math.isclose(model.hparams.lr_decay, 0.1)
