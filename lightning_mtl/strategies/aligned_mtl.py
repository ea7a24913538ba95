"""Aligned-MTL: combine the gradients after making their system perfectly conditioned."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies._gramian_tools import (
    Preference,
    PreferenceSpec,
    SolveOn,
    checked_solve_on,
    finite_or,
    significant,
    symmetric_eigh,
)
from lightning_mtl.strategies.base import GramianBatch, GramianWeighting
from lightning_mtl.strategies.host_solvers import aligned_mtl_weights, solve_on_host

ScaleMode = Literal["min", "median", "rmse"]
_SCALE_MODES = ("min", "median", "rmse")


class AlignedMTL(GramianWeighting):
    """Aligned-MTL: replace the gradients by the nearest system of orthogonal gradients of equal
    norm (condition number 1), then combine them with the preference weights.

    Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023, Algorithm 1. With the Gramian ``G = J Jᵀ = V Λ Vᵀ``, the aligned
    gradients are the rows of ``B J`` with ``B = σ V Λ^{-1/2} Vᵀ``, whose Gramian ``σ² V Vᵀ`` has
    equal eigenvalues; the update is ``d = Jᵀ B p``. ``scale_mode`` sets ``σ²`` as in the
    authors' code: the smallest kept eigenvalue (``"min"``, the default and the paper's choice),
    their lower median (``"median"``) or their mean (``"rmse"``).

    Rank-deficient Gramians (duplicated, collinear or zero gradients) are handled as in the
    authors' code: eigenvalues up to ``T · eps(dtype) · λ_max`` are dropped (see
    :func:`significant`), ``B`` acts on the kept eigen-directions only, and ``σ²`` is taken
    among the kept eigenvalues; an all-zero Gramian gives a zero update. The eigendecomposition is
    LAPACK's on the host by default, or a Jacobi method on the device, which needs no host
    synchronisation. Should it fail (only a
    non-finite or overflowing Gramian makes it), the weights fall back to ``p``.

    ``preference`` is ``p``, by objective name or in row order: ``1/T`` each by default (as in
    torchjd). The authors' code sums the aligned gradients, that is ``p_t = 1``; pass
    ``preference=[1.0] * T`` for their scale.

    Args:
        scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.
        preference: the weights ``p`` of the aligned gradients.
        solve_on: where the problem is solved, ``"host"`` (default: compiled float64 numerics
            after one copy of the Gramian) or ``"device"`` (torch ops, no host read; see
            :data:`~lightning_mtl.strategies.SolveOn`).

    Example::

        >>> import torch
        >>> AlignedMTL().aggregate(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
        tensor([0.5000, 0.5000])
    """

    def __init__(
        self,
        scale_mode: ScaleMode = "min",
        preference: PreferenceSpec = None,
        solve_on: SolveOn = "host",
    ) -> None:
        if scale_mode not in _SCALE_MODES:
            raise ValueError(f"scale_mode must be one of {list(_SCALE_MODES)}; got {scale_mode!r}.")
        self.scale_mode = scale_mode
        self.preference = Preference(preference, "AlignedMTL")
        self.solve_on = checked_solve_on(solve_on)

    @override
    def setup(self, names: Sequence[str]) -> None:
        self.preference.check(names)

    @override
    def weights(self, batch: GramianBatch) -> Tensor:
        preference = self.preference.vector(batch.names, batch.gramian).double()
        if self.solve_on == "host":
            solve = functools.partial(
                aligned_mtl_weights,
                eps=torch.finfo(batch.gramian.dtype).eps,
                scale_mode=self.scale_mode,
            )
            weights = solve_on_host(solve, batch.gramian, columns=(preference,))
            return finite_or(weights, preference).to(batch.gramian.dtype)
        eigenvalues, eigenvectors = symmetric_eigh(batch.gramian.double())
        kept = significant(eigenvalues, batch.gramian.dtype)
        target = self._target(eigenvalues, kept)
        gains = torch.where(kept, (target / torch.where(kept, eigenvalues, 1.0)).sqrt(), 0.0)
        weights = eigenvectors @ (gains * (eigenvectors.T @ preference))
        return finite_or(weights, preference).to(batch.gramian.dtype)

    def _target(self, eigenvalues: Tensor, kept: Tensor) -> Tensor:
        """``σ²``, from the kept eigenvalues (which are the largest ones)."""
        if self.scale_mode == "min":
            return torch.where(kept, eigenvalues, torch.inf).amin()
        count = kept.sum()
        if self.scale_mode == "rmse":
            return torch.where(kept, eigenvalues, 0.0).sum() / count.clamp_min(1)
        ascending = eigenvalues.sort().values
        middle = len(eigenvalues) - count + (count - 1).div(2, rounding_mode="floor")
        return ascending.index_select(0, middle.reshape(1)).squeeze(0)
