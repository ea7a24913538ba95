"""Nash-MTL: the device solver against scipy, the bargaining equation, scaling, state, training."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import scipy.optimize
import torch
from helpers import TinyModule, one_full_batch_step, trunk_reference
from host_sync import ops_per_iteration
from strategy_properties import (
    KINDS,
    check_descent,
    check_finite,
    check_permutation_equivariance,
    check_rejected,
    jacobian,
)
from torch import Tensor

from lightning_mtl.strategies import GramianBatch, GramianWeighting, TrainingProgress, _bargaining
from lightning_mtl.strategies._bargaining import solve_bargaining
from lightning_mtl.strategies.nash_mtl import NashMTL

SOLVABLE = ("random", "collinear", "ill_conditioned", "duplicated")


def reference_bargaining(gramian: Tensor, power: float = 1.0) -> np.ndarray:
    """``w > 0`` with ``w^p ∘ (G w) = 1``, by scipy in float64: BFGS on the convex potential in
    log-coordinates from several starts, each polished by ``scipy.optimize.root``; the start
    with the smallest residual wins."""
    g = gramian.double().numpy()
    count = len(g)

    def residual(y: np.ndarray) -> np.ndarray:
        return np.exp(power * y) * (g @ np.exp(y)) - 1.0

    def potential(y: np.ndarray) -> float:
        w = np.exp(y)
        utility = y if power == 1.0 else w ** (1.0 - power) / (1.0 - power)
        return 0.5 * w @ g @ w - utility.sum()

    def gradient(y: np.ndarray) -> np.ndarray:
        w = np.exp(y)
        return w * (g @ w) - w ** (1.0 - power)

    best, best_residual = None, math.inf
    rng = np.random.default_rng(0)
    for start in range(3):
        y0 = -np.log(np.diag(g)) / (1.0 + power) + (rng.normal(size=count) if start else 0.0)
        with np.errstate(over="ignore", invalid="ignore"):  # BFGS probes far-off points
            minimum = scipy.optimize.minimize(
                potential, y0, jac=gradient, method="BFGS", options={"gtol": 1e-12, "maxiter": 5000}
            )
            polished = scipy.optimize.root(
                residual, minimum.x, method="lm", options={"xtol": 1e-15}
            )
        value = np.abs(residual(polished.x)).max()
        if value < best_residual:
            best, best_residual = np.exp(polished.x), value
    assert best is not None and best_residual < 1e-9, f"reference failed: {best_residual}"
    return best


def _batch(rows: Tensor, step: int = 0) -> GramianBatch:
    return GramianBatch(
        names=tuple(str(i) for i in range(len(rows))),
        losses=torch.ones(len(rows)),
        gramian=rows @ rows.T,
        progress=TrainingProgress(step=step),
    )


def _cases() -> list[tuple[str, int]]:
    sizes = {kind: (2, 3, 8, 32) for kind in SOLVABLE}
    sizes["random"] = (2, 3, 8, 32, 64)
    sizes["ill_conditioned"] = (2, 8, 64)
    return [(kind, size) for kind in SOLVABLE for size in sizes[kind]]


@pytest.mark.parametrize(("kind", "size"), _cases())
def test_weights_match_the_scipy_reference(kind: str, size: int) -> None:
    rows = jacobian(size, 96, seed=size, kind=kind)
    weights = NashMTL(max_norm=None).weights(_batch(rows))
    expected = torch.from_numpy(reference_bargaining(rows @ rows.T)).float()
    torch.testing.assert_close(weights, expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("kind", SOLVABLE)
def test_bargaining_equation_and_descent_for_every_objective(kind: str) -> None:
    rows = jacobian(16, 64, seed=5, kind=kind)
    gramian = (rows @ rows.T).double()
    alpha = NashMTL(max_norm=None).weights(_batch(rows)).double()
    torch.testing.assert_close(gramian @ alpha, 1.0 / alpha, rtol=1e-5, atol=0)
    check_descent(NashMTL, rows)
    direction = NashMTL(max_norm=None).aggregate(rows).double()
    assert direction.norm() == pytest.approx(4.0, rel=1e-5)  # ‖Δ‖² = T


def test_update_is_clipped_to_max_norm() -> None:
    rows = jacobian(5, 32, seed=2)
    assert NashMTL().aggregate(rows).norm() == pytest.approx(1.0, rel=1e-5)
    assert NashMTL(max_norm=0.1).aggregate(rows).norm() == pytest.approx(0.1, rel=1e-5)
    # ‖Δ‖ = √5 < 10: nothing to clip.
    torch.testing.assert_close(
        NashMTL(max_norm=10.0).aggregate(rows), NashMTL(max_norm=None).aggregate(rows)
    )


@pytest.mark.parametrize("kind", ["random", "ill_conditioned", "collinear"])
def test_update_is_invariant_to_each_gradient_scale(kind: str) -> None:
    """Not scale-equivariant: scaling ``g_i`` by ``c_i`` divides ``α_i`` by ``c_i`` and leaves
    the update unchanged (so a global scale ``c`` leaves it unchanged too)."""
    rows = jacobian(6, 48, seed=7, kind=kind)
    scales = torch.tensor([1e-3, 0.5, 1.0, 3.0, 40.0, 1e3])
    plain = NashMTL(max_norm=None)
    scaled = NashMTL(max_norm=None)
    torch.testing.assert_close(
        scaled.weights(_batch(rows * scales[:, None])),
        plain.weights(_batch(rows)) / scales,
        rtol=1e-4,
        atol=0,
    )
    for factor in (1e-3, 7.0):
        torch.testing.assert_close(
            NashMTL(max_norm=None).aggregate(rows * factor),
            NashMTL(max_norm=None).aggregate(rows),
            rtol=1e-4,
            atol=1e-6,
        )


@pytest.mark.parametrize("kind", SOLVABLE)
def test_permutation_equivariance(kind: str) -> None:
    check_permutation_equivariance(NashMTL, jacobian(9, 32, seed=4, kind=kind))


@pytest.mark.parametrize("kind", KINDS)
def test_finite(kind: str) -> None:
    check_finite(NashMTL, jacobian(7, 32, seed=8, kind=kind))


def test_zero_gradient_does_not_bargain() -> None:
    rows = jacobian(5, 32, seed=9, kind="with_zero_row")
    weights = NashMTL(max_norm=None).weights(_batch(rows))
    assert weights[0] == 0
    expected = torch.from_numpy(reference_bargaining(rows[1:] @ rows[1:].T)).float()
    torch.testing.assert_close(weights[1:], expected, rtol=1e-4, atol=0)
    all_zero = NashMTL().aggregate(torch.zeros(3, 4))
    torch.testing.assert_close(all_zero, torch.zeros(4))


def test_without_a_solution_keeps_the_previous_alpha_or_ones() -> None:
    g = jacobian(1, 8, seed=1)[0]
    stationary = torch.stack([g, -g, 2 * g])  # no update decreases both g and -g
    assert not solve_bargaining(stationary @ stationary.T, 1.0)[1]
    nash = NashMTL(max_norm=None)
    torch.testing.assert_close(nash.weights(_batch(stationary)), torch.ones(3))
    solvable = jacobian(3, 8, seed=2)
    alpha = nash.weights(_batch(solvable, step=1))
    torch.testing.assert_close(nash.weights(_batch(stationary, step=2)), alpha)


def test_non_finite_gramian_gives_a_non_finite_update_and_keeps_the_state() -> None:
    rows = jacobian(3, 8, seed=3)
    nash = NashMTL()
    nash.weights(_batch(rows))
    before = nash.alpha.clone()
    for bad in (torch.inf, torch.nan):
        broken = rows.clone()
        broken[1, 2] = bad
        assert not torch.isfinite(nash.aggregate(broken, progress=TrainingProgress(step=1))).any()
        torch.testing.assert_close(nash.alpha, before)


def test_update_interval_reuses_alpha_with_the_current_gradients() -> None:
    nash = NashMTL(max_norm=None, update_weights_every=3)
    problems = [jacobian(4, 16, seed=seed) for seed in range(7)]
    for step, rows in enumerate(problems):
        weights = nash.weights(_batch(rows, step=step))
        solved = problems[step - step % 3]
        expected = torch.from_numpy(reference_bargaining(solved @ solved.T)).float()
        torch.testing.assert_close(weights, expected, rtol=1e-4, atol=0)
    assert nash.solved_at == 6


def test_state_dict_round_trip_and_warm_start() -> None:
    rows = jacobian(64, 96, seed=11, kind="ill_conditioned")
    nearby = rows + 1e-3 * jacobian(64, 96, seed=12) * rows.norm(dim=1, keepdim=True)
    nash = NashMTL(update_weights_every=2)
    nash.weights(_batch(rows, step=4))
    buffer = io.BytesIO()
    torch.save(nash.state_dict(), buffer)
    buffer.seek(0)
    restored = NashMTL(update_weights_every=2, optim_niter=2)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.solved_at == 4
    # Step 5 reuses α; step 6 re-solves from it, which two Newton steps finish.
    torch.testing.assert_close(
        restored.weights(_batch(nearby, step=5)),
        copy.deepcopy(nash).weights(_batch(nearby, step=5)),
    )
    warm = restored.weights(_batch(nearby, step=6))
    expected = NashMTL(max_norm=None).weights(_batch(nearby))
    norm = (expected.double() @ (nearby @ nearby.T).double() @ expected.double()).sqrt()
    torch.testing.assert_close(warm, (expected / norm).float(), rtol=1e-4, atol=0)
    cold = NashMTL(max_norm=None, optim_niter=2).weights(_batch(nearby))
    torch.testing.assert_close(cold, torch.ones(64))  # two steps do not solve it from cold


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_norm": 0.0}, "max_norm must be a positive number or None"),
        ({"max_norm": math.nan}, "max_norm must be a positive number or None"),
        ({"update_weights_every": 0}, "update_weights_every must be a positive integer"),
        ({"update_weights_every": 1.5}, "update_weights_every must be a positive integer"),
        ({"optim_niter": 0}, "optim_niter must be a positive integer"),
        ({"optim_niter": True}, "optim_niter must be a positive integer"),
        ({"tol": 0.0}, "tol must be a positive number"),
    ],
)
def test_argument_checks(kwargs: dict, message: str) -> None:
    check_rejected(NashMTL, kwargs, message)


def test_needs_the_gramian_and_has_a_repr() -> None:
    assert isinstance(NashMTL(), GramianWeighting)  # the engine hands it the Gramian
    assert repr(NashMTL()) == (
        "NashMTL(max_norm=1.0, update_weights_every=1, optim_niter=20, tol=1e-06, solve_on='host')"
    )


def test_no_host_reads_of_tensor_values() -> None:
    """Meta tensors carry no values, so ``.item()``, ``bool(tensor)`` or data-dependent shapes
    raise on them: the solve, the fallback and the schedule run without host synchronisation."""
    gramian = torch.empty(5, 5, device="meta")
    nash = NashMTL(update_weights_every=2, solve_on="device")
    for step in range(3):
        batch = GramianBatch(
            names=tuple("abcde"),
            losses=torch.empty(5, device="meta"),
            gramian=gramian,
            progress=TrainingProgress(step=step),
        )
        assert nash.weights(batch).device.type == "meta"


def test_lightning_step_writes_the_clipped_nash_direction() -> None:
    initial, change = one_full_batch_step(TinyModule(NashMTL(max_norm=0.5)))
    reference = trunk_reference(initial)
    rows = reference.rows.double()
    alpha = torch.from_numpy(reference_bargaining(rows @ rows.T))
    direction = alpha @ rows
    direction = direction * min(1.0, 0.5 / float(direction.norm()))
    expected = torch.cat([direction.float(), reference.head_gradient])
    torch.testing.assert_close(change, expected, rtol=1e-4, atol=1e-6)


def test_a_newton_iteration_dispatches_few_ops(accelerator_paths: None) -> None:
    """On an accelerator the iteration count is fixed, so the ops of an iteration are the cost
    of the solver there: 47 for p = 1 (38 of them kernels), where the first version took 85."""
    gramian = (lambda m: m @ m.T)(jacobian(10, 32, seed=0))
    assert ops_per_iteration(lambda n: solve_bargaining(gramian, 1.0, iterations=n)) <= 47


def test_the_early_stop_on_the_cpu_gives_the_full_runs_result(accelerator_paths: None) -> None:
    gramian = (lambda m: m @ m.T)(jacobian(12, 32, seed=2, kind="ill_conditioned"))
    start = torch.rand(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = solve_bargaining(gramian, 1.0, start=start)  # the fixture disables the early stop
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_bargaining, "settled_on_host", lambda done: bool(done.all()))
        early = solve_bargaining(gramian, 1.0, start=start)
    assert bool(full[1]) and torch.equal(full[0], early[0]) and torch.equal(full[1], early[1])
