"""Tests for the GCD clustering accuracy (All / Old / New)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lightning_mtl.tasks.gcd.metrics import ClusterAccuracy, cluster_accuracy


def test_permuted_clusters_are_fully_correct() -> None:
    targets = [0, 0, 1, 1, 1, 2, 3, 3]
    predictions = [2, 2, 3, 3, 3, 0, 1, 1]  # a relabelling of the classes
    assert np.mean(np.array(predictions) == np.array(targets)) == 0.0
    assert cluster_accuracy(predictions, targets, old_classes=2) == {
        "all": 1.0,
        "old": 1.0,
        "new": 1.0,
    }


def test_old_new_split_by_hand() -> None:
    # Classes 0, 1 old (5 + 3 samples); classes 2, 3 new (4 + 2 samples).
    targets = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3]
    predictions = [4, 4, 4, 1, 0, 1, 1, 4, 2, 2, 2, 0, 0, 3]
    # Counts [cluster, class]: class 0 → {4: 3, 1: 1, 0: 1}, class 1 → {1: 2, 4: 1},
    # class 2 → {2: 3, 0: 1}, class 3 → {0: 1, 3: 1}. The best one-to-one matching is
    # 0→4 (3), 1→1 (2), 2→2 (3) and class 3 → cluster 0 or 3 (1): 9 correct of 14.
    result = cluster_accuracy(predictions, targets, old_classes=2)
    assert result["all"] == pytest.approx(9 / 14)
    assert result["old"] == pytest.approx((3 + 2) / 8)
    assert result["new"] == pytest.approx((3 + 1) / 6)
    # The same split given as explicit ids, and as tensors.
    assert cluster_accuracy(torch.tensor(predictions), torch.tensor(targets), [1, 0]) == result


def test_one_matching_over_all_classes() -> None:
    # Old class 0 and new class 1 both mostly land in cluster 0. Only one class can have it:
    # the matching over all classes gives it to class 0 (3 samples > 2), so the new class is
    # wrong, whereas separate matchings per group would have counted both as right.
    targets = [0, 0, 0, 1, 1, 1]
    predictions = [0, 0, 0, 0, 0, 1]
    result = cluster_accuracy(predictions, targets, old_classes=1)
    assert result == {"all": 4 / 6, "old": 1.0, "new": 1 / 3}


def test_more_clusters_than_classes_and_empty_groups() -> None:
    targets = [0, 0, 1, 1]
    predictions = [7, 7, 3, 5]
    result = cluster_accuracy(predictions, targets, old_classes=[0, 1])
    assert result["all"] == pytest.approx(3 / 4)
    assert result["old"] == pytest.approx(3 / 4)
    assert math.isnan(result["new"])  # no sample of a new class
    assert math.isnan(cluster_accuracy(predictions, targets, old_classes=0)["old"])
    # Old classes that do not occur in the targets do not matter.
    assert cluster_accuracy(predictions, targets, old_classes=[0, 1, 9]) == result


def brute_force(
    predictions: np.ndarray, targets: np.ndarray, old: set[int]
) -> tuple[float, set[tuple[float, float]]]:
    """Best accuracy over all one-to-one class → cluster maps, and the (old, new) of the best."""
    size = int(max(predictions.max(), targets.max())) + 1
    is_old = np.isin(targets, list(old))
    best, splits = -1.0, set()
    for perm in itertools.permutations(range(size)):
        correct = predictions == np.array(perm)[targets]
        score = float(correct.mean())
        split = (
            float(correct[is_old].mean()) if is_old.any() else math.nan,
            float(correct[~is_old].mean()) if (~is_old).any() else math.nan,
        )
        if score > best + 1e-12:
            best, splits = score, {split}
        elif abs(score - best) <= 1e-12:
            splits.add(split)
    return best, splits


def test_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(150):
        num_classes = int(rng.integers(1, 6))
        num_clusters = int(rng.integers(1, 6))
        size = int(rng.integers(1, 16))
        targets = rng.integers(0, num_classes, size)
        predictions = rng.integers(0, num_clusters, size)
        old = set(range(int(rng.integers(0, num_classes + 1))))
        result = cluster_accuracy(predictions, targets, sorted(old))
        best, splits = brute_force(predictions, targets, old)
        assert result["all"] == pytest.approx(best)
        # With ties several matchings are optimal; Old / New must come from one of them.
        assert any(
            all(
                (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)
                for a, b in zip((result["old"], result["new"]), split, strict=True)
            )
            for split in splits
        )


def test_validation() -> None:
    with pytest.raises(ValueError, match="same length"):
        cluster_accuracy([0, 1], [0], 1)
    with pytest.raises(ValueError, match="empty"):
        cluster_accuracy([], [], 1)
    with pytest.raises(ValueError, match="1-D"):
        cluster_accuracy([[0, 1]], [[0, 1]], 1)
    with pytest.raises(ValueError, match="integer"):
        cluster_accuracy([0.0, 1.0], [0, 1], 1)
    with pytest.raises(ValueError, match="non-negative"):
        cluster_accuracy([0, -1], [0, 1], 1)
    with pytest.raises(ValueError, match="≥ 0"):
        cluster_accuracy([0, 1], [0, 1], -1)
    with pytest.raises(ValueError, match="old_classes"):
        cluster_accuracy([0, 1], [0, 1], [0.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="non-negative"):
        cluster_accuracy([0, 1], [0, 1], [-2])


# -------------------------------------------------------------------------------- metric


def test_metric_two_updates_equal_function_on_concatenation() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 6, generator=generator)
    predicted = torch.randint(0, 6, (15,), generator=generator)
    targets = torch.randint(0, 5, (35,), generator=generator)
    metric = ClusterAccuracy(old_classes=3)
    metric.update(logits, targets[:20])  # logits: reduced by argmax
    metric.update(predicted, targets[20:])
    result = metric.compute()
    expected = cluster_accuracy(torch.cat([logits.argmax(dim=1), predicted]), targets, 3)
    assert set(result) == {"all", "old", "new"}
    for name, value in expected.items():
        assert result[name].dtype == torch.float32
        assert result[name].item() == pytest.approx(value, rel=1e-6)

    metric.reset()
    metric.update(torch.tensor([1, 1, 0]), torch.tensor([0, 0, 1]))
    assert metric.compute()["all"].item() == 1.0


def test_metric_merged_states_equal_single_metric() -> None:
    # What DDP synchronisation does: concatenate the per-process states.
    preds = torch.tensor([2, 2, 0, 1, 1, 0, 2, 1])
    target = torch.tensor([0, 0, 1, 2, 2, 1, 0, 0])
    first, second, single = (
        ClusterAccuracy([0, 1]),
        ClusterAccuracy([0, 1]),
        ClusterAccuracy([0, 1]),
    )
    first.update(preds[:3], target[:3])
    second.update(preds[3:], target[3:])
    single.update(preds, target)
    first.merge_state(second)
    merged, expected = first.compute(), single.compute()
    for name in expected:
        torch.testing.assert_close(merged[name], expected[name])


def test_metric_validation() -> None:
    metric = ClusterAccuracy(old_classes=2)
    with pytest.raises(ValueError, match="shapes"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="integers"):
        metric.update(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="old_classes"):
        ClusterAccuracy(old_classes=True)  # type: ignore[arg-type]
    assert ClusterAccuracy(old_classes=[3, 1]).old_classes == (3, 1)
