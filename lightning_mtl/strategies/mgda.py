"""MGDA: the minimum-norm point of the convex hull of the objectives' gradients."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies._gramian_tools import (
    SolveOn,
    checked_solve_on,
    finite_or,
    row_norms,
    solvable,
)
from lightning_mtl.strategies.base import GramianBatch, GramianWeighting
from lightning_mtl.strategies.host_solvers import simplex_qp, solve_on_host
from lightning_mtl.strategies.solvers import solve_simplex_qp

Normalization = Literal["none", "l2", "loss", "loss+"]
_NORMALIZATIONS = ("none", "l2", "loss", "loss+")
# Normalisers below this fraction of the largest (zero or negative losses, zero gradients) are
# raised to it, so that no objective's gradient is divided by zero.
_NORMALIZER_FLOOR = 1e-8


class MGDA(GramianWeighting):
    """Multiple-gradient descent: update along the minimum-norm element of the convex hull of the
    gradients, ``d = Jᵀw`` with ``w = argmin_{w ∈ Δ} ‖Jᵀw‖²``.

    Désidéri, "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization",
    Comptes Rendus Mathématique, 2012; Sener & Koltun, "Multi-Task Learning as Multi-Objective
    Optimization", NeurIPS 2018. The update decreases every objective to first order, and
    vanishes exactly at Pareto-stationary points. Only inner products of the gradients enter, so
    the strategy asks for the Gramian; the simplex QP is solved exactly in float64, on the host by
    default (:func:`~lightning_mtl.strategies.host_solvers.simplex_qp`, an NNLS problem) or on the
    device by the shared active-set solver.

    ``normalization`` is the optional gradient normalisation of Sener & Koltun's code ("not
    included in the paper"): the hull is taken over ``g_t / n_t`` with ``n_t`` equal to 1
    (``"none"``, the paper's method and our default), ``‖g_t‖`` (``"l2"``), the loss ``L_t``
    (``"loss"``) or ``L_t ‖g_t‖`` (``"loss+"``, their sample configuration). As in their code, the
    weights found for the normalised gradients are then applied to the raw gradients, so with a
    normalisation the update is no longer the min-norm point and need not decrease every
    objective. Normalisers below ``1e-8`` of the largest (zero or negative losses, zero
    gradients) are raised to that floor.

    Should the solve fail (only a non-finite or overflowing Gramian makes it), the weights fall
    back to ``1/T`` each: the mean gradient.

    Args:
        normalization: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"``.
        solve_on: where the problem is solved, ``"host"`` (default: compiled float64 numerics
            after one copy of the Gramian) or ``"device"`` (torch ops, no host read; see
            :data:`~lightning_mtl.strategies.SolveOn`).

    Example::

        >>> import torch
        >>> MGDA().aggregate(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        tensor([0.4000, 0.8000])
    """

    def __init__(self, normalization: Normalization = "none", solve_on: SolveOn = "host") -> None:
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {list(_NORMALIZATIONS)}; got {normalization!r}."
            )
        self.normalization = normalization
        self.reads_loss_values = normalization in ("loss", "loss+")
        self.solve_on = checked_solve_on(solve_on)

    @override
    def weights(self, batch: GramianBatch) -> Tensor:
        gramian = batch.gramian.double()
        normalizers = self._normalizers(batch, gramian)
        if normalizers is not None:
            gramian = gramian / (normalizers[:, None] * normalizers[None, :])
        uniform = torch.full_like(gramian[0], 1.0 / len(gramian))
        if self.solve_on == "host":
            weights = solve_on_host(simplex_qp, gramian)
            return finite_or(weights, uniform).to(batch.gramian.dtype)
        gramian, finite = solvable(gramian)
        weights = solve_simplex_qp(gramian)
        return finite_or(weights, uniform, finite).to(batch.gramian.dtype)

    def _normalizers(self, batch: GramianBatch, gramian: Tensor) -> Tensor | None:
        if self.normalization == "none":
            return None
        if self.normalization == "l2":
            normalizers = row_norms(gramian)
        else:
            normalizers = batch.losses.double()
            if self.normalization == "loss+":
                normalizers = normalizers * row_norms(gramian)
        floor = (_NORMALIZER_FLOOR * normalizers.amax()).clamp_min(torch.finfo(torch.float64).tiny)
        return normalizers.clamp_min(floor)
