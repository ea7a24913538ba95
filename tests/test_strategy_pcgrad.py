"""PCGrad: projections by hand, algorithm 1 with explicit loops, properties, one Lightning step."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DATA, TinyModule, grads_of, one_full_batch_step
from strategy_properties import (
    assert_relative,
    check_descent,
    check_finite,
    check_same_step_same_update,
    check_scale_equivariance,
    jacobian,
    order_at,
)
from torch import Tensor

from lightning_mtl.strategies import GradientSurgery, JacobianBatch, TrainingProgress
from lightning_mtl.strategies.pcgrad import PCGrad


def reference_projections(rows: Tensor, order: Tensor) -> Tensor:
    """Algorithm 1 of the paper in float64: for each task, the other tasks in the given order."""
    rows = rows.double()
    projected = []
    for i in range(len(rows)):
        g_pc = rows[i].clone()
        for j in order[i].tolist():
            inner = torch.dot(g_pc, rows[j])
            if inner < 0:
                g_pc = g_pc - inner / torch.dot(rows[j], rows[j]) * rows[j]
        projected.append(g_pc)
    return torch.stack(projected)


def test_two_conflicting_gradients_by_hand() -> None:
    rows = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    # g1·g2 = −1: g1 − (−1/2) g2 = (½, ½); g2 − (−1/1) g1 = (0, 1).
    torch.testing.assert_close(PCGrad().aggregate(rows), torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(PCGrad("mean").aggregate(rows), torch.tensor([0.25, 0.75]))
    batch = JacobianBatch(names=("a", "b"), losses=torch.ones(2), jacobian=rows)
    projected = PCGrad().coefficients(batch) @ rows.double()
    torch.testing.assert_close(projected, torch.tensor([[0.5, 0.5], [0.0, 1.0]]).double())
    assert projected[0] @ rows[1].double() == 0 and projected[1] @ rows[0].double() == 0


def test_three_gradients_by_hand_in_both_orders() -> None:
    rows = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    # g1 conflicts with g2 and g3 (inner −1 each). Meeting g2 first: (½, ½, 0), whose inner
    # product with g3 is −½, then + ¼ g3 = (¼, ½, ¼); meeting g3 first: (¼, ¼, ½). g2 and g3 meet
    # g1 (inner −1) and become e2 and e3 in either order (g2·g3 = 1 ≥ 0).
    by_first_other = {1: [0.25, 1.5, 1.25], 2: [0.25, 1.25, 1.5]}
    seen = set()
    for step in range(20):
        first = int(order_at(7, step, 3)[0, 0])
        seen.add(first)
        direction = PCGrad(seed=7).aggregate(rows, progress=TrainingProgress(step=step))
        torch.testing.assert_close(direction, torch.tensor(by_first_other[first]))
    assert seen == {1, 2}


@pytest.mark.parametrize("count", [2, 3, 5, 10, 40])
@pytest.mark.parametrize(
    "kind",
    ["random", "ill_conditioned", "collinear", "anti_collinear", "duplicated", "with_zero_row"],
)
def test_matches_algorithm_1_with_the_same_random_orders(count: int, kind: str) -> None:
    seed = count * 31 + len(kind)
    rows = jacobian(count, 96, seed=seed, kind=kind)
    step = 11 + count
    projected = reference_projections(rows, order_at(5, step, count))
    progress = TrainingProgress(step=step)
    assert_relative(PCGrad(seed=5).aggregate(rows, progress=progress), projected.sum(0))
    assert_relative(PCGrad("mean", seed=5).aggregate(rows, progress=progress), projected.mean(0))
    batch = JacobianBatch(
        names=tuple(map(str, range(count))),
        losses=torch.ones(count),
        jacobian=rows,
        progress=progress,
    )
    assert_relative(PCGrad(seed=5).coefficients(batch) @ rows.double(), projected)


def test_weights_give_the_direction() -> None:
    rows = jacobian(6, 96, seed=2)
    batch = JacobianBatch(
        names=tuple("abcdef"), losses=torch.ones(6), jacobian=rows, progress=TrainingProgress(3)
    )
    strategy = PCGrad(seed=1)
    torch.testing.assert_close(strategy.weights(batch) @ rows, strategy.direction(batch))


@pytest.mark.parametrize("seed", range(5))
def test_two_conflicting_gradients_end_orthogonal_to_each_other(seed: int) -> None:
    rows = jacobian(2, 16, seed=seed)
    rows[1] -= 2 * torch.clamp(rows[0] @ rows[1], min=0) / (rows[0] @ rows[0]) * rows[0]
    assert rows[0] @ rows[1] < 0
    batch = JacobianBatch(names=("a", "b"), losses=torch.ones(2), jacobian=rows)
    projected = (PCGrad().coefficients(batch) @ rows.double()).float()
    scale = float(rows.norm(dim=1).prod())
    assert abs(float(projected[0] @ rows[1])) < 1e-6 * scale
    assert abs(float(projected[1] @ rows[0])) < 1e-6 * scale
    check_descent(PCGrad, rows)


@pytest.mark.parametrize("count", [2, 4, 12])
def test_gradients_without_conflict_are_summed_unchanged(count: int) -> None:
    rows = jacobian(count, 96, seed=count).abs()  # non-negative entries: no inner product < 0
    step = TrainingProgress(step=count)
    torch.testing.assert_close(PCGrad().aggregate(rows, progress=step), rows.sum(0))
    torch.testing.assert_close(PCGrad("mean").aggregate(rows, progress=step), rows.mean(0))


@pytest.mark.parametrize("kind", ["random", "ill_conditioned", "anti_collinear"])
def test_scale_equivariance(kind: str) -> None:
    check_scale_equivariance(PCGrad, jacobian(7, 96, seed=3, kind=kind))


@pytest.mark.parametrize("kind", ["with_zero_row", "duplicated", "collinear", "anti_collinear"])
@pytest.mark.parametrize("count", [2, 6])
def test_finite_on_zero_duplicated_and_collinear_rows(kind: str, count: int) -> None:
    check_finite(PCGrad, jacobian(count, 96, seed=4, kind=kind))


def test_one_objective_keeps_its_gradient() -> None:
    row = jacobian(1, 96, seed=8)
    torch.testing.assert_close(PCGrad().aggregate(row), row[0])


def test_zero_gradients_give_zero() -> None:
    assert torch.equal(PCGrad().aggregate(torch.zeros(3, 5)), torch.zeros(5))
    rows = torch.tensor([[0.0, 0.0], [1.0, -2.0], [-1.0, 0.5]])
    assert torch.isfinite(PCGrad().aggregate(rows)).all()


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_gradients_stay_non_finite(bad: float) -> None:
    rows = jacobian(4, 8, seed=1)
    rows[2, 5] = bad
    for strategy in (PCGrad(), PCGrad("mean")):
        assert not torch.isfinite(strategy.aggregate(rows)).all()
        batch = JacobianBatch(names=tuple("abcd"), losses=torch.ones(4), jacobian=rows)
        assert not torch.isfinite(strategy.weights(batch)).all()


def test_orders_are_random_permutations_of_the_others_and_reproducible() -> None:
    order = order_at(0, 0, 6)
    for i, row in enumerate(order.tolist()):
        assert sorted(row) == [j for j in range(6) if j != i]
    assert torch.equal(order_at(0, 0, 6), order)
    assert not torch.equal(order_at(0, 1, 6), order)
    assert not torch.equal(order_at(1, 0, 6), order)
    counts = torch.zeros(4, 3)  # how often each other objective comes first, per objective
    for step in range(300):
        first = order_at(2, step, 4)[:, 0]
        counts[torch.arange(4), first - (first > torch.arange(4)).long()] += 1
    assert counts.sum(1).eq(300).all() and counts.min() > 60, counts  # 100 expected each


def test_same_step_same_update_other_step_other_orders() -> None:
    check_same_step_same_update(lambda: PCGrad(seed=9), jacobian(8, 96, seed=6))


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="reduction must be 'sum' or 'mean'"):
        PCGrad("max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be an integer"):
        PCGrad(seed=1.5)  # type: ignore[arg-type]
    assert isinstance(PCGrad(), GradientSurgery)  # the engine hands it the Jacobian
    assert repr(PCGrad("mean", seed=3)) == "PCGrad(reduction='mean', seed=3)"


class ThreeObjectives(TinyModule):
    """TinyModule with a third objective, ``mix``, whose gradient conflicts with ``rep``'s (the
    gradients of ``cls`` and ``rep`` alone do not conflict on this data)."""

    def compute_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        losses = self.net.losses(*batch)
        return {**losses, "mix": 0.3 * losses["cls"] - losses["rep"]}


def test_one_step_through_lightning_writes_the_projected_sum() -> None:
    module = ThreeObjectives(PCGrad(seed=4))
    initial, change = one_full_batch_step(module)
    losses = initial.losses(*DATA.tensors)
    losses["mix"] = 0.3 * losses["cls"] - losses["rep"]
    params = list(initial.parameters())  # every parameter is shared by two objectives
    rows = torch.stack([grads_of(losses[name], params) for name in ("cls", "rep", "mix")])
    assert rows[1] @ rows[2] < 0
    projected = reference_projections(rows, order_at(4, 0, 3))
    torch.testing.assert_close(change, projected.sum(0).float())
    assert (change - rows.sum(0)).norm() > 0.1 * rows.sum(0).norm()


@pytest.mark.parametrize("columns", [1, 4_099, 70_001])
def test_the_float64_passes_over_many_blocks_are_the_whole_matrix_in_float64(columns: int) -> None:
    # On the CPU the surgery's two passes widen 2^16 entries at a time into one reused buffer:
    # 70,001 columns of 5 rows make six blocks, the last one partial. The reference widens the
    # whole matrix at once. The first two rows nearly cancel.
    from lightning_mtl.strategies._gradient_surgery import combine, float64_gramian

    generator = torch.Generator().manual_seed(columns)
    base = torch.randn(1, columns, generator=generator)
    jacobian = torch.cat([base, base * (1 + 2**-20), torch.randn(3, columns, generator=generator)])
    wide = jacobian.double()
    torch.testing.assert_close(float64_gramian(jacobian), wide @ wide.T, rtol=1e-13, atol=0.0)
    weights = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    expected = (weights @ wide).float()  # the difference of the two rows, exact in float64
    torch.testing.assert_close(combine(weights, jacobian), expected, rtol=0.0, atol=0.0)
