"""Aligned-MTL: equal projections by hand, against an explicit SVD of J, condition number 1."""

from __future__ import annotations

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

from lightning_mtl.strategies.aligned_mtl import AlignedMTL


def aligned_mtl_reference(
    matrix: Tensor,
    losses: Tensor | None = None,
    scale_mode: str = "min",
    preference: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """From the SVD ``J = U S Wᵀ`` in float64: ``G = U S² Uᵀ``, so ``d = Jᵀ B p = σ W_r U_rᵀ p``
    over the singular values kept by the rank cut ``s² > T eps(dtype) s_max²``."""
    rows = matrix.double()
    size = len(rows)
    left, singular, right = torch.linalg.svd(rows, full_matrices=False)
    kept = singular**2 > size * torch.finfo(dtype).eps * singular.max() ** 2
    squares = singular[kept] ** 2
    if len(squares) == 0:
        return torch.zeros(rows.shape[1], dtype=torch.float64)
    if scale_mode == "min":
        target = squares.min()
    elif scale_mode == "median":
        target = squares.sort().values[(len(squares) - 1) // 2]
    else:
        target = squares.mean()
    weights = torch.full((size,), 1.0 / size, dtype=torch.float64)
    if preference is not None:
        weights = preference.double()
    return target.sqrt() * right[kept].T @ (left[:, kept].T @ weights)


def test_orthogonal_gradients_get_equal_projections() -> None:
    # Orthogonal gradients of norms 1, 2, 4: each is scaled to the smallest norm, so the update
    # projects 1/3 on every gradient's direction.
    matrix = torch.diag(torch.tensor([1.0, 2.0, 4.0]))
    direction = AlignedMTL().aggregate(matrix)
    torch.testing.assert_close(direction, torch.full((3,), 1.0 / 3))
    rotated = (
        matrix @ torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))[0]
    )
    units = rotated / rotated.norm(dim=1, keepdim=True)
    torch.testing.assert_close(units @ AlignedMTL().aggregate(rotated), torch.full((3,), 1.0 / 3))


def aligned_gradients(matrix: Tensor, **kwargs) -> Tensor:  # type: ignore[no-untyped-def]
    """The rows of ``B J``: the update for the preference ``e_t`` is the aligned ``g_t``."""
    size = len(matrix)
    return torch.stack(
        [
            AlignedMTL(preference=torch.eye(size)[t].tolist(), **kwargs).aggregate(matrix)
            for t in range(size)
        ]
    )


@pytest.mark.parametrize("kind", ["random", "ill_conditioned", "duplicated", "with_zero_row"])
def test_the_aligned_system_has_condition_number_one(kind: str) -> None:
    matrix = jacobian(5, 16, seed=3, kind=kind).double()
    singular = torch.linalg.svdvals(aligned_gradients(matrix))
    kept = singular[singular > 1e-6 * singular.max()]
    torch.testing.assert_close(kept, kept.min().expand_as(kept))
    # σ is the smallest kept singular value of J.
    reference = torch.linalg.svdvals(matrix)
    torch.testing.assert_close(kept.min(), reference[reference > 1e-6 * reference.max()].min())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [2, 3, 5, 8, 16])
def test_matches_the_svd_reference_in_float64(kind: str, rows: int) -> None:
    for seed in range(2):
        matrix = jacobian(rows, 24, seed=seed, kind=kind).double()
        expected = aligned_mtl_reference(matrix, dtype=torch.float64)
        assert_same_direction(AlignedMTL().aggregate(matrix), expected, matrix, 1e-6)


@pytest.mark.parametrize("rows", [3, 32, 64])
def test_float32_gradients_match_the_reference(rows: int) -> None:
    matrix = jacobian(rows, 96, seed=rows)
    expected = aligned_mtl_reference(matrix)
    assert_same_direction(AlignedMTL().aggregate(matrix), expected, matrix, 1e-4)


@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("rows", [4, 5])
def test_scale_modes(mode: str, rows: int) -> None:
    matrix = jacobian(rows, 16, seed=rows, kind="duplicated").double()
    expected = aligned_mtl_reference(matrix, scale_mode=mode, dtype=torch.float64)
    actual = AlignedMTL(scale_mode=mode).aggregate(matrix)  # type: ignore[arg-type]
    assert_same_direction(actual, expected, matrix, 1e-6)


def test_rank_deficient_gradients_and_zero_gradients() -> None:
    matrix = jacobian(3, 8, seed=4).double()
    repeated = torch.cat([matrix, matrix[:1], 2 * matrix[1:2]])
    expected = aligned_mtl_reference(repeated, dtype=torch.float64)
    assert_same_direction(AlignedMTL().aggregate(repeated), expected, repeated, 1e-6)
    torch.testing.assert_close(AlignedMTL().aggregate(torch.zeros(3, 8)), torch.zeros(8))


@pytest.mark.parametrize("kind", KINDS)
def test_properties(kind: str) -> None:
    # Collinear gradients' spectrum reaches 1e-6 of λ_max, next to the float32 rank cut
    # 5 · 1.2e-7: the kept rank, and so the update, is not stable under rescaling of a float32
    # Gramian.
    dtype = torch.float64 if kind == "collinear" else torch.float32
    matrix = jacobian(5, 32, seed=2, kind=kind).to(dtype)
    check_promised_properties(AlignedMTL, matrix, descent=False)


def test_preference_and_the_authors_sum() -> None:
    matrix = jacobian(4, 16, seed=6).double()
    summed = AlignedMTL(preference=[1.0] * 4).aggregate(matrix)
    torch.testing.assert_close(summed, 4 * AlignedMTL().aggregate(matrix))
    preference = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    actual = AlignedMTL(preference=preference).aggregate(matrix, names=list(preference))
    expected = aligned_mtl_reference(
        matrix, preference=torch.tensor([0.1, 0.2, 0.3, 0.4]), dtype=torch.float64
    )
    assert_same_direction(actual, expected, matrix, 1e-6)


def test_agrees_with_torchjd() -> None:
    check_agrees_with_torchjd(AlignedMTL, "AlignedMTL", torch.float32, 1e-4)


def test_non_finite_gradients_stay_non_finite_and_overflow_falls_back_to_the_mean() -> None:
    check_non_finite_and_overflow(AlignedMTL, (0, 3), [float("nan")])


def test_weights_dtype_arguments_and_repr() -> None:
    check_float32_weights(AlignedMTL)
    with pytest.raises(ValueError, match="scale_mode must be one of"):
        AlignedMTL(scale_mode="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3 weights for 2 objectives"):
        AlignedMTL(preference=[1.0, 1.0, 1.0]).aggregate(torch.eye(2))
    assert repr(AlignedMTL()) == ("AlignedMTL(scale_mode='min', preference=None, solve_on='host')")
