"""GradVac: the rule by hand, algorithm 1 with explicit loops over several steps, the moving-average
targets as state, properties, one Lightning step and its checkpoint."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from helpers import TinyModule, one_full_batch_step, trunk_reference
from strategy_properties import (
    assert_relative,
    check_finite,
    check_same_step_same_update,
    check_scale_equivariance,
    jacobian,
    order_at,
)
from torch import Tensor

from lightning_mtl.mixin import CHECKPOINT_KEY
from lightning_mtl.strategies import GradientSurgery, JacobianBatch, TrainingProgress
from lightning_mtl.strategies.gradvac import GradVac
from lightning_mtl.strategies.pcgrad import PCGrad


def cosine(a: Tensor, b: Tensor) -> float:
    norms = float(a.norm() * b.norm())
    return float(torch.dot(a, b)) / norms if norms > 0 else 0.0


def reference_gradvac(
    rows: Tensor, targets: Tensor, beta: float, order: Tensor
) -> tuple[Tensor, Tensor]:
    """Algorithm 1 of the paper in float64 on one step: the changed gradients, the new targets."""
    rows, targets = rows.double(), targets.double().clone()
    changed = []
    for i in range(len(rows)):
        g_i = rows[i].clone()
        for j in order[i].tolist():
            g_j = rows[j]
            phi, target = cosine(g_i, g_j), float(targets[i, j])
            if phi < target:
                a = (
                    float(g_i.norm())
                    * (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2))
                    / (float(g_j.norm()) * math.sqrt(1 - target**2))
                )
                g_i = g_i + a * g_j
            targets[i, j] = (1 - beta) * target + beta * phi
        changed.append(g_i)
    return torch.stack(changed), targets


def batch_of(rows: Tensor, step: int = 0, names: tuple[str, ...] | None = None) -> JacobianBatch:
    names = names or tuple(str(i) for i in range(len(rows)))
    return JacobianBatch(
        names=names,
        losses=torch.ones(len(rows)),
        jacobian=rows,
        progress=TrainingProgress(step=step),
    )


def with_targets(targets: Tensor, names: list[str], **kwargs: float) -> GradVac:
    strategy = GradVac(**kwargs)  # type: ignore[arg-type]
    strategy.load_state_dict({"names": names, "targets": targets.double()})
    return strategy


def test_orthogonal_pair_is_turned_to_the_target_cosine_by_hand() -> None:
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([[0.0, 0.5], [0.5, 0.0]])
    strategy = with_targets(targets, ["a", "b"])
    # φ = 0 < ½: a = 1 · (½ · 1 − 0) / (1 · √¾) = 1/√3, so g1' = (1, 1/√3), at 60° to g2.
    third = 1 / math.sqrt(3)
    coefficients = strategy.coefficients(batch_of(rows, names=("a", "b")))
    torch.testing.assert_close(coefficients, torch.tensor([[1.0, third], [third, 1.0]]).double())
    changed = coefficients @ rows.double()
    assert cosine(changed[0], rows[1].double()) == pytest.approx(0.5)
    # The targets move towards the observed cosine 0: 0.99 · ½.
    torch.testing.assert_close(strategy.targets, (0.99 * targets).double())
    again = with_targets(targets, ["a", "b"]).aggregate(rows, names=["a", "b"])
    torch.testing.assert_close(again, torch.tensor([1 + third, 1 + third]))


def test_gradient_above_its_target_is_left_alone() -> None:
    rows = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # cos 45° ≈ 0.707
    strategy = with_targets(torch.tensor([[0.0, 0.7], [0.7, 0.0]]), ["0", "1"], beta=0.5)
    torch.testing.assert_close(strategy.aggregate(rows), rows.sum(0))
    expected = 0.5 * 0.7 + 0.5 / math.sqrt(2)
    torch.testing.assert_close(strategy.targets[0, 1], torch.tensor(expected).double())


def test_first_step_is_pcgrad_and_beta_zero_stays_pcgrad() -> None:
    rows = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    for step in range(4):
        progress = TrainingProgress(step=step)
        expected = PCGrad(seed=2).aggregate(rows, progress=progress)
        torch.testing.assert_close(GradVac(seed=2).aggregate(rows, progress=progress), expected)
    frozen = GradVac(beta=0.0, seed=1)
    for step in range(3):
        rows = jacobian(5, 80, seed=step)
        progress = TrainingProgress(step=step)
        expected = PCGrad(seed=1).aggregate(rows, progress=progress)
        assert_relative(frozen.aggregate(rows, progress=progress), expected)
    assert torch.equal(frozen.targets, torch.zeros(5, 5).double())


@pytest.mark.parametrize("count", [2, 3, 5, 10, 40])
@pytest.mark.parametrize(
    "kind", ["random", "ill_conditioned", "collinear", "anti_collinear", "with_zero_row"]
)
def test_matches_algorithm_1_over_several_steps(count: int, kind: str) -> None:
    beta, seed = 0.3, 3
    strategy = GradVac(beta=beta, seed=seed)
    targets = torch.zeros(count, count, dtype=torch.float64)
    for step in range(3):
        rows = jacobian(count, 80, seed=10 * count + step, kind=kind)
        changed, targets = reference_gradvac(rows, targets, beta, order_at(seed, step, count))
        direction = strategy.aggregate(rows, progress=TrainingProgress(step=step))
        assert_relative(direction, changed.sum(0))
        torch.testing.assert_close(strategy.targets, targets, rtol=0, atol=1e-9)


@pytest.mark.parametrize("count", [2, 5, 40])
@pytest.mark.parametrize("start", [1 - 2e-6, 0.5, -0.5])
def test_matches_algorithm_1_from_given_targets_on_nearly_parallel_rows(
    count: int, start: float
) -> None:
    # Nearly parallel rows (angles ~1e-3 rad) against targets of ~2e-3 rad: small angles taken
    # from cosines, where a float32 computation would lose the digits.
    rows = jacobian(count, 80, seed=count, kind="collinear")
    targets = torch.full((count, count), start, dtype=torch.float64).fill_diagonal_(0.0)
    strategy = with_targets(targets, [str(i) for i in range(count)], beta=0.1, seed=1)
    changed, targets = reference_gradvac(rows, targets, 0.1, order_at(1, 0, count))
    if start > 0.9 and count > 2:
        assert (changed - rows.double()).norm() > 1e-3 * rows.norm()  # the rule acted
    assert_relative(strategy.aggregate(rows), changed.sum(0))
    torch.testing.assert_close(strategy.targets, targets, rtol=0, atol=1e-9)


def test_weights_give_the_direction_and_each_call_is_one_step() -> None:
    rows = jacobian(4, 80, seed=5)
    one, two = GradVac(beta=0.5), GradVac(beta=0.5)
    weights = one.weights(batch_of(rows))
    torch.testing.assert_close(weights @ rows, two.direction(batch_of(rows)))
    torch.testing.assert_close(one.targets, two.targets)


def test_state_dict_round_trip_continues_the_run_exactly() -> None:
    names = ("a", "b", "c", "d")
    straight = GradVac(beta=0.2, seed=8)
    interrupted = GradVac(beta=0.2, seed=8)
    for step in range(3):
        rows = jacobian(4, 80, seed=step)
        straight.aggregate(rows, names=names, progress=TrainingProgress(step=step))
        interrupted.aggregate(rows, names=names, progress=TrainingProgress(step=step))
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["names"] == list(names) and state["targets"].shape == (4, 4)
    resumed = GradVac(beta=0.2, seed=8)
    resumed.load_state_dict(state)
    for step in range(3, 6):
        rows = jacobian(4, 80, seed=step, kind="ill_conditioned")
        progress = TrainingProgress(step=step)
        expected = straight.aggregate(rows, names=names, progress=progress)
        assert torch.equal(resumed.aggregate(rows, names=names, progress=progress), expected)
    assert torch.equal(resumed.targets, straight.targets)
    with pytest.raises(ValueError, match="targets belong to the objectives"):
        resumed.aggregate(jacobian(4, 80, seed=0), names=["a", "b", "c", "e"])
    assert GradVac().state_dict() == {"names": None, "targets": None}


def test_same_step_same_update_other_step_other_orders() -> None:
    targets, names = torch.full((8, 8), 0.3), [str(i) for i in range(8)]
    check_same_step_same_update(
        lambda: with_targets(targets, names, seed=9), jacobian(8, 80, seed=6)
    )


@pytest.mark.parametrize("kind", ["random", "ill_conditioned", "anti_collinear"])
def test_scale_equivariance(kind: str) -> None:
    check_scale_equivariance(GradVac, jacobian(6, 80, seed=3, kind=kind))
    targets = torch.rand(6, 6, generator=torch.Generator().manual_seed(0)) - 0.3
    rows = jacobian(6, 80, seed=4, kind=kind)
    scaled = with_targets(targets, list("012345")).aggregate(rows * 7.0)
    plain = with_targets(targets, list("012345")).aggregate(rows)
    torch.testing.assert_close(scaled, plain * 7.0, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["with_zero_row", "duplicated", "collinear", "anti_collinear"])
@pytest.mark.parametrize("target", [0.0, 0.9, 1.0])
def test_finite_on_zero_duplicated_and_collinear_rows(kind: str, target: float) -> None:
    check_finite(GradVac, jacobian(5, 80, seed=4, kind=kind))
    targets = torch.full((5, 5), target)
    direction = with_targets(targets, list("01234")).aggregate(jacobian(5, 80, seed=4, kind=kind))
    assert torch.isfinite(direction).all()
    assert torch.equal(GradVac().aggregate(torch.zeros(3, 4)), torch.zeros(4))


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_gradients_stay_non_finite_and_leave_the_targets(bad: float) -> None:
    strategy = GradVac(beta=0.5)
    strategy.aggregate(jacobian(3, 80, seed=0))
    before = strategy.targets
    rows = jacobian(3, 8, seed=1)
    rows[1, 3] = bad
    assert not torch.isfinite(strategy.aggregate(rows, progress=TrainingProgress(1))).all()
    assert torch.equal(strategy.targets, before)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]"):
        GradVac(beta=1.5)
    with pytest.raises(ValueError, match="seed must be an integer"):
        GradVac(seed="0")  # type: ignore[arg-type]
    assert isinstance(GradVac(), GradientSurgery)  # the engine hands it the Jacobian
    assert repr(GradVac()) == "GradVac(beta=0.01, seed=0)"


def test_one_step_through_lightning_and_the_checkpoint(tmp_path: Path) -> None:
    targets = torch.tensor([[0.0, 0.8], [0.6, 0.0]])
    module = TinyModule(with_targets(targets, ["cls", "rep"], beta=0.25, seed=6))
    initial, change = one_full_batch_step(module)
    _, rows, head_gradient = trunk_reference(initial)
    changed, expected_targets = reference_gradvac(rows, targets, 0.25, order_at(6, 0, 2))
    expected_trunk = changed.sum(0).float()
    torch.testing.assert_close(change[: len(expected_trunk)], expected_trunk)
    torch.testing.assert_close(change[len(expected_trunk) :], head_gradient)
    assert (expected_trunk - rows.sum(0)).norm() > 0.1 * rows.sum(0).norm()
    strategy = module.balancing_strategy
    torch.testing.assert_close(strategy.targets, expected_targets, rtol=0, atol=1e-9)
    path = tmp_path / "gradvac.ckpt"
    module.trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)[CHECKPOINT_KEY]["strategy"]
    assert saved["names"] == ["cls", "rep"]
    assert torch.equal(saved["targets"], strategy.targets)
