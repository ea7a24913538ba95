"""CAGrad: against scipy solutions of its primal and of the paper's dual; guarantees; options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference_solvers import cagrad_dual_weights
from scipy.optimize import minimize, minimize_scalar, nnls
from strategy_properties import (
    KINDS,
    assert_same_direction,
    check_float32_weights,
    check_non_finite_and_overflow,
    check_promised_properties,
    check_rejected,
    jacobian,
)
from torch import Tensor

from lightning_mtl.strategies.cagrad import CAGrad


def _centre_and_radius(rows: np.ndarray, c: float, preference: np.ndarray | None):
    weights = np.full(len(rows), 1.0 / len(rows)) if preference is None else preference
    centre = weights @ rows
    return weights, centre, c * np.linalg.norm(centre)


def cagrad_primal_reference(
    matrix: Tensor, c: float = 0.5, preference: np.ndarray | None = None
) -> Tensor:
    """``max_{d, z} z`` subject to ``J d ≥ z`` and ``‖d − g0‖ ≤ c ‖g0‖`` by SLSQP in float64.

    The maximiser is unique unless the best level is ``z* = 0`` with ``0`` in the hull; then our
    tie-break, the point of ``{d : J d ≥ 0}`` nearest ``g0``, is an NNLS projection.
    """
    rows = matrix.double().numpy()
    size, width = rows.shape
    _, centre, radius = _centre_and_radius(rows, c, preference)
    constraints = [
        {
            "type": "ineq",
            "fun": lambda v: rows @ v[:width] - v[width],
            "jac": lambda v: np.hstack([rows, -np.ones((size, 1))]),
        },
        {
            "type": "ineq",
            "fun": lambda v: radius**2 - np.sum((v[:width] - centre) ** 2),
            "jac": lambda v: np.concatenate([-2 * (v[:width] - centre), [0.0]])[None],
        },
    ]
    start = np.concatenate([centre, [np.min(rows @ centre)]])
    result = minimize(
        lambda v: -v[width],
        start,
        jac=lambda v: np.concatenate([np.zeros(width), [-1.0]]),
        method="SLSQP",
        constraints=constraints,
        options={"ftol": 1e-16, "maxiter": 2000},
    )
    nearest = centre + rows.T @ nnls(rows.T, -centre, maxiter=50 * size)[0]
    at_zero = abs(result.x[width]) <= 1e-9 * np.sum(rows**2)
    if at_zero and np.linalg.norm(nearest - centre) <= radius:
        return torch.from_numpy(nearest)
    return torch.from_numpy(result.x[:width])


def cagrad_dual_reference(matrix: Tensor, c: float = 0.5) -> Tensor:
    """The paper's dual, ``min_{w ∈ Δ} g_wᵀg0 + c‖g0‖ ‖g_w‖``, by SLSQP from several starts
    (as in the authors' code), and ``d = g0 + c‖g0‖ g_w / ‖g_w‖``."""
    rows = matrix.double().numpy()
    size = len(rows)
    gramian = rows @ rows.T
    _, centre, radius = _centre_and_radius(rows, c, None)
    toward = gramian @ np.full(size, 1.0 / size)

    weights = cagrad_dual_weights(gramian, toward, radius, max_corner_starts=4)
    combined = weights @ rows
    return torch.from_numpy(centre + radius * combined / np.linalg.norm(combined))


def cagrad_reference(matrix: Tensor, losses: Tensor | None = None) -> Tensor:
    """CAGrad's default update (``c = 0.5``, ``rescale = 1``) in float64."""
    return cagrad_primal_reference(matrix) / 1.25


def raw(matrix: Tensor, **kwargs) -> Tensor:  # type: ignore[no-untyped-def]
    return CAGrad(rescale=0, **kwargs).aggregate(matrix)


def test_two_orthogonal_gradients_by_hand() -> None:
    # g0 = (0.5, 1.5); the worse objective is the first, and the whole radius goes its way.
    matrix = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    radius = 0.5 * math.sqrt(0.5**2 + 1.5**2)
    torch.testing.assert_close(raw(matrix), torch.tensor([0.5 + radius, 1.5]))
    torch.testing.assert_close(CAGrad().aggregate(matrix), torch.tensor([0.5 + radius, 1.5]) / 1.25)
    divided = CAGrad(rescale=2).aggregate(matrix)
    torch.testing.assert_close(divided, torch.tensor([0.5 + radius, 1.5]) / 1.5)


def test_two_gradients_match_a_one_dimensional_dual() -> None:
    matrix = torch.tensor([[1.0, 0.2], [-0.8, 0.5]], dtype=torch.float64)
    rows = matrix.numpy()
    gramian, centre = rows @ rows.T, rows.mean(0)
    radius = 0.5 * np.linalg.norm(centre)

    def objective(a: float) -> float:
        w = np.array([a, 1 - a])
        return float(w @ gramian @ [0.5, 0.5] + radius * math.sqrt(w @ gramian @ w))

    grid = np.linspace(0, 1, 2001)
    coarse = grid[np.argmin([objective(a) for a in grid])]
    a = minimize_scalar(
        objective,
        bounds=(max(coarse - 1e-3, 0), min(coarse + 1e-3, 1)),
        method="bounded",
        options={"xatol": 1e-13},
    ).x
    combined = np.array([a, 1 - a]) @ rows
    expected = torch.from_numpy(centre + radius * combined / np.linalg.norm(combined))
    assert_same_direction(raw(matrix), expected, matrix, 1e-6)


@pytest.mark.parametrize("kind", ["random", "collinear", "ill_conditioned", "duplicated"])
@pytest.mark.parametrize("rows", [2, 3, 5, 8, 16])
def test_matches_the_primal_reference(kind: str, rows: int) -> None:
    for seed in range(2):
        matrix = jacobian(rows, 16, seed=seed, kind=kind).double()
        assert_same_direction(raw(matrix), cagrad_primal_reference(matrix), matrix, 1e-4)


@pytest.mark.parametrize("rows", [2, 4, 8])
def test_matches_the_papers_dual_on_random_gradients(rows: int) -> None:
    for seed in range(3):
        matrix = jacobian(rows, 16, seed=seed)
        assert_same_direction(raw(matrix), cagrad_dual_reference(matrix), matrix, 1e-4)


@pytest.mark.parametrize("c", [0.1, 0.9, 2.0])
def test_other_radii(c: float) -> None:
    matrix = jacobian(5, 16, seed=4).double()
    assert_same_direction(raw(matrix, c=c), cagrad_primal_reference(matrix, c), matrix, 1e-4)


def test_many_objectives_in_float32() -> None:
    matrix = jacobian(32, 64, seed=1)
    assert_same_direction(raw(matrix), cagrad_primal_reference(matrix), matrix, 1e-4)


def test_a_zero_gradient_gives_the_optimal_update_nearest_the_mean() -> None:
    # min_t ⟨g_t, d⟩ ≤ 0 for every d; the best updates are those in the ball with J d ≥ 0.
    for seed in range(3):
        matrix = jacobian(4, 16, seed=seed, kind="with_zero_row").double()
        direction = raw(matrix)
        assert float((matrix @ direction).min()) >= -1e-9
        assert_same_direction(direction, cagrad_primal_reference(matrix), matrix, 1e-6)


def _guarantees(matrix: Tensor, c: float) -> None:
    centre = matrix.double().mean(0)
    direction = raw(matrix, c=c).double()
    radius = c * float(centre.norm())
    assert float((direction - centre).norm()) <= radius * (1 + 1e-5) + 1e-7
    assert float(direction @ centre) >= (1 - c) * float(centre @ centre) - 1e-6
    # g0 lies in the ball, so the worst objective does at least as well as under g0.
    worst = float((matrix.double() @ direction).min())
    assert worst >= float((matrix.double() @ centre).min()) - 1e-6 * float(centre.norm()) ** 2
    # No random point of the ball does better on the worst objective.
    generator = torch.Generator().manual_seed(0)
    offsets = torch.randn(200, matrix.shape[1], generator=generator, dtype=torch.float64)
    offsets = offsets / offsets.norm(dim=1, keepdim=True) * radius
    others = (matrix.double() @ (centre + offsets).T).min(0).values
    assert float(others.max()) <= worst + 1e-6 * float(centre.norm()) ** 2


@pytest.mark.parametrize("kind", KINDS)
def test_guarantees_of_the_paper(kind: str) -> None:
    for c in (0.2, 0.5, 0.9):
        _guarantees(jacobian(5, 24, seed=8, kind=kind), c)


@pytest.mark.parametrize("kind", KINDS)
def test_properties(kind: str) -> None:
    check_promised_properties(CAGrad, jacobian(5, 32, seed=2, kind=kind), descent=False)


def test_c_zero_is_the_mean() -> None:
    matrix = jacobian(4, 16, seed=3)
    torch.testing.assert_close(CAGrad(c=0.0).aggregate(matrix), matrix.mean(0))


def test_preference_replaces_the_mean() -> None:
    counts = {"a": 500, "b": 50, "c": 5}
    largest = max(counts.values())
    class_weights = {name: math.log(largest / n + 0.01) for name, n in counts.items()}
    matrix = jacobian(3, 16, seed=9).double()
    by_name = CAGrad(rescale=0, preference=class_weights)
    actual = by_name.aggregate(matrix, names=list(counts))
    b = np.array(list(class_weights.values()))
    assert_same_direction(actual, cagrad_primal_reference(matrix, 0.5, b), matrix, 1e-4)
    in_order = CAGrad(rescale=0, preference=list(class_weights.values()))
    torch.testing.assert_close(in_order.aggregate(matrix), actual)
    # Names, not positions, decide which weight goes with which gradient.
    swapped = by_name.aggregate(matrix[[2, 1, 0]], names=["c", "b", "a"])
    torch.testing.assert_close(swapped, actual)


def test_preference_must_fit_the_objectives() -> None:
    with pytest.raises(ValueError, match="must name every objective"):
        CAGrad(preference={"a": 1.0}).aggregate(torch.eye(2), names=["a", "b"])
    with pytest.raises(ValueError, match="2 weights for 3 objectives"):
        CAGrad(preference=[1.0, 2.0]).aggregate(torch.eye(3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"c": -0.1}, "c must be finite and >= 0"),
        ({"c": float("nan")}, "c must be finite and >= 0"),
        ({"c": float("inf")}, "c must be finite and >= 0"),
        ({"rescale": 3}, "rescale must be 0, 1 or 2"),
        ({"preference": [1.0, -1.0]}, "finite and >= 0"),
        ({"preference": [0.0, 0.0]}, "all zero"),
        ({"preference": []}, "empty"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    check_rejected(CAGrad, kwargs, message)


def test_non_finite_gradients_stay_non_finite_and_overflow_falls_back_to_the_mean() -> None:
    check_non_finite_and_overflow(CAGrad, (0, 0), [float("inf")], mean_divisor=1.25)


def test_weights_are_float32_on_float32_gramians_and_repr() -> None:
    check_float32_weights(CAGrad)
    assert repr(CAGrad(c=0.4, rescale=2)) == (
        "CAGrad(c=0.4, rescale=2, preference=None, solve_on='host')"
    )
