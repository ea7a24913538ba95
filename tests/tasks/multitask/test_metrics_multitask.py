"""Δm%, mean rank and PerTaskAccuracy against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_mtl.tasks.multitask import PerTaskAccuracy, delta_m, mean_rank

# --- delta_m ----------------------------------------------------------------------------------


def test_delta_m_mixed_directions_by_hand() -> None:
    # Performance drops (lower is better, the RGB paper's §3.1): a: −(0.8 − 0.5)/0.5 = −0.6;
    # b: −(0.5 − 1)/1 = +0.5; c (lower is better): (2 − 4)/4 = −0.5.
    value = delta_m(
        {"a": 0.8, "b": 0.5, "c": 2.0},
        {"a": 0.5, "b": 1.0, "c": 4.0},
        higher_is_better={"a": True, "b": True, "c": False},
    )
    assert value == pytest.approx(100.0 * (-0.6 + 0.5 - 0.5) / 3)


def test_delta_m_is_zero_on_the_baselines_and_sign_follows_direction() -> None:
    baselines = {"seg": 0.5, "depth": 0.25}
    assert delta_m(baselines, baselines) == 0.0
    better = {"seg": 0.55, "depth": 0.25}
    assert delta_m(better, baselines) == pytest.approx(-5.0)  # 10% better on one of two tasks
    assert delta_m(better, baselines, higher_is_better=False) == pytest.approx(5.0)


def test_delta_m_ignores_key_order() -> None:
    assert delta_m({"a": 0.9, "b": 0.6}, {"b": 0.5, "a": 0.9}) == pytest.approx(-10.0)


@pytest.mark.parametrize(
    ("metrics", "baselines", "match"),
    [
        ({"a": 0.9}, {"a": 0.9, "b": 0.8}, r"only in baselines: \['b'\]"),
        ({"a": 0.9, "c": 0.1}, {"a": 0.9}, r"only in metrics: \['c'\]"),
        ({"a": 0.9}, {"a": 0.0}, "baseline of task 'a' is 0"),
        ({"a": math.nan}, {"a": 0.5}, "metric of task 'a' must be finite"),
        ({"a": 0.5}, {"a": math.inf}, "baseline of task 'a' must be finite"),
        ({}, {}, "at least one task"),
    ],
)
def test_delta_m_errors(metrics: dict, baselines: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        delta_m(metrics, baselines)


def test_delta_m_direction_mapping_must_name_every_task() -> None:
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        delta_m({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0}, higher_is_better={"a": True})


# --- mean_rank --------------------------------------------------------------------------------


def test_mean_rank_with_ties_by_hand() -> None:
    results = {
        "ew": {"t0": 0.90, "t1": 0.80, "t2": 0.70},
        "mgda": {"t0": 0.85, "t1": 0.80, "t2": 0.75},
        "stl": {"t0": 0.90, "t1": 0.60, "t2": 0.70},
    }
    # t0: ew and stl tie for 1st → 1.5 each, mgda 3. t1: ew and mgda tie → 1.5, stl 3.
    # t2: mgda 1, ew and stl tie for 2nd → 2.5 each.
    assert mean_rank(results) == pytest.approx(
        {"ew": (1.5 + 1.5 + 2.5) / 3, "mgda": (3 + 1.5 + 1) / 3, "stl": (1.5 + 3 + 2.5) / 3}
    )


def test_mean_rank_lower_is_better_and_per_task_directions() -> None:
    results = {"a": {"err": 0.1, "acc": 0.5}, "b": {"err": 0.2, "acc": 0.9}}
    assert mean_rank(results, higher_is_better=False) == {"a": 1.0, "b": 2.0}
    mixed = mean_rank(results, higher_is_better={"err": False, "acc": True})
    assert mixed == {"a": 1.5, "b": 1.5}


def test_mean_rank_ranks_sum_to_the_triangular_number() -> None:
    results = {f"m{i}": {"x": float(i % 3), "y": float(-i)} for i in range(6)}
    assert sum(mean_rank(results).values()) == pytest.approx(6 * 7 / 2)


@pytest.mark.parametrize(
    ("results", "match"),
    [
        ({}, "at least one method"),
        ({"a": {}}, "reports no task"),
        ({"a": {"x": 1.0}, "b": {"y": 1.0}}, "same tasks"),
        ({"a": {"x": 1.0}, "b": {"x": math.nan}}, "'b' on task 'x' must be finite"),
    ],
)
def test_mean_rank_errors(results: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mean_rank(results)


# --- PerTaskAccuracy --------------------------------------------------------------------------


def _one_hot_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, num_classes).float() * 3.0 - 1.0


def test_per_task_accuracy_two_batches_by_hand() -> None:
    metric = PerTaskAccuracy(num_tasks=3, num_classes=4)
    target_1 = torch.tensor([[0, 1, 2], [3, 3, 3], [1, 0, 2]])
    pred_1 = torch.tensor([[0, 1, 0], [3, 2, 3], [1, 0, 0]])  # correct: 3, 2, 1
    target_2 = torch.tensor([[2, 2, 2], [0, 1, 0]])
    pred_2 = torch.tensor([[2, 0, 2], [1, 1, 0]])  # correct: 1, 1, 2
    metric.update(_one_hot_logits(pred_1, 4), target_1)  # scores …
    metric.update(pred_2, target_2)  # … or labels
    torch.testing.assert_close(metric.compute(), torch.tensor([4 / 5, 3 / 5, 3 / 5]))
    metric.reset()
    metric.update(pred_2, target_2)
    torch.testing.assert_close(metric.compute(), torch.tensor([1 / 2, 1 / 2, 2 / 2]))


def test_per_task_accuracy_merges_by_summing_counts() -> None:
    # What DDP does: each process counts its batches; the states are summed, not averaged,
    # so unequal batch sizes still give the exact overall accuracy.
    target = torch.tensor([[0, 1], [1, 1], [0, 0], [1, 0], [1, 1]])
    pred = torch.tensor([[0, 1], [0, 1], [0, 1], [1, 1], [1, 0]])
    whole = PerTaskAccuracy(2, 2)
    whole.update(pred, target)
    first, second = PerTaskAccuracy(2, 2), PerTaskAccuracy(2, 2)
    first.update(pred[:1], target[:1])
    second.update(pred[1:], target[1:])
    first.merge_state(second)
    torch.testing.assert_close(first.compute(), whole.compute())
    torch.testing.assert_close(whole.compute(), torch.tensor([4 / 5, 2 / 5]))


@pytest.mark.parametrize(
    ("preds", "target", "match"),
    [
        (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long), "target"),
        (torch.zeros(4, 2, 5), torch.zeros(4, 2, dtype=torch.long), r"\[B, 2, 4\]"),
        (torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.long), "integer"),
        (torch.zeros(3, 2, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long), "disagree"),
    ],
)
def test_per_task_accuracy_shape_errors(
    preds: torch.Tensor, target: torch.Tensor, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        PerTaskAccuracy(num_tasks=2, num_classes=4).update(preds, target)


@pytest.mark.parametrize(("num_tasks", "num_classes"), [(0, 3), (2, 1), (True, 3)])
def test_per_task_accuracy_argument_errors(num_tasks: int, num_classes: int) -> None:
    with pytest.raises(ValueError, match="num_"):
        PerTaskAccuracy(num_tasks, num_classes)
