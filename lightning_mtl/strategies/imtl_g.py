"""IMTL-G: the combination of the gradients with equal projections on every gradient's direction."""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies._gramian_tools import (
    SolveOn,
    checked_solve_on,
    finite_or,
    row_norms,
    significant,
    symmetric_eigh,
)
from lightning_mtl.strategies.base import GramianBatch, GramianWeighting
from lightning_mtl.strategies.host_solvers import imtl_g_weights, solve_on_host

# Below this fraction of Σ|v_t| the sum Σ v_t is cancellation noise.
_DEGENERATE_SUM = 1e-8
# When G G⁺ n misses n by more than this fraction of ‖n‖, n is not in the range of G: no
# combination of the gradients has equal non-zero projections on their directions.
_OUT_OF_RANGE = 1e-3


class IMTLG(GramianWeighting):
    """Impartial MTL, gradient part: weights ``α`` making ``d = Jᵀα`` project equally on every
    unit gradient, ``⟨d, g_t / ‖g_t‖⟩ = k`` for all ``t``.

    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
    ICLR 2021 (the gradient balancing of IMTL; the loss balancing IMTL-L is another method). The
    paper's closed form, ``α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹`` with ``D`` and ``U`` the differences of the
    gradients and of the unit gradients to the first one and ``α_1 = 1 − Σ α_{2:T}``, is the
    solution of ``G α = k n`` with ``n_t = ‖g_t‖``, that is ``α ∝ G⁻¹ n``: only inner products
    enter, so the strategy asks for the Gramian. Like torchjd (after Quinton & Rey, 2024) we
    take ``α ∝ G⁺ n`` with the pseudo-inverse, which is defined for linearly dependent gradients
    (duplicated, zero) where ``D Uᵀ`` is singular. The pseudo-inverse drops the eigen-directions
    of ``G`` below its rank tolerance ``T · eps(dtype) · λ_max`` (see :func:`significant`) and
    comes from LAPACK's ``eigh`` on the host by default, or from a Jacobi eigendecomposition on the
    device, which needs no host synchronisation.

    The paper normalises ``Σ α_t = 1``. When ``Σ_t (G⁺n)_t < 0`` (possible from three objectives
    on) that makes the common projection ``k`` negative, an update that increases every
    objective; we divide by ``|Σ_t (G⁺n)_t|`` instead, which keeps the projections equal and makes
    them positive. When no combination has equal non-zero projections the weights are zero (the
    update whose projections are all 0): when ``n`` is not in the range of ``G``
    (``‖G G⁺n − n‖ > 1e-3 ‖n‖``: e.g. ``g`` and ``−2g``, where the pseudo-inverse's least-squares
    weights would give ``−5g``, and every Pareto-stationary set of non-zero gradients, such as
    three at 120° in a plane), or when ``Σ_t (G⁺n)_t`` vanishes (below ``1e-8 Σ_t |(G⁺n)_t|``;
    torchjd returns zero weights there too). Should the eigendecomposition fail (only a
    non-finite or overflowing Gramian makes it), the weights fall back to ``1/T`` each.

    IMTL-G has no hyper-parameters.

    Args:
        solve_on: where the problem is solved, ``"host"`` (default: compiled float64 numerics
            after one copy of the Gramian) or ``"device"`` (torch ops, no host read; see
            :data:`~lightning_mtl.strategies.SolveOn`).

    Example::

        >>> import torch
        >>> IMTLG().aggregate(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        tensor([0.6667, 0.6667])
    """

    def __init__(self, solve_on: SolveOn = "host") -> None:
        self.solve_on = checked_solve_on(solve_on)

    @override
    def weights(self, batch: GramianBatch) -> Tensor:
        uniform = torch.full_like(batch.gramian[0], 1.0 / len(batch.gramian), dtype=torch.float64)
        if self.solve_on == "host":
            eps = torch.finfo(batch.gramian.dtype).eps
            weights = solve_on_host(functools.partial(imtl_g_weights, eps=eps), batch.gramian)
            return finite_or(weights, uniform).to(batch.gramian.dtype)
        gramian = batch.gramian.double()
        eigenvalues, eigenvectors = symmetric_eigh(gramian)
        kept = significant(eigenvalues, batch.gramian.dtype)
        inverse = torch.where(kept, 1.0 / torch.where(kept, eigenvalues, 1.0), 0.0)
        norms = row_norms(gramian)
        solution = eigenvectors @ (inverse * (eigenvectors.T @ norms))
        total = solution.sum()
        missed = (gramian @ solution - norms).norm() > _OUT_OF_RANGE * norms.norm()
        degenerate = missed | (total.abs() <= _DEGENERATE_SUM * solution.abs().sum())
        weights = torch.where(degenerate, 0.0, solution / torch.where(degenerate, 1.0, total.abs()))
        return finite_or(weights, uniform).to(batch.gramian.dtype)
