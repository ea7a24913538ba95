"""Objective validation and groups."""

from __future__ import annotations

import pytest
import torch

from lightning_mtl.objectives import (
    Objectives,
    check_groups,
    check_losses,
    combine,
    per_class_objectives,
)


def _loss(value: float) -> torch.Tensor:
    return torch.tensor(value, requires_grad=True) * 1.0


def test_combine_groups_weighted_sums() -> None:
    losses = {"ce": _loss(2.0), "supcon": _loss(1.0), "swav": _loss(3.0), "con": _loss(0.5)}
    lam = 0.3
    groups = {"s": {"ce": 0.35}, "u": {"supcon": lam, "swav": lam, "con": 1 - lam}}
    names, values = combine(losses, groups)
    assert names == ("s", "u")
    torch.testing.assert_close(torch.stack(values), torch.tensor([0.7, lam * 4.0 + 0.7 * 0.5]))
    grads = torch.autograd.grad(
        values[1], [losses[name] for name in ("ce", "supcon", "swav", "con")], allow_unused=True
    )
    assert grads[0] is None
    torch.testing.assert_close(torch.stack(grads[1:]), torch.tensor([lam, lam, 1 - lam]))
    names, values = combine(losses, None)
    assert names == ("ce", "supcon", "swav", "con") and len(values) == 4


def test_combine_rejects_unknown_and_ungrouped_names() -> None:
    losses = {"a": _loss(1.0), "b": _loss(2.0)}
    with pytest.raises(ValueError, match=r"unknown objectives \['c'\]"):
        combine(losses, {"g": {"a": 1.0, "c": 1.0}})
    with pytest.raises(ValueError, match=r"\['b'\] belong to no group"):
        combine(losses, {"g": {"a": 1.0}})


def test_check_groups() -> None:
    with pytest.raises(ValueError, match="groups is empty"):
        check_groups({})
    with pytest.raises(ValueError, match="has no losses"):
        check_groups({"g": {}})
    with pytest.raises(ValueError, match="must be finite"):
        check_groups({"g": {"a": float("inf")}})


def test_check_losses_messages() -> None:
    with pytest.raises(TypeError, match="mapping of objective name"):
        check_losses([_loss(1.0)])
    with pytest.raises(ValueError, match="no objectives"):
        check_losses({})
    with pytest.raises(ValueError, match=r"'a' must be a scalar; got shape \(2,\)"):
        check_losses({"a": torch.ones(2, requires_grad=True)})
    with pytest.raises(TypeError, match="'a' must be a tensor"):
        check_losses({"a": 1.0})
    with pytest.raises(ValueError, match="does not require grad"):
        check_losses({"a": torch.tensor(1.0)})
    features = torch.ones(2, requires_grad=True)
    wrapped = Objectives({"a": features.sum()}, representation=features)
    assert list(check_losses(wrapped)) == ["a"]


def test_per_class_objectives_sum_to_the_mean_and_split_the_gradient() -> None:
    weights = torch.tensor([0.5, -1.0], requires_grad=True)
    inputs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [1.0, 1.0], [0.0, 3.0]])
    targets = torch.tensor([1, 0, 1, 3, 1])
    per_sample = (inputs @ weights) ** 2
    objectives = per_class_objectives(per_sample, targets, num_classes=4)
    assert list(objectives) == ["class_0", "class_1", "class_2", "class_3"]
    # By hand: per-sample losses 0.25, 1, 0, 0.25, 9; B = 5.
    expected = torch.tensor([1.0, 9.25, 0.0, 0.25]) / 5
    torch.testing.assert_close(torch.stack(list(objectives.values())), expected)
    torch.testing.assert_close(sum(objectives.values()), per_sample.mean())
    absent = torch.autograd.grad(objectives["class_2"], weights, retain_graph=True)[0]
    assert torch.equal(absent, torch.zeros(2))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        per_class_objectives(per_sample, targets[:3], 4)
    with pytest.raises(ValueError, match="integer class labels"):
        per_class_objectives(per_sample, targets.float(), 4)
