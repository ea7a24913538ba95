"""IMTL-G: equal projections, the paper's closed form with explicit vectors, degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from strategy_properties import (
    KINDS,
    assert_same_direction,
    check_agrees_with_torchjd,
    check_float32_weights,
    check_non_finite_and_overflow,
    check_promised_properties,
    jacobian,
)
from torch import Tensor

from lightning_mtl.strategies.base import GramianBatch
from lightning_mtl.strategies.imtl_g import IMTLG


def imtl_g_reference(matrix: Tensor, losses: Tensor | None = None) -> Tensor:
    """The paper's closed form with explicit vectors in float64: ``D`` and ``U`` hold
    ``g_1 − g_t`` and ``u_1 − u_t``, ``α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹``, ``α_1 = 1 − Σ α_{2:T}``; then
    our sign rule, which makes the common projection positive."""
    rows = matrix.double().numpy()
    units = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    differences, unit_differences = rows[0] - rows[1:], units[0] - units[1:]
    rest = rows[0] @ unit_differences.T @ np.linalg.inv(differences @ unit_differences.T)
    update = np.concatenate([[1.0 - rest.sum()], rest]) @ rows
    return torch.from_numpy(update if units[0] @ update >= 0 else -update)


def projections_on_unit_gradients(matrix: Tensor, direction: Tensor) -> Tensor:
    rows = matrix.double()
    norms = rows.norm(dim=1)
    return (rows[norms > 0] @ direction.double()) / norms[norms > 0]


def test_two_gradients_by_hand() -> None:
    # α ∝ (‖g_2‖, ‖g_1‖): the update is ‖g_1‖‖g_2‖ (u_1 + u_2) / (‖g_1‖ + ‖g_2‖).
    g1, g2 = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([-1.0, 1.0, 0.0])
    n1, n2 = g1.norm(), g2.norm()
    expected = n1 * n2 * (g1 / n1 + g2 / n2) / (n1 + n2)
    torch.testing.assert_close(IMTLG().aggregate(torch.stack([g1, g2])), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_projections_on_all_unit_gradients_are_equal_and_positive(kind: str) -> None:
    for rows in (2, 3, 6):
        matrix = jacobian(rows, 16, seed=rows, kind=kind).double()
        projections = projections_on_unit_gradients(matrix, IMTLG().aggregate(matrix))
        assert float(projections.min()) > 0
        torch.testing.assert_close(projections, projections.mean().expand_as(projections))


@pytest.mark.parametrize("kind", ["random", "collinear", "ill_conditioned"])
@pytest.mark.parametrize("rows", [2, 3, 5, 8, 16])
def test_matches_the_papers_closed_form_in_float64(kind: str, rows: int) -> None:
    for seed in range(2):
        matrix = jacobian(rows, 24, seed=seed, kind=kind).double()
        assert_same_direction(IMTLG().aggregate(matrix), imtl_g_reference(matrix), matrix, 1e-6)


@pytest.mark.parametrize("rows", [3, 32, 64])
def test_float32_gradients_match_the_closed_form(rows: int) -> None:
    matrix = jacobian(rows, 96, seed=rows)
    assert_same_direction(IMTLG().aggregate(matrix), imtl_g_reference(matrix), matrix, 1e-4)


def test_a_negative_normalising_sum_keeps_the_projections_positive() -> None:
    # Here Σ_t (G⁻¹n)_t < 0: the paper's Σ α = 1 would raise all three losses.
    matrix = torch.tensor([[1.0, 2.0, -3.0], [1.0, 4.0, -4.0], [1.0, -3.0, -2.0]])
    gramian = matrix.double() @ matrix.double().T
    assert float(torch.linalg.solve(gramian, gramian.diagonal().sqrt()).sum()) < 0
    direction = IMTLG().aggregate(matrix)
    projections = projections_on_unit_gradients(matrix, direction)
    assert float(projections.min()) > 0
    torch.testing.assert_close(projections, projections.mean().expand(3), rtol=1e-5, atol=0)
    assert_same_direction(direction, imtl_g_reference(matrix), matrix, 1e-5)
    weights = IMTLG().weights(
        GramianBatch(names=("a", "b", "c"), losses=torch.ones(3), gramian=matrix @ matrix.T)
    )
    assert float(weights.sum()) == pytest.approx(-1.0, rel=1e-5)


def test_duplicated_gradients_share_the_weight_of_one() -> None:
    matrix = jacobian(3, 8, seed=1).double()
    doubled = torch.cat([matrix[:1], matrix])
    torch.testing.assert_close(IMTLG().aggregate(doubled), IMTLG().aggregate(matrix))


def test_a_zero_gradient_gets_no_weight() -> None:
    matrix = jacobian(3, 8, seed=2).double()
    with_zero = torch.cat([torch.zeros(1, 8, dtype=torch.float64), matrix])
    torch.testing.assert_close(IMTLG().aggregate(with_zero), IMTLG().aggregate(matrix))


def test_no_equal_nonzero_projection_gives_a_zero_update() -> None:
    # g and −2g: any update has projections k and −k on the unit gradients (the pseudo-inverse's
    # least-squares weights would give −5g).
    g = jacobian(1, 8, seed=3)[0]
    torch.testing.assert_close(IMTLG().aggregate(torch.stack([g, -2 * g])), torch.zeros(8))
    # Three gradients at 120° in a plane: Pareto-stationary, n is orthogonal to the range of G.
    angles = torch.tensor([0.0, 2.0, 4.0]) * torch.pi / 3
    plane = torch.stack([angles.cos(), angles.sin(), torch.zeros(3)], dim=1) * 2.0
    torch.testing.assert_close(IMTLG().aggregate(plane), torch.zeros(3))
    torch.testing.assert_close(IMTLG().aggregate(torch.zeros(3, 8)), torch.zeros(8))


@pytest.mark.parametrize("kind", KINDS)
def test_properties(kind: str) -> None:
    # Collinear gradients' differences are ~1e-6 of ‖g‖², the rounding level of a float32
    # Gramian, which IMTL-G's equal projections depend on: only a float64 Gramian resolves them.
    dtype = torch.float64 if kind == "collinear" else torch.float32
    check_promised_properties(IMTLG, jacobian(5, 32, seed=2, kind=kind).to(dtype), descent=True)


def test_agrees_with_torchjd_where_the_sum_is_positive() -> None:
    check_agrees_with_torchjd(IMTLG, "IMTLG", torch.float64, 1e-6)


def test_non_finite_gradients_stay_non_finite_and_overflow_falls_back_to_the_mean() -> None:
    check_non_finite_and_overflow(IMTLG, (1, 1), [float("inf")])


def test_weights_dtype_and_repr() -> None:
    check_float32_weights(IMTLG)
    assert repr(IMTLG()) == "IMTLG(solve_on='host')"
