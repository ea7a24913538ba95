"""Tests for the Many / Medium / Few long-tailed accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_mtl.tasks.long_tail.metrics import LongTailAccuracy, shot_groups

# Training counts: many = {0, 1} (> 100), medium = {2, 3} (20–100), few = {4, 5} (< 20).
COUNTS = [500, 101, 100, 20, 19, 3]


def test_shot_groups_thresholds() -> None:
    assert shot_groups(COUNTS) == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
    assert shot_groups(COUNTS, many_threshold=19, few_threshold=4) == {
        "many": [0, 1, 2, 3],
        "medium": [4],
        "few": [5],
    }
    assert shot_groups(torch.tensor([50, 50])) == {"many": [], "medium": [0, 1], "few": []}
    with pytest.raises(ValueError, match="few_threshold"):
        shot_groups(COUNTS, many_threshold=10, few_threshold=20)


def test_groups_by_hand() -> None:
    metric = LongTailAccuracy(COUNTS)
    # Per class (correct / total): 0: 2/2, 1: 1/2, 2: 0/1, 3: 1/1, 4: 1/3, 5: 0/1.
    target = torch.tensor([0, 0, 1, 1, 2, 3, 4, 4, 4, 5])
    preds = torch.tensor([0, 0, 1, 0, 3, 3, 4, 0, 1, 4])
    metric.update(preds[:4], target[:4])  # two batches: the counts accumulate
    metric.update(preds[4:], target[4:])
    result = metric.compute()
    assert set(result) == {"overall", "many", "medium", "few", "per_class"}
    assert result["overall"].item() == pytest.approx(5 / 10)
    assert result["many"].item() == pytest.approx((1.0 + 0.5) / 2)
    assert result["medium"].item() == pytest.approx((0.0 + 1.0) / 2)
    assert result["few"].item() == pytest.approx((1 / 3 + 0.0) / 2)
    expected = torch.tensor([1.0, 0.5, 0.0, 1.0, 1 / 3, 0.0])
    assert torch.allclose(result["per_class"], expected)
    assert all(value.dtype == torch.float32 for value in result.values())


def test_scores_are_argmaxed() -> None:
    metric = LongTailAccuracy([200, 10])
    scores = torch.tensor([[2.0, 1.0], [0.1, 0.9], [3.0, -1.0]])
    metric.update(scores, torch.tensor([0, 1, 1]))
    result = metric.compute()
    assert result["overall"].item() == pytest.approx(2 / 3)
    assert result["many"].item() == 1.0 and result["few"].item() == 0.5


def test_empty_groups_and_unseen_classes_are_nan() -> None:
    metric = LongTailAccuracy([500, 300, 50])  # no few-shot class
    metric.update(torch.tensor([0, 0]), torch.tensor([0, 2]))  # class 1 never evaluated
    result = metric.compute()
    assert math.isnan(result["few"].item())  # empty group → NaN, key kept
    assert result["many"].item() == 1.0  # class 1 left out of the group mean, not counted as 0
    assert result["medium"].item() == 0.0
    assert math.isnan(result["per_class"][1].item())
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(metric.compute()["overall"].item())  # 0 / 0 after a reset


def test_states_sum_like_ddp() -> None:
    """Sum-reduced states: two "processes" merged equal one that saw every sample."""
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 6, (200,), generator=generator)
    preds = torch.where(torch.rand(200, generator=generator) < 0.6, target, (target + 1) % 6)
    whole, left, right = (LongTailAccuracy(COUNTS) for _ in range(3))
    whole.update(preds, target)
    left.update(preds[:77], target[:77])
    right.update(preds[77:], target[77:])
    left.merge_state(right)
    merged, single = left.compute(), whole.compute()
    for key in single:
        assert torch.allclose(merged[key], single[key], equal_nan=True), key
    assert all(left._reductions[name] is not None for name in ("correct", "total"))


def test_update_validation() -> None:
    metric = LongTailAccuracy(COUNTS)
    with pytest.raises(ValueError, match="target"):
        metric.update(torch.tensor([0]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="score"):
        metric.update(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="disagree"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="preds"):
        metric.update(torch.tensor([0.5]), torch.tensor([0]))
