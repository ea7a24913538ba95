"""MGDA: min-norm point by hand, by brute force over supports and by NNLS; properties; options."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from strategy_properties import (
    KINDS,
    assert_same_direction,
    check_non_finite_and_overflow,
    check_promised_properties,
    check_scale_equivariance,
    check_zero_at_stationarity,
    jacobian,
)
from torch import Tensor

from lightning_mtl.strategies.base import GramianBatch
from lightning_mtl.strategies.mgda import MGDA


def min_norm_weights_brute_force(rows: np.ndarray) -> np.ndarray:
    """Try every support: on each, the affine min-norm point of its gradients, kept when its
    weights are non-negative; the smallest such point is the min-norm point of the hull."""
    size = len(rows)
    best, best_norm = np.full(size, 1.0 / size), np.inf
    for count in range(1, size + 1):
        for support in itertools.combinations(range(size), count):
            chosen = rows[list(support)]
            # min ‖Σ w_s g_s‖² with Σ w_s = 1: the bordered normal equations, least squares.
            bordered = np.block(
                [[chosen @ chosen.T, np.ones((count, 1))], [np.ones((1, count)), np.zeros((1, 1))]]
            )
            rhs = np.concatenate([np.zeros(count), [1.0]])
            local = np.linalg.lstsq(bordered, rhs, rcond=None)[0][:count]
            if local.min() < -1e-12 or abs(local.sum() - 1) > 1e-9:
                continue
            weights = np.zeros(size)
            weights[list(support)] = local
            norm = np.linalg.norm(weights @ rows)
            if norm < best_norm * (1 - 1e-12):
                best, best_norm = weights, norm
    return best


def min_norm_weights_nnls(rows: np.ndarray) -> np.ndarray:
    """``nnls([Jᵀ; 1ᵀ], [0; 1])`` is ``w*/(1 + ‖Jᵀw*‖²)``: for ``λ = s w`` with ``w`` on the
    simplex the residual is minimised by ``s = 1/(1 + ‖Jᵀw‖²)`` and then grows with ``‖Jᵀw‖``."""
    scale = np.linalg.norm(rows, axis=1).max()
    matrix = np.vstack([rows.T / scale, np.ones((1, len(rows)))])
    target = np.concatenate([np.zeros(rows.shape[1]), [1.0]])
    solution = nnls(matrix, target, maxiter=50 * len(rows))[0]
    return solution / solution.sum()


def mgda_reference(matrix: Tensor, losses: Tensor | None = None) -> Tensor:
    """The plain MGDA update in float64 (brute force for small T, NNLS otherwise)."""
    rows = matrix.double().numpy()
    solve = min_norm_weights_brute_force if len(rows) <= 8 else min_norm_weights_nnls
    return torch.from_numpy(solve(rows) @ rows)


def test_two_gradients_by_hand() -> None:
    g1, g2 = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([-1.0, 1.0, 0.0])
    gamma = float((g2 - g1) @ g2 / (g1 - g2).square().sum())  # weight of g1, inside [0, 1] here
    expected = gamma * g1 + (1 - gamma) * g2
    torch.testing.assert_close(MGDA().aggregate(torch.stack([g1, g2])), expected)
    # A gradient inside the other's half-space: the shorter one is the min-norm point.
    shorter = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    torch.testing.assert_close(MGDA().aggregate(shorter), shorter[0])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [2, 3, 5, 8])
def test_matches_brute_force_in_float64(kind: str, rows: int) -> None:
    for seed in range(3):
        matrix = jacobian(rows, 24, seed=seed, kind=kind).double()
        assert_same_direction(MGDA().aggregate(matrix), mgda_reference(matrix), matrix, 1e-6)


@pytest.mark.parametrize("kind", ["random", "ill_conditioned", "collinear"])
@pytest.mark.parametrize("rows", [2, 5, 8])
def test_float32_gradients_match_the_reference(kind: str, rows: int) -> None:
    matrix = jacobian(rows, 64, seed=7, kind=kind)
    assert_same_direction(MGDA().aggregate(matrix), mgda_reference(matrix), matrix, 1e-4)


@pytest.mark.parametrize("rows", [16, 32, 64])
def test_many_objectives_match_nnls(rows: int) -> None:
    matrix = jacobian(rows, 48, seed=rows)
    assert_same_direction(MGDA().aggregate(matrix), mgda_reference(matrix), matrix, 1e-4)


def test_brute_force_and_nnls_references_agree() -> None:
    rows = jacobian(6, 5, seed=11).double().numpy()
    np.testing.assert_allclose(
        min_norm_weights_nnls(rows) @ rows, min_norm_weights_brute_force(rows) @ rows, atol=1e-9
    )


@pytest.mark.parametrize("kind", KINDS)
def test_properties(kind: str) -> None:
    check_promised_properties(MGDA, jacobian(5, 32, seed=2, kind=kind), descent=True)


def test_zero_at_stationarity() -> None:
    check_zero_at_stationarity(MGDA)


def test_weights_lie_on_the_simplex() -> None:
    matrix = jacobian(6, 16, seed=5)
    weights = MGDA().weights(
        GramianBatch(names=tuple("abcdef"), losses=torch.ones(6), gramian=matrix @ matrix.T)
    )
    assert weights.dtype == torch.float32
    assert float(weights.min()) >= 0
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)


def normalised_mgda_reference(matrix: Tensor, normalizers: Tensor) -> Tensor:
    """Sener & Koltun's code: min-norm weights of ``g_t / n_t``, applied to the raw ``g_t``."""
    rows = matrix.double().numpy()
    weights = min_norm_weights_brute_force(rows / normalizers.double().numpy()[:, None])
    return torch.from_numpy(weights @ rows)


def test_l2_normalization_applies_unit_gradient_weights_to_the_raw_gradients() -> None:
    matrix = jacobian(4, 16, seed=3, kind="ill_conditioned").double()
    expected = normalised_mgda_reference(matrix, matrix.norm(dim=1))
    assert_same_direction(MGDA("l2").aggregate(matrix), expected, matrix, 1e-6)
    check_scale_equivariance(lambda: MGDA("l2"), matrix.float())


def test_loss_normalizations_use_the_losses() -> None:
    matrix = jacobian(3, 16, seed=4).double()
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    expected = normalised_mgda_reference(matrix, losses)
    assert_same_direction(MGDA("loss").aggregate(matrix, losses=losses), expected, matrix, 1e-6)
    expected = normalised_mgda_reference(matrix, losses * matrix.norm(dim=1))
    actual = MGDA("loss+").aggregate(matrix, losses=losses)
    assert_same_direction(actual, expected, matrix, 1e-6)
    with pytest.raises(ValueError, match="reads the objectives' loss values"):
        MGDA("loss").aggregate(matrix)


def test_zero_loss_is_floored_not_divided_by() -> None:
    matrix = jacobian(3, 8, seed=6)
    direction = MGDA("loss").aggregate(matrix, losses=torch.tensor([0.0, 1.0, 2.0]))
    assert torch.isfinite(direction).all()


def test_non_finite_gradients_stay_non_finite_and_overflow_falls_back_to_the_mean() -> None:
    check_non_finite_and_overflow(MGDA, (1, 2), [float("inf"), float("nan")])


def test_arguments_and_repr() -> None:
    with pytest.raises(ValueError, match="normalization must be one of"):
        MGDA("l1")  # type: ignore[arg-type]
    assert repr(MGDA("loss+")) == "MGDA(normalization='loss+', solve_on='host')"
