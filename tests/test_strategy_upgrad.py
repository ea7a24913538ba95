"""UPGrad: projections onto the dual cone by hand and by NNLS; dual-cone and other properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from strategy_properties import (
    KINDS,
    assert_same_direction,
    check_float32_weights,
    check_non_finite_and_overflow,
    check_promised_properties,
    check_zero_at_stationarity,
    jacobian,
)
from torch import Tensor

from lightning_mtl.strategies.upgrad import UPGrad


def dual_cone_projection(rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """The point of ``{x : J x ≥ 0}`` nearest ``vector``: ``vector + Jᵀλ`` with ``λ ≥ 0``
    minimising ``‖vector + Jᵀλ‖`` (the dual of the projection), an NNLS problem."""
    multipliers = nnls(rows.T, -vector, maxiter=50 * len(rows))[0]
    return vector + rows.T @ multipliers


def upgrad_reference(
    matrix: Tensor,
    losses: Tensor | None = None,
    preference: np.ndarray | None = None,
    reg_eps: float = 0.0,
) -> Tensor:
    """``Σ_t p_t π(g_t)`` in float64. With ``reg_eps``, torchjd's regularised Gramian
    ``G / tr G + ε I`` is the Gramian of ``[J / √tr G, √ε I]``, whose dual cone we project on."""
    rows = matrix.double().numpy()
    size = len(rows)
    weights = np.full(size, 1.0 / size) if preference is None else preference
    if reg_eps > 0:
        rows = np.hstack([rows / np.sqrt(np.sum(rows**2)), np.sqrt(reg_eps) * np.eye(size)])
        projected = sum(
            w * dual_cone_projection(rows, row) for w, row in zip(weights, rows, strict=True)
        )
        coefficients = np.linalg.lstsq(rows.T, projected, rcond=None)[0]
        return torch.from_numpy(coefficients @ matrix.double().numpy())
    return torch.from_numpy(
        sum(w * dual_cone_projection(rows, row) for w, row in zip(weights, rows, strict=True))
    )


def test_two_conflicting_gradients_by_hand() -> None:
    # With two gradients, projecting one onto the dual cone removes its component along the
    # other (as PCGrad does) when they conflict.
    g1, g2 = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([-1.0, 0.5, 1.0])
    assert float(g1 @ g2) < 0
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g1 @ g2) / (g1 @ g1) * g1
    torch.testing.assert_close(UPGrad().aggregate(torch.stack([g1, g2])), (p1 + p2) / 2)


def test_gradients_without_conflict_give_the_mean() -> None:
    matrix = jacobian(6, 16, seed=1).abs()  # non-negative entries: no pair conflicts
    torch.testing.assert_close(UPGrad().aggregate(matrix), matrix.mean(0))
    weights = torch.tensor([3.0, 1.0, 0.0, 2.0, 1.0, 1.0])
    preferred = UPGrad(pref_vector=weights.tolist()).aggregate(matrix)
    torch.testing.assert_close(preferred, weights @ matrix)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [2, 3, 5, 8, 16])
def test_matches_nnls_projections_in_float64(kind: str, rows: int) -> None:
    for seed in range(2):
        matrix = jacobian(rows, 24, seed=seed, kind=kind).double()
        # The shared solver's fixed ridge (1e-13 of the largest ‖g_t‖²) costs about 1e-13 times
        # the Gramian's condition number (here up to 1e8·…) in relative accuracy.
        rtol = 1e-4 if kind == "ill_conditioned" else 1e-6
        assert_same_direction(UPGrad().aggregate(matrix), upgrad_reference(matrix), matrix, rtol)


@pytest.mark.parametrize(
    ("kind", "rows"),
    [(kind, rows) for kind in ("random", "collinear", "ill_conditioned") for rows in (3, 32)]
    + [("random", 64)],
)
def test_float32_gradients_match_the_reference(kind: str, rows: int) -> None:
    matrix = jacobian(rows, 96, seed=rows, kind=kind)
    assert_same_direction(UPGrad().aggregate(matrix), upgrad_reference(matrix), matrix, 1e-4)


def test_each_projection_lies_in_the_dual_cone() -> None:
    matrix = jacobian(5, 12, seed=4).double()
    for index in range(5):
        alone = torch.zeros(5, dtype=torch.float64)
        alone[index] = 1.0
        projection = UPGrad(pref_vector=alone.tolist()).aggregate(matrix)
        assert float((matrix @ projection).min()) >= -1e-9
        expected = dual_cone_projection(matrix.numpy(), matrix[index].numpy())
        assert_same_direction(projection, torch.from_numpy(expected), matrix, 1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_properties(kind: str) -> None:
    check_promised_properties(UPGrad, jacobian(6, 32, seed=3, kind=kind), descent=True)


def test_zero_at_stationarity() -> None:
    check_zero_at_stationarity(UPGrad)


def test_torchjd_regularisation_is_reproduced() -> None:
    matrix = jacobian(4, 10, seed=6).double()
    torchjd_like = UPGrad(norm_eps=1e-4, reg_eps=1e-4).aggregate(matrix)
    expected = upgrad_reference(matrix, reg_eps=1e-4)
    assert_same_direction(torchjd_like, expected, matrix, 1e-6)
    # The ridge moves the update by about reg_eps, relative.
    assert 1e-7 < float((torchjd_like - UPGrad().aggregate(matrix)).norm() / expected.norm()) < 1e-2


def test_norm_eps_falls_back_to_the_preference_for_tiny_gradients() -> None:
    matrix = jacobian(3, 4, seed=2) * 1e-4  # trace of the Gramian ~ 1e-7
    torch.testing.assert_close(UPGrad(norm_eps=1e-4).aggregate(matrix), matrix.mean(0))
    assert not torch.allclose(UPGrad().aggregate(matrix), matrix.mean(0))


def test_pref_vector_by_name() -> None:
    matrix = jacobian(3, 8, seed=5).double()
    preference = {"x": 0.2, "y": 0.5, "z": 0.3}
    actual = UPGrad(pref_vector=preference).aggregate(matrix, names=["x", "y", "z"])
    expected = upgrad_reference(matrix, preference=np.array([0.2, 0.5, 0.3]))
    assert_same_direction(actual, expected, matrix, 1e-6)
    with pytest.raises(ValueError, match="must name every objective"):
        UPGrad(pref_vector=preference).aggregate(matrix, names=["x", "y", "w"])


def test_non_finite_gradients_stay_non_finite_and_overflow_falls_back_to_the_mean() -> None:
    check_non_finite_and_overflow(UPGrad, (2, 1), [float("nan")])


def test_weights_dtype_arguments_and_repr() -> None:
    check_float32_weights(UPGrad)
    for label in ("norm_eps", "reg_eps"):
        with pytest.raises(ValueError, match=f"{label} must be finite and >= 0"):
            UPGrad(**{label: -1.0})
    assert repr(UPGrad()) == (
        "UPGrad(pref_vector=None, norm_eps=0.0, reg_eps=0.0, solve_on='host')"
    )
