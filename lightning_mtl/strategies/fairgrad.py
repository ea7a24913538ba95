"""FairGrad: weights from α-fair resource allocation, ``G w = w^(−1/α)``."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies._bargaining import bargain, clipped_update_weights
from lightning_mtl.strategies._gramian_tools import SolveOn, checked_solve_on, finite_or
from lightning_mtl.strategies.base import GramianBatch, GramianWeighting


class FairGrad(GramianWeighting):
    """FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024).

    The update ``d = Σ_i w_i g_i`` maximises the α-fair utility ``Σ_i (g_iᵀ d)^(1−α) / (1 − α)``
    (``Σ_i log g_iᵀ d`` for ``α = 1``) of the objectives' first-order decreases over a ball;
    its optimality condition gives weights ``w > 0`` with ``(G w)_i = w_i^(−1/α)``, ``G`` the
    Gramian of the gradients. ``α = 0`` would be the plain sum, ``α = 1`` proportional fairness
    (Nash-MTL's equation ``G w = 1/w``), ``α → ∞`` max-min fairness. Scaling every gradient by
    ``c > 0`` scales the update by ``c^((1−α)/(1+α))``.

    Defaults follow the authors' code: ``alpha = 1`` (their run scripts pick α per benchmark,
    e.g. 2 on QM9), and the update is ``T · Σ_i w_i g_i`` (their "to match the sum loss") clipped
    to norm ``max_norm = 1`` on the shared parameters.

    Choices made here:

    * The authors solve the equation with ``scipy.optimize.least_squares`` from ``w = 1/T`` on the
      host. We solve it (on the host, or the device) by Newton's method on the strictly convex
      potential ``½ wᵀ G w − Σ_i w_i^(1−1/α) / (1 − 1/α)`` (``log`` for ``α = 1``), whose
      stationarity condition it is, with a fixed iteration count (see
      :mod:`lightning_mtl.strategies._bargaining`); Nash-MTL uses the same solver. A large ``α``
      makes the equation stiff (``w_i = (G w)_i^(−α)`` spreads the weights over many orders of
      magnitude): cold starts of ill-conditioned problems with 64 objectives need up to 20
      iterations for ``α = 5``, hence the default of 30; raise ``iterations`` for ``α ≥ 10``.
    * The clipping applies to the update of the balanced scope, the authors' setting when the
      scope is the shared parameters. ``max_norm=None`` disables it.
    * When no positive solution is found to relative residual ``tol`` (at or near a
      Pareto-stationary point none exists; ``least_squares`` would then return a best fit), the
      weights are ``1/T``, the authors' starting point: the update is the plain sum.
    * An objective whose gradient is exactly zero gets weight 0 and the others share the
      update, as no positive weight solves the equation with it.

    Args:
        alpha: the fairness parameter ``α > 0``.
        max_norm: clip the update to this norm; ``None`` for no clipping.
        iterations: Newton iterations per step.
        tol: the largest relative residual ``max_i |w_i^(1/α) (G w)_i − 1|`` accepted.
        solve_on: where the problem is solved, ``"host"`` (default: compiled float64 numerics
            after one copy of the Gramian) or ``"device"`` (torch ops, no host read; see
            :data:`~lightning_mtl.strategies.SolveOn`).

    Example::

        >>> import torch
        >>> fair = FairGrad(alpha=1.0, max_norm=None)
        >>> fair.aggregate(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))  # T · (1, 1), as Nash-MTL
        tensor([2., 2.])
        >>> FairGrad(alpha=3.0, max_norm=None).aggregate(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        tensor([2., 2.])
    """

    def __init__(
        self,
        alpha: float = 1.0,
        max_norm: float | None = 1.0,
        iterations: int = 30,
        tol: float = 1e-6,
        solve_on: SolveOn = "host",
    ) -> None:
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a positive number; got {alpha}.")
        if max_norm is not None and not (math.isfinite(max_norm) and max_norm > 0):
            raise ValueError(f"max_norm must be a positive number or None; got {max_norm}.")
        if isinstance(iterations, bool) or not (isinstance(iterations, int) and iterations >= 1):
            raise ValueError(f"iterations must be a positive integer; got {iterations!r}.")
        if not (math.isfinite(tol) and tol > 0):
            raise ValueError(f"tol must be a positive number; got {tol}.")
        self.alpha = float(alpha)
        self.max_norm = None if max_norm is None else float(max_norm)
        self.iterations = iterations
        self.tol = float(tol)
        self.solve_on = checked_solve_on(solve_on)

    @override
    def weights(self, batch: GramianBatch) -> Tensor:
        gramian = batch.gramian
        solution, solved = bargain(
            gramian, 1.0 / self.alpha, None, self.iterations, self.tol, self.solve_on
        )
        count = solution.shape[0]
        fallback = torch.full_like(solution, 1.0 / count)
        weights = count * finite_or(solution, fallback, solved)
        weights = clipped_update_weights(weights, gramian, self.max_norm)
        return weights
