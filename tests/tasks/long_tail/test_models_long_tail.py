"""LongTailClassifier: class-as-task objectives, PLOT's extra terms, mixup, and the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import predictions_by_hand

from lightning_mtl.callbacks import TemporalMOO
from lightning_mtl.cli import run_cli
from lightning_mtl.strategies import PLOT
from lightning_mtl.strategies.plot import class_preference
from lightning_mtl.tasks.long_tail import LongTailClassifier
from lightning_mtl.tasks.long_tail.losses import mixup

IMAGES = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 0, 0, 3, 3, 7])


def test_objectives_are_the_present_classes_and_sum_to_the_loss() -> None:
    model = LongTailClassifier()
    objectives = model.compute_objectives((IMAGES, LABELS), 0)
    assert list(objectives) == ["class_0", "class_3", "class_7"]
    per_sample = F.cross_entropy(model(IMAGES), LABELS, reduction="none")
    torch.testing.assert_close(sum(objectives.values()), per_sample.mean())
    torch.testing.assert_close(objectives["class_3"], per_sample[3:5].sum() / 6)


def test_class_sampling_keeps_at_most_m_classes_and_pools_the_rest() -> None:
    labels = torch.tensor([0, 0, 1, 1, 3, 3, 5, 7])
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model = LongTailClassifier(strategy=PLOT(class_counts=[50] * 10), max_moo_classes=2)
    objectives = model.compute_objectives((images, labels), 0)
    singles = [name for name in objectives if "+" not in name]
    (pooled,) = [name for name in objectives if "+" in name]
    assert len(singles) == 2
    classes = sorted(int(n.removeprefix("class_")) for n in singles)
    classes += [int(c) for c in pooled.removeprefix("class_").split("+")]
    assert sorted(classes) == [0, 1, 3, 5, 7]  # every present class once
    # Each class's term: its share of the mean loss.
    per_sample = F.cross_entropy(model(images), labels, reduction="none")

    def term(c: int) -> torch.Tensor:
        return per_sample[labels == c].sum() / 8

    for name in singles:
        torch.testing.assert_close(objectives[name], term(int(name.removeprefix("class_"))))
    pooled_classes = [int(c) for c in pooled.removeprefix("class_").split("+")]
    torch.testing.assert_close(objectives[pooled], sum(term(c) for c in pooled_classes))
    # The draw depends on the global step only: the same step draws the same classes.
    assert list(model.compute_objectives((images, labels), 0)) == list(objectives)


def test_class_sampling_varies_over_steps_and_is_off_without_a_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = LongTailClassifier(strategy=PLOT(), max_moo_classes=3)
    draws = set()
    for step in range(8):
        monkeypatch.setattr(LongTailClassifier, "global_step", property(lambda self, s=step: s))
        chosen, pooled = model._sample_moo_classes(list(range(10)))
        assert len(chosen) == 3 and sorted(chosen + pooled) == list(range(10))
        draws.add(tuple(chosen))
    assert len(draws) > 1  # a different subset on different steps
    labels = torch.arange(10).repeat(2)
    images = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    unlimited = LongTailClassifier(strategy=PLOT())
    assert len(unlimited.compute_objectives((images, labels), 0)) == 10
    with pytest.raises(ValueError, match="max_moo_classes"):
        LongTailClassifier(max_moo_classes=0)


def test_plot_pooled_objective_gets_the_sum_of_the_class_preferences() -> None:
    counts = [100, 40, 10, 5]
    plot = PLOT(class_counts=counts)
    expected = class_preference(counts)
    plot.setup(["class_0", "class_1+3"])
    vector = plot.inner.preference.vector(("class_0", "class_1+3"), torch.zeros(1))
    torch.testing.assert_close(
        vector, torch.tensor([expected[0], expected[1] + expected[3]], dtype=vector.dtype)
    )
    with pytest.raises(ValueError, match="joined by"):
        plot.setup(["class_0", "class_1+x"])


def test_plot_keeps_variability_collapse_out_of_the_class_objectives() -> None:
    # The authors' train_cifar.py: CAGrad balances the gradients of loss_sam[idx].sum() /
    # batch_size alone, and bal_ratio · L_vc joins the loss that trains the layers outside
    # layer3 (here the perturbing pass, whose gradient trains them).
    model = LongTailClassifier(strategy=PLOT(), variability_weight=0.02)
    per_sample = F.cross_entropy(model(IMAGES), LABELS, reduction="none")
    objectives = model.compute_objectives((IMAGES, LABELS), 0)
    expected = {
        "class_0": per_sample[:3].sum() / 6,
        "class_3": per_sample[3:5].sum() / 6,
        "class_7": per_sample[5] / 6,
    }
    assert list(objectives) == list(expected)
    for name, value in expected.items():
        torch.testing.assert_close(objectives[name], value)
    perturbing = model.compute_perturbation_objectives((IMAGES, LABELS), 0)
    assert list(perturbing) == ["base", "variability"]
    torch.testing.assert_close(perturbing["base"], per_sample.mean())
    # Classes 0 and 3 have two or more samples; class 7 is a singleton, without a spread.
    spread = (per_sample[:3].std() + per_sample[3:5].std()) / 2
    torch.testing.assert_close(perturbing["variability"], 0.02 * spread)
    without = LongTailClassifier(strategy=PLOT(), variability_weight=0.0)
    assert list(without.compute_perturbation_objectives((IMAGES, LABELS), 0)) == ["base"]
    with pytest.raises(ValueError, match="variability_weight"):
        LongTailClassifier(variability_weight=-0.01)


def test_perturbing_pass_is_the_mixup_loss() -> None:
    model = LongTailClassifier(mixup_alpha=0.4)
    loss = model.compute_perturbation_objectives((IMAGES, LABELS), 0)["base"]
    generator = torch.Generator().manual_seed(0)  # step 0
    mixed, soft, _ = mixup(IMAGES, F.one_hot(LABELS, 10).float(), 0.4, generator)
    torch.testing.assert_close(loss, F.cross_entropy(model(mixed), soft))
    # Under PLOT the spread is that of ℓ(f(mixed x_i), y_i), the code's loss_sam on mixed
    # images against the un-permuted labels.
    plot = LongTailClassifier(strategy=PLOT(), mixup_alpha=0.4)
    plot.load_state_dict(model.state_dict())
    against_own = F.cross_entropy(plot(mixed), LABELS, reduction="none")
    spread = (against_own[:3].std() + against_own[3:5].std()) / 2
    variability = plot.compute_perturbation_objectives((IMAGES, LABELS), 0)["variability"]
    torch.testing.assert_close(variability, 0.01 * spread)


def test_embedded_long_tail_recipe_reports_many_medium_few(tmp_path: Path) -> None:
    cli = run_cli(
        [
            "fit",
            "--config",
            "digits_lt_plot",
            "--trainer.max_epochs",
            "8",
            "--trainer.callbacks.init_args.epochs",
            "1",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
        ]
    )
    metrics = {key: float(value) for key, value in cli.trainer.callback_metrics.items()}
    # The recipe's split: 140 … 7 training images per class (imbalance 20), 30 test images of
    # every class; many > 60 (classes 0-2), few < 15 (classes 7-9), medium the rest.
    predicted, labels = predictions_by_hand(cli.model, cli.datamodule.test_dataloader())
    hits = (predicted == labels).double()
    groups = {"many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]}
    for group, classes in groups.items():
        members = torch.isin(labels, torch.tensor(classes))
        assert metrics[f"test/acc_{group}"] == pytest.approx(hits[members].mean().item())
    assert metrics["test/acc"] == pytest.approx(hits.mean().item())
    assert metrics["test/acc"] > 0.3  # chance is 0.1
    (temporal,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, TemporalMOO)]
    assert temporal.switched_at_epoch == 1
    assert cli.model.balancing_strategy.class_weights is not None  # filled from the data
