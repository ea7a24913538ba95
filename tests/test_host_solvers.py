"""The host solvers: KKT conditions checked independently, scipy references on the Jacobian
itself, and agreement with the device solvers they replace, on the strategy tests' families.

Errors in a combination ``d = Jᵀw`` are measured as ``‖J δw‖ = √(δwᵀ G δw)`` relative to the
largest gradient norm: where the Gramian is singular the weights themselves are not unique.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from host_sync import OpCounter, detect_host_syncs
from reference_solvers import cagrad_dual_weights
from scipy.optimize import nnls
from strategy_properties import KINDS, jacobian

from lightning_mtl.strategies import host_solvers as hs
from lightning_mtl.strategies import solvers
from lightning_mtl.strategies._bargaining import clipped_update_weights, solve_bargaining
from lightning_mtl.strategies.aligned_mtl import AlignedMTL
from lightning_mtl.strategies.base import GramianBatch
from lightning_mtl.strategies.cagrad import conflict_averse_multipliers
from lightning_mtl.strategies.epo import EPO
from lightning_mtl.strategies.imtl_g import IMTLG
from lightning_mtl.strategies.plot import class_preference

SIZES = (2, 3, 10, 40, 64, 100)
# The device solvers take seconds per problem from T = 40 on the CPU, so they are compared on
# every family at small T and on two at T = 40; the KKT tests cover every size.
DEVICE_CASES = [(kind, size) for kind in KINDS for size in (2, 3, 10)] + [
    ("random", 40),
    ("ill_conditioned", 40),
]
EXACT = 1e-9


def rows_of(kind: str, size: int, seed: int = 0) -> np.ndarray:
    """A float64 copy of the strategy tests' float32 Jacobian (wide enough for rank T)."""
    return jacobian(size, max(96, 2 * size), seed=seed, kind=kind).double().numpy()


def combination_error(gramian: np.ndarray, first: np.ndarray, second: np.ndarray) -> float:
    """``‖Jᵀ(first − second)‖ / max_t ‖g_t‖``, from the Gramian."""
    step = first - second
    return math.sqrt(max(float(step @ gramian @ step), 0.0) / gramian.diagonal().max())


def assert_simplex_kkt(gramian: np.ndarray, weights: np.ndarray, linear: np.ndarray) -> None:
    """``w`` on the simplex with ``(Gw + c)_t`` equal to its minimum ``ν`` where ``w_t > 0``,
    to ``EXACT`` of each row's scale ``(‖g_t‖ + ‖Jᵀw‖) max_s ‖g_s‖ + |c_t|``."""
    norms = np.sqrt(gramian.diagonal())
    length = math.sqrt(max(float(weights @ gramian @ weights), 0.0))
    scale = (norms + length) * norms.max() + np.abs(linear) + 1e-300
    gradient = gramian @ weights + linear
    multiplier = float(weights @ gradient)  # Σw = 1: the common value on the support
    assert weights.min() >= 0 and abs(weights.sum() - 1.0) <= 1e-12
    assert np.all((gradient - multiplier) / scale >= -EXACT)
    assert float(weights @ ((gradient - multiplier) / scale)) <= EXACT


def assert_nonnegative_kkt(gramian: np.ndarray, solution: np.ndarray, linear: np.ndarray) -> None:
    """``x ≥ 0``, ``Gx + c ≥ 0`` and ``xᵀ(Gx + c) = 0``, each row of ``Gx + c`` to ``EXACT`` of
    its scale ``‖g_t‖ ‖Jx‖ + |c_t|``."""
    norms = np.sqrt(gramian.diagonal())
    length = math.sqrt(max(float(solution @ gramian @ solution), 0.0))
    scale = norms * max(length, 1e-300) + np.abs(linear) + 1e-300
    gradient = (gramian @ solution + linear) / scale
    assert solution.min() >= 0
    assert gradient.min() >= -EXACT, gradient.min()
    assert float(solution @ (gradient * scale)) <= EXACT * float(np.abs(solution) @ scale)


# --- simplex_qp: MGDA's min-norm point


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SIZES)
def test_simplex_qp_meets_the_kkt_conditions(kind: str, size: int) -> None:
    rows = rows_of(kind, size)
    gramian = rows @ rows.T
    weights = hs.simplex_qp(gramian)
    assert_simplex_kkt(gramian, weights, np.zeros(size))
    # The min-norm point of the hull from scipy's NNLS on the gradients themselves: its
    # solution λ of min ‖[Jᵀ/s; 1ᵀ] λ − e‖ is proportional to the weights.
    lifted = nnls(
        np.vstack([rows.T / np.sqrt(gramian.diagonal().max()), np.ones(size)]),
        np.eye(rows.shape[1] + 1)[-1],
        maxiter=50 * size,
    )[0]
    assert combination_error(gramian, weights, lifted / lifted.sum()) <= EXACT


@pytest.mark.parametrize("size", [2, 3, 5, 8])
def test_simplex_qp_matches_brute_force_over_supports(size: int) -> None:
    rows = rows_of("random", size, seed=size)[:, :4]  # four columns: the hull's point is 0
    gramian = rows @ rows.T
    expected, smallest = None, math.inf
    for count in range(1, size + 1):
        for support in map(list, itertools.combinations(range(size), count)):
            bordered = np.block(
                [[gramian[np.ix_(support, support)], np.ones((count, 1))], [np.ones((1, count)), 0]]
            )
            local = np.linalg.lstsq(bordered, np.eye(count + 1)[-1], rcond=None)[0][:-1]
            if local.min() < -1e-12:
                continue
            weights = np.zeros(size)
            weights[support] = local
            if weights @ gramian @ weights < smallest:
                expected, smallest = weights, weights @ gramian @ weights
    assert expected is not None
    assert combination_error(gramian, hs.simplex_qp(gramian), expected) <= EXACT


@pytest.mark.parametrize(("kind", "size"), DEVICE_CASES)
def test_simplex_qp_agrees_with_the_device_solver(kind: str, size: int) -> None:
    rows = rows_of(kind, size, seed=1)
    gramian = rows @ rows.T
    device = solvers.solve_simplex_qp(torch.from_numpy(gramian)).numpy()
    assert combination_error(gramian, hs.simplex_qp(gramian), device) <= EXACT


@pytest.mark.parametrize("kind", ["random", "ill_conditioned", "duplicated", "with_zero_row"])
def test_simplex_qp_with_a_linear_term(kind: str) -> None:
    rows = rows_of(kind, 10, seed=2)
    gramian = rows @ rows.T
    # c = G u + β 1 lies in the span the solver needs, whatever the rank of G.
    linear = gramian @ np.linspace(-1.0, 1.0, 10) - 3.0
    weights = hs.simplex_qp(gramian, linear)
    assert_simplex_kkt(gramian, weights, linear)
    device = solvers.solve_simplex_qp(torch.from_numpy(gramian), torch.from_numpy(linear)).numpy()
    assert combination_error(gramian, weights, device) <= EXACT


def test_simplex_qp_small_cases_by_hand() -> None:
    assert hs.simplex_qp(np.array([[4.0]])).tolist() == [1.0]
    # Equal gradients: every weighting is optimal; one of them.
    weights = hs.simplex_qp(np.ones((3, 3)))
    assert weights.sum() == pytest.approx(1.0) and weights.min() >= 0
    # All gradients zero.
    zeros = hs.simplex_qp(np.zeros((3, 3)))
    assert zeros.sum() == pytest.approx(1.0) and zeros.min() >= 0
    # g_1 = (1, 0), g_2 = (−1, 0): the hull holds 0, at w = (½, ½).
    np.testing.assert_allclose(hs.simplex_qp(np.array([[1.0, -1.0], [-1.0, 1.0]])), [0.5, 0.5])


def test_simplex_qp_rejects_a_linear_term_it_cannot_pose() -> None:
    # G = diag(1, 0, 0): c = (0, 1, −1) is neither in the range of G nor along 1.
    with pytest.raises(ValueError, match="span of the Gramian's columns"):
        hs.simplex_qp(np.diag([1.0, 0.0, 0.0]), np.array([0.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="finite"):
        hs.simplex_qp(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"\[T, T\]"):
        hs.simplex_qp(np.ones((2, 3)))


# --- nonnegative_qp: UPGrad's projections


def unsolved(self: object, linear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in for the block principal pivoting that solves nothing."""
    return np.zeros_like(linear), np.zeros(len(linear), dtype=bool)


def upgrad_problems(gramian: np.ndarray) -> np.ndarray:
    """UPGrad's linear terms ``c_t = p_t G e_t`` with ``p = 1/T``."""
    return gramian / len(gramian)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SIZES)
def test_nonnegative_qp_meets_the_kkt_conditions(kind: str, size: int) -> None:
    rows = rows_of(kind, size)
    gramian = rows @ rows.T
    linear = upgrad_problems(gramian)
    solutions = hs.nonnegative_qp(gramian, linear)
    for solution, row in zip(solutions, linear, strict=True):
        assert_nonnegative_kkt(gramian, solution, row)
    # The projection of g_t / T onto the dual cone {d : J d ≥ 0}, by scipy's NNLS on Jᵀ.
    for index in (0, size - 1):
        multipliers = nnls(rows.T, -rows[index] / size, maxiter=50 * size)[0]
        assert combination_error(gramian, solutions[index], multipliers) <= EXACT


@pytest.mark.parametrize(("kind", "size"), DEVICE_CASES)
def test_nonnegative_qp_agrees_with_the_device_solver(kind: str, size: int) -> None:
    rows = rows_of(kind, size, seed=1)
    gramian = rows @ rows.T
    linear = upgrad_problems(gramian)
    solutions = hs.nonnegative_qp(gramian, linear)
    g = torch.from_numpy(gramian)
    device = solvers.solve_nonnegative_qp(g.expand(size, size, size), torch.from_numpy(linear))
    # The device solver frees a weight only when its multiplier is below 1e-12 max_t G_tt, which
    # leaves KKT violations of up to 1e-8 on the small gradients of the ill-conditioned family
    # (ours meet them to 1e-17; see the KKT test); elsewhere the two agree to rounding.
    tolerance = 1e-7 if kind == "ill_conditioned" else EXACT
    for solution, other in zip(solutions, device.numpy(), strict=True):
        assert combination_error(gramian, solution, other) <= tolerance


@pytest.mark.parametrize("kind", KINDS)
def test_the_general_method_alone_gives_the_same_solutions(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block principal pivoting is a fast path: the least-distance NNLS alone solves the same
    problems (duplicated gradients already take it, their ``G_FF`` being singular)."""
    rows = rows_of(kind, 40, seed=3)
    gramian = rows @ rows.T
    linear = upgrad_problems(gramian)
    fast = hs.nonnegative_qp(gramian, linear)
    monkeypatch.setattr(hs._NonnegativeQP, "_pivoting", unsolved)
    general = hs.nonnegative_qp(gramian, linear)
    for solution, row, other in zip(general, linear, fast, strict=True):
        assert_nonnegative_kkt(gramian, solution, row)
        assert combination_error(gramian, solution, other) <= EXACT


@pytest.mark.parametrize("fast_path", [True, False])
def test_nonnegative_qp_linear_terms_outside_the_range(
    fast_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not fast_path:
        monkeypatch.setattr(hs._NonnegativeQP, "_pivoting", unsolved)
    gramian = np.diag([1.0, 0.0, 4.0])
    linear = np.array(
        [
            [-1.0, 1.0, -2.0],  # bounded: x_2 has no curvature but a positive cost
            [-1.0, -1.0, 0.0],  # unbounded: x_2 → ∞
            [1.0, 0.0, 2.0],  # c ≥ 0: x = 0
        ]
    )
    solutions = hs.nonnegative_qp(gramian, linear)
    np.testing.assert_allclose(solutions[0], [1.0, 0.0, 0.5], rtol=1e-12)
    assert np.isnan(solutions[1]).all()
    assert solutions[2].tolist() == [0.0, 0.0, 0.0]
    assert hs.nonnegative_qp(gramian, linear[0]).shape == (3,)
    with pytest.raises(ValueError, match=r"\[T\] or \[k, T\]"):
        hs.nonnegative_qp(gramian, np.zeros(2))


@pytest.mark.parametrize("zero_gradient", [False, True])
def test_nonnegative_qp_ill_conditioned_general_method(
    zero_gradient: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nearly opposite gradients ``g_1 = (1, 0)``, ``g_2 = (−cos a, sin a)`` and ``c = (0, −ε)``,
    by the general method: both constraints are active, so ``x = −G⁻¹c``, here in exact
    rational arithmetic on the float64 Gramian (whose rounding alone moves ``x`` by ~1e-6 from
    the trigonometric formula, condition number 4e10). With a third, zero gradient of cost 1,
    ``c`` leaves the range of ``G`` and the least-distance program solves it: its point
    ``y ≈ (0, ε / sin a)`` is about ``1 / sin a`` times its first estimate ``ε / ‖g_2‖``, so
    the program is posed again in the scale of ``y``."""
    monkeypatch.setattr(hs._NonnegativeQP, "_pivoting", unsolved)
    angle, epsilon = 1e-5, 1e-3
    rows = np.array([[1.0, 0.0], [-math.cos(angle), math.sin(angle)]])
    linear = np.array([0.0, -epsilon])
    if zero_gradient:
        rows, linear = np.vstack([rows, np.zeros(2)]), np.append(linear, 1.0)
    gramian = rows @ rows.T
    solution = hs.nonnegative_qp(gramian, linear)
    (a, b), (_, d) = ([Fraction(float(v)) for v in row[:2]] for row in gramian[:2])
    determinant = a * d - b * b
    expected = [-b * Fraction(epsilon) / determinant, a * Fraction(epsilon) / determinant]
    np.testing.assert_allclose(solution[:2], [float(x) for x in expected], rtol=1e-9)
    assert solution[2:].tolist() == ([0.0] if zero_gradient else [])


# --- conflict_averse_multipliers: CAGrad and PLOT


def assert_conflict_averse_kkt(
    gramian: np.ndarray, preference: np.ndarray, radius: float, multipliers: np.ndarray
) -> None:
    """The optimality conditions of ``max_d min_t ⟨g_t, d⟩`` over ``‖d − Jᵀb‖ ≤ radius`` for
    ``d = Jᵀ(b + λ)``, where the hull of the gradients does not hold 0: ``λ ≥ 0``, ``λ ≠ 0``,
    ``‖Jᵀλ‖ = radius``, and ``⟨g_t, d⟩`` at its minimum where ``λ_t > 0``. (With
    ``μ = λ/Σλ``, every ``d'`` in the ball has ``min_t ⟨g_t, d'⟩ ≤ ⟨Jᵀμ, d'⟩ ≤ ⟨Jᵀμ, Jᵀb⟩ +
    radius²/Σλ = ⟨Jᵀμ, d⟩ = min_t ⟨g_t, d⟩``.)"""
    norms = np.sqrt(gramian.diagonal())
    products = gramian @ (preference + multipliers)
    level = products.min()
    centre = math.sqrt(max(float(preference @ gramian @ preference), 0.0))
    assert multipliers.min() >= 0 and multipliers.sum() > 0
    assert abs(float(multipliers @ gramian @ multipliers) - radius**2) <= EXACT * radius**2
    slack = (products - level) / (norms * (centre + radius) + 1e-300)
    assert float(multipliers @ slack) <= EXACT * multipliers.sum()


@pytest.mark.parametrize("kind", ["random", "collinear", "ill_conditioned", "duplicated"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("c", [0.1, 0.4, 0.9, 2.0])
def test_conflict_averse_multipliers_meet_the_kkt_conditions(
    kind: str, size: int, c: float
) -> None:
    rows = rows_of(kind, size)
    gramian = rows @ rows.T
    preference = np.full(size, 1.0 / size)
    radius = c * math.sqrt(preference @ gramian @ preference)
    multipliers = hs.conflict_averse_multipliers(gramian, preference, radius)
    assert_conflict_averse_kkt(gramian, preference, radius, multipliers)


@pytest.mark.parametrize(("kind", "size"), DEVICE_CASES)
def test_conflict_averse_multipliers_agree_with_the_device_solver(kind: str, size: int) -> None:
    rows = rows_of(kind, size, seed=1)
    gramian = rows @ rows.T
    for preference in (np.full(size, 1.0 / size), np.array(class_preference(range(1, size + 1)))):
        radius = 0.4 * math.sqrt(np.full(size, 1.0 / size) @ gramian @ np.full(size, 1.0 / size))
        device = conflict_averse_multipliers(
            torch.from_numpy(gramian),
            torch.from_numpy(preference),
            torch.tensor(radius, dtype=torch.float64),
        ).numpy()
        host = hs.conflict_averse_multipliers(gramian, preference, radius)
        assert combination_error(gramian, host, device) <= EXACT


@pytest.mark.parametrize("size", [2, 3, 5])
def test_conflict_averse_multipliers_match_the_papers_dual(size: int) -> None:
    """The paper's dual by SLSQP from several starts: ``d = g0 + radius Jᵀw / ‖Jᵀw‖``."""
    rows = rows_of("random", size, seed=size)
    gramian = rows @ rows.T
    preference = np.full(size, 1.0 / size)
    radius = 0.5 * math.sqrt(preference @ gramian @ preference)
    weights = cagrad_dual_weights(gramian, gramian @ preference, radius)
    expected = radius * weights / math.sqrt(weights @ gramian @ weights)
    multipliers = hs.conflict_averse_multipliers(gramian, preference, radius)
    # SLSQP's tolerance, not ours, sets this one.
    assert combination_error(gramian, multipliers, expected) <= 1e-6


def nearest_in_dual_cone(rows: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The point of ``{d : J d ≥ 0}`` nearest ``centre``, by scipy's NNLS on ``Jᵀ``."""
    return centre + rows.T @ nnls(rows.T, -centre, maxiter=100 * len(rows))[0]


@pytest.mark.parametrize("size", [3, 10, 40, 64])
def test_a_hull_holding_zero_gives_the_optimal_update_nearest_the_centre(size: int) -> None:
    """With a zero gradient no level above 0 is reachable; if the point of the dual cone nearest
    ``g0`` is within the radius, it is the answer."""
    rows = rows_of("with_zero_row", size, seed=2)
    gramian = rows @ rows.T
    preference = np.full(size, 1.0 / size)
    centre = preference @ rows
    for c in (0.4, 2.0):
        radius = c * np.linalg.norm(centre)
        multipliers = hs.conflict_averse_multipliers(gramian, preference, radius)
        nearest = nearest_in_dual_cone(rows, centre)
        if np.linalg.norm(nearest - centre) <= radius:
            error = np.linalg.norm((preference + multipliers) @ rows - nearest)
            assert error <= EXACT * np.linalg.norm(rows, axis=1).max()
        else:  # the level is negative: unique, with the whole radius used
            assert (gramian @ (preference + multipliers)).min() < 0
            assert_conflict_averse_kkt(gramian, preference, radius, multipliers)


def stationary_rows(offset: float) -> np.ndarray:
    """``g, −g, h, −h, k`` with ``k ⟂ g, h`` (the hull holds 0), moved by ``offset`` along a
    fourth orthogonal direction, so that the min-norm point of the hull has norm ``offset``."""
    directions = np.linalg.qr(np.random.default_rng(5).normal(size=(16, 4)))[0].T
    g, h, k, e = 2.0 * directions[0], 0.5 * directions[1], directions[2], directions[3]
    return np.stack([g, -g, h, -h, k]) + offset * e


@pytest.mark.parametrize("offset", [0.0, 1e-7, 1e-3, 1e-1])
@pytest.mark.parametrize("imbalance", [0.02, 0.2])
def test_stationary_and_near_stationary_hulls(offset: float, imbalance: float) -> None:
    """At ``offset`` 0 the dual cone is ``{d : ⟨g, d⟩ = ⟨h, d⟩ = 0, ⟨k, d⟩ ≥ 0}``, and the
    point of it nearest ``g0`` is ``imbalance √(‖g‖² + ‖h‖²)`` away: inside the radius for the
    smaller imbalance, outside for the larger."""
    rows = stationary_rows(offset)
    gramian = rows @ rows.T
    preference = np.array([0.2, 0.2 + imbalance, 0.2, 0.2 - imbalance, 0.2])
    centre = preference @ rows
    radius = 0.5 * np.linalg.norm(centre)
    multipliers = hs.conflict_averse_multipliers(gramian, preference, radius)
    device = conflict_averse_multipliers(
        torch.from_numpy(gramian),
        torch.from_numpy(preference),
        torch.tensor(radius, dtype=torch.float64),
    ).numpy()
    assert combination_error(gramian, multipliers, device) <= EXACT
    nearest = nearest_in_dual_cone(rows, centre)
    stationary = offset**2 <= 1e-10 * gramian.diagonal().max()
    if stationary and np.linalg.norm(nearest - centre) <= radius:
        # Taken as stationary: level 0, and the point of the dual cone nearest g0.
        error = np.linalg.norm((preference + multipliers) @ rows - nearest)
        assert error <= EXACT * np.linalg.norm(rows, axis=1).max()
    else:
        assert_conflict_averse_kkt(gramian, preference, radius, multipliers)
    if stationary:
        assert (np.linalg.norm(nearest - centre) <= radius) == (imbalance == 0.02)


@pytest.mark.parametrize("shift", [0.0, 1.0])
@pytest.mark.parametrize("size", [10, 40])
def test_more_objectives_than_dimensions(shift: float, size: int) -> None:
    """``T`` gradients in 4 dimensions (Gramian of rank 4): centred, the hull holds 0 (at most
    level 0 is reachable); shifted by a common direction, it does not."""
    rows = np.random.default_rng(size).normal(size=(size, 4)) + shift * np.eye(4)[0]
    gramian = rows @ rows.T
    weights = hs.simplex_qp(gramian)
    assert_simplex_kkt(gramian, weights, np.zeros(size))
    linear = upgrad_problems(gramian)
    for solution, row in zip(hs.nonnegative_qp(gramian, linear), linear, strict=True):
        assert_nonnegative_kkt(gramian, solution, row)
    preference = np.full(size, 1.0 / size)
    centre = preference @ rows
    radius = 0.5 * np.linalg.norm(centre)
    multipliers = hs.conflict_averse_multipliers(gramian, preference, radius)
    nearest = nearest_in_dual_cone(rows, centre)
    if shift == 0 and np.linalg.norm(nearest - centre) <= radius:
        error = np.linalg.norm((preference + multipliers) @ rows - nearest)
        assert error <= EXACT * np.linalg.norm(rows, axis=1).max()
    else:
        assert_conflict_averse_kkt(gramian, preference, radius, multipliers)


def test_conflict_averse_multipliers_by_hand() -> None:
    # g_1 = (1, 0), g_2 = (0, 3), b = (½, ½): the worse objective is the first; all of the
    # radius goes its way (the strategy tests' example).
    gramian = np.diag([1.0, 9.0])
    radius = 0.5 * math.sqrt(0.5**2 + 1.5**2)
    multipliers = hs.conflict_averse_multipliers(gramian, np.array([0.5, 0.5]), radius)
    np.testing.assert_allclose(multipliers, [radius, 0.0], rtol=1e-14, atol=1e-15)
    assert hs.conflict_averse_multipliers(gramian, np.array([0.5, 0.5]), 0.0).tolist() == [0, 0]
    # One objective: d = g (b + λ) at distance radius.
    single = hs.conflict_averse_multipliers(np.array([[4.0]]), np.array([1.0]), 0.6)
    np.testing.assert_allclose(single, [0.3], rtol=1e-14)
    with pytest.raises(ValueError, match="radius"):
        hs.conflict_averse_multipliers(gramian, np.array([0.5, 0.5]), -1.0)
    with pytest.raises(ValueError, match="preference"):
        hs.conflict_averse_multipliers(gramian, np.array([0.5, -0.5]), 1.0)


# --- bargaining: Nash-MTL and FairGrad


@pytest.mark.parametrize(("kind", "size"), DEVICE_CASES)
@pytest.mark.parametrize("power", [1.0, 0.5, 0.2])
def test_bargaining_is_the_device_solvers_method(kind: str, size: int, power: float) -> None:
    rows = rows_of(kind, size, seed=4)
    gramian = rows @ rows.T
    weights, solved = hs.bargaining(gramian, power, iterations=30)
    device, device_solved = solve_bargaining(torch.from_numpy(gramian), power, iterations=30)
    assert solved == bool(device_solved)
    np.testing.assert_allclose(weights, device.numpy(), rtol=1e-12, atol=0)
    if solved:  # the equation itself, where objectives bargain
        bargains = weights > 0
        residual = weights**power * (gramian @ weights) - 1.0
        assert np.abs(residual[bargains]).max() <= 1e-6
        assert bargains.sum() == (gramian.diagonal() > 0).sum()


def test_bargaining_warm_start_and_no_solution() -> None:
    rows = rows_of("ill_conditioned", 10, seed=5)
    gramian = rows @ rows.T
    cold, _ = hs.bargaining(gramian, 1.0)
    start = cold * np.linspace(0.5, 2.0, 10)
    warm, solved = hs.bargaining(gramian, 1.0, start=start, iterations=30)
    device, _ = solve_bargaining(
        torch.from_numpy(gramian), 1.0, start=torch.from_numpy(start), iterations=30
    )
    assert solved
    np.testing.assert_allclose(warm, device.numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(warm, cold, rtol=1e-9)
    g = rows[0]
    stationary = np.stack([g, -g, 2 * g])  # no update decreases both g and −g
    assert not hs.bargaining(stationary @ stationary.T, 1.0)[1]


def test_clipped_update_weights_is_the_device_clipping() -> None:
    rows = rows_of("random", 5, seed=6)
    gramian = rows @ rows.T
    weights = np.linspace(0.2, 1.0, 5)
    for max_norm in (None, 0.1, 1e6):
        expected = clipped_update_weights(
            torch.from_numpy(weights), torch.from_numpy(gramian), max_norm
        )
        np.testing.assert_allclose(
            hs.clipped_update_weights(weights, gramian, max_norm), expected.numpy(), rtol=1e-14
        )
    assert hs.clipped_update_weights(np.zeros(2), np.eye(2), 1.0).tolist() == [0.0, 0.0]


# --- EPO


@pytest.mark.parametrize(("kind", "size"), DEVICE_CASES)
@pytest.mark.parametrize("on_ray", [False, True], ids=["balance", "descent"])
def test_epo_weights_are_the_device_solvers(kind: str, size: int, on_ray: bool) -> None:
    rows = rows_of(kind, size, seed=7)
    gramian = rows @ rows.T
    generator = np.random.default_rng(size)
    # The strategy holds its preference in float32 (Preference.vector).
    preference = (generator.random(size) + 0.5).astype(np.float32).astype(np.float64)
    losses = 1.5 / preference if on_ray else generator.random(size) * 2 + 0.1
    weights, non_uniformity = hs.epo_weights(gramian, losses, preference)
    epo = EPO(preference=preference.tolist(), solve_on="device")
    names = tuple(str(i) for i in range(size))
    batch = GramianBatch(
        names=names, losses=torch.from_numpy(losses), gramian=torch.from_numpy(gramian)
    )
    device = epo.weights(batch).numpy()
    assert non_uniformity == pytest.approx(float(epo.non_uniformity), rel=1e-12, abs=1e-15)
    assert (non_uniformity <= 1e-4) == on_ray
    if kind == "duplicated":
        # The optimal β is not unique; both end near the analytic centre of the optimal face,
        # where its rounding moves them apart: compare the combinations instead.
        assert combination_error(gramian, weights, device) <= 1e-7
    else:
        np.testing.assert_allclose(weights, device, rtol=1e-9, atol=1e-9 * np.abs(device).max())


def test_epo_weights_fall_back_on_an_infeasible_program() -> None:
    """The strategy tests' infeasible descent program: the fallback is ``T r / Σ r``."""
    rows = np.array([[0.451, -0.915], [-1.016, -0.548], [0.581, -0.152]])
    losses = np.array([1.0089, 1.0101, 1.0104])
    weights, non_uniformity = hs.epo_weights(rows @ rows.T, losses, np.ones(3))
    assert non_uniformity <= 1e-4
    np.testing.assert_allclose(weights, np.ones(3))
    with pytest.raises(ValueError, match="positive"):
        hs.epo_weights(np.eye(2), np.ones(2), np.array([1.0, 0.0]))


# --- IMTL-G and Aligned-MTL


@pytest.mark.parametrize(("kind", "size"), DEVICE_CASES)
def test_imtl_g_and_aligned_mtl_are_the_strategies_weights(kind: str, size: int) -> None:
    """Against the strategies on a float64 Gramian (their rank cut then uses float64's
    epsilon); where that cut keeps eigenvalues of 1e-14 of the largest (the collinear family),
    the weights are that ill-conditioned, and the defining property is checked instead."""
    rows = rows_of(kind, size, seed=8)
    gramian = rows @ rows.T
    names = tuple(str(i) for i in range(size))
    batch = GramianBatch(
        names=names, losses=torch.ones(size, dtype=torch.float64), gramian=torch.from_numpy(gramian)
    )
    eps = float(np.finfo(np.float64).eps)
    imtl = hs.imtl_g_weights(gramian, eps=eps)
    aligned = hs.aligned_mtl_weights(gramian, np.full(size, 1.0 / size), eps=eps)
    if kind != "collinear":
        device_imtl = IMTLG(solve_on="device").weights(batch).numpy()
        device_aligned = AlignedMTL(solve_on="device").weights(batch).numpy()
        assert combination_error(gramian, imtl, device_imtl) <= EXACT
        assert combination_error(gramian, aligned, device_aligned) <= EXACT
    # IMTL-G: equal, positive projections of d = Jᵀw on the unit gradients.
    projections = (gramian @ imtl) / np.sqrt(gramian.diagonal())
    bargains = gramian.diagonal() > 0
    if np.any(imtl):
        spread = np.ptp(projections[bargains]) / projections[bargains].mean()
        assert projections[bargains].min() > 0 and spread <= 1e-6


@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_aligned_mtl_scale_modes(mode: str) -> None:
    """Aligned gradients ``B J`` have Gramian ``B G B = σ² I`` on full-rank input, with ``σ²``
    the smallest eigenvalue, their lower median or their mean."""
    rows = rows_of("random", 6, seed=9)
    gramian = rows @ rows.T
    values = np.linalg.eigvalsh(gramian)
    target = {"min": values[0], "median": values[2], "rmse": values.mean()}[mode]
    aligner = np.stack(
        [hs.aligned_mtl_weights(gramian, e, eps=1e-16, scale_mode=mode) for e in np.eye(6)]
    )
    np.testing.assert_allclose(
        aligner @ gramian @ aligner.T, target * np.eye(6), atol=1e-9 * target
    )
    with pytest.raises(ValueError, match="scale_mode"):
        hs.aligned_mtl_weights(gramian, np.ones(6), eps=1e-7, scale_mode="max")  # type: ignore[arg-type]


@pytest.mark.parametrize("ratio", [1e-1, 1e-3, 1e-5, 3e-6, 1e-7, 1e-9])
def test_imtl_g_matches_a_pseudo_inverse_on_both_sides_of_the_rank_cut(ratio: float) -> None:
    """Spectra from well-conditioned to below the float32 cut (``T · eps = 7.2e-7`` at T = 6):
    the weights, whether from the Cholesky solve or the eigendecomposition, are numpy's
    pseudo-inverse at that cut applied to the gradient norms, normalised, or zeros where the
    norms leave the kept range by more than 1e-3 of their length."""
    size, eps = 6, float(np.finfo(np.float32).eps)
    basis, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((size, size)))
    gramian = basis @ np.diag(np.geomspace(ratio, 1.0, size)) @ basis.T
    norms = np.sqrt(gramian.diagonal())
    solution = np.linalg.pinv(gramian, rtol=size * eps, hermitian=True) @ norms
    expected = solution / abs(solution.sum())
    if np.linalg.norm(gramian @ solution - norms) > 1e-3 * np.linalg.norm(norms):
        expected = np.zeros(size)
    np.testing.assert_allclose(hs.imtl_g_weights(gramian, eps=eps), expected, rtol=1e-6, atol=1e-12)


def test_imtl_g_and_aligned_mtl_degenerate_cases() -> None:
    assert hs.imtl_g_weights(np.zeros((3, 3)), eps=1e-7).tolist() == [0.0, 0.0, 0.0]
    assert hs.aligned_mtl_weights(np.zeros((2, 2)), np.ones(2), eps=1e-7).tolist() == [0.0, 0.0]
    # g and −2g: no combination has equal non-zero projections.
    rows = np.array([[1.0, 2.0], [-2.0, -4.0]])
    assert hs.imtl_g_weights(rows @ rows.T, eps=1e-7).tolist() == [0.0, 0.0]


# --- solve_on_host


def test_solve_on_host_makes_one_copy_and_returns_one_tensor() -> None:
    rows = jacobian(5, 32, seed=1)
    gramian = rows @ rows.T  # float32
    losses = torch.linspace(0.5, 2.0, 5)
    with detect_host_syncs() as syncs, OpCounter() as ops:
        result = hs.solve_on_host(
            lambda g, values, scale: hs.epo_weights(g, values, np.ones(5))[0] * scale,
            gramian,
            2.0,
            columns=(losses,),
        )
    assert [sync.call for sync in syncs] == ["numpy"]
    assert ops.kernels["_to_copy"] <= 2  # the float64 block on the device, then the copy
    assert result.dtype == torch.float64 and result.device == gramian.device
    expected = hs.epo_weights(gramian.double().numpy(), losses.double().numpy(), np.ones(5))[0]
    np.testing.assert_allclose(result.numpy(), 2.0 * expected, rtol=1e-15)


def test_solve_on_host_gives_nan_for_non_finite_input() -> None:
    calls = []

    def solve(g: np.ndarray) -> np.ndarray:
        calls.append(g)
        return hs.simplex_qp(g)

    for bad in (torch.inf, torch.nan):
        gramian = torch.eye(3)
        gramian[0, 1] = bad
        assert torch.isnan(hs.solve_on_host(solve, gramian)).all()
    assert not calls
    nan_losses = torch.tensor([1.0, torch.nan, 2.0])
    stacked = hs.solve_on_host(solve, torch.eye(3), columns=(nan_losses,), shape=(2, 3))
    assert stacked.shape == (2, 3) and torch.isnan(stacked).all()
    with pytest.raises(TypeError, match="columns"):
        hs.solve_on_host(lambda g, x: g, torch.eye(2), torch.ones(2))


@pytest.mark.gpu
def test_solve_on_host_returns_to_the_gramians_device() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    rows = jacobian(6, 64, seed=2).cuda()
    gramian = rows @ rows.T
    result = hs.solve_on_host(hs.simplex_qp, gramian)
    assert result.device == gramian.device
    expected = hs.simplex_qp(gramian.double().cpu().numpy())
    np.testing.assert_allclose(result.cpu().numpy(), expected, rtol=1e-12)
