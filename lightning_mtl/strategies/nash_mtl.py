"""Nash-MTL: weights from the Nash bargaining solution ``G α = 1/α``."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies._bargaining import bargain, clipped_update_weights
from lightning_mtl.strategies._gramian_tools import SolveOn, checked_solve_on, finite_or
from lightning_mtl.strategies.base import GramianBatch, GramianWeighting


class NashMTL(GramianWeighting):
    """Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task
    Learning as a Bargaining Game", ICML 2022).

    The objectives bargain over the update ``Δ = Σ_i α_i g_i``; the Nash bargaining solution
    (the paper's Claim 3.1) has ``α > 0`` with ``(G α)_i = 1 / α_i``, ``G`` the Gramian of the
    gradients. Every objective then decreases to first order (``g_iᵀ Δ = 1/α_i > 0``) and
    ``‖Δ‖² = αᵀ G α = T``. The update is invariant to the scale of each gradient: scaling
    ``g_i`` by ``c_i > 0`` divides ``α_i`` by ``c_i`` and leaves ``Δ`` unchanged.

    The authors' code clips the update to norm ``max_norm`` (``clip_grad_norm_`` on the shared
    parameters), re-solves every ``update_weights_every`` steps and warm-starts each solve from
    the previous ``α``; their defaults are ``max_norm = 1``, ``update_weights_every = 1`` and
    ``optim_niter = 20``.

    Choices made here:

    * The authors solve a sequence of convex programs (the concave-convex procedure, cvxpy with
      ECOS). We solve the same equation (on the host, or the device) by Newton's method on the
      strictly convex potential ``½ αᵀ G α − Σ log α_i`` (whose stationarity condition it is),
      damped as for self-concordant functions, which converges from any start and quadratically near
      the solution (see :mod:`lightning_mtl.strategies._bargaining`). ``optim_niter`` counts Newton
      iterations; cold starts of our test problems (up to 64 objectives, Gramians with condition
      numbers up to 1e16) need at most 5, a warm start fewer.
    * The clipping applies to the update of the balanced scope, which is the authors' setting
      when the scope is the shared parameters. ``max_norm=None`` disables it.
    * Weights are re-solved when ``update_weights_every`` optimizer steps have passed since the
      last solve (the first call always solves); in between the last ``α`` is reused with the
      current gradients, as in the authors' code.
    * When no positive solution is found to relative residual ``tol`` (at or near a
      Pareto-stationary point no solution exists), the previous ``α`` is kept, or ``α = 1``
      before any solve: the authors' code also keeps the previous ``α`` (initially ones) when
      the solver fails. Then ``g_iᵀ Δ > 0`` is no longer guaranteed.
    * An objective whose gradient is exactly zero cannot bargain (no positive ``α`` solves the
      equation with it); it gets weight 0 and the others bargain among themselves.

    Args:
        max_norm: clip the update to this norm; ``None`` for no clipping.
        update_weights_every: solve for new weights every this many optimizer steps.
        optim_niter: Newton iterations per solve.
        tol: the largest relative residual ``max_i |α_i (G α)_i − 1|`` accepted as a solution.
        solve_on: where the problem is solved, ``"host"`` (default: compiled float64 numerics
            after one copy of the Gramian) or ``"device"`` (torch ops, no host read; see
            :data:`~lightning_mtl.strategies.SolveOn`).

    Example::

        >>> import torch
        >>> nash = NashMTL(max_norm=None)
        >>> nash.aggregate(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))  # α = (1/2, 2)
        tensor([1., 1.])
        >>> NashMTL().aggregate(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))  # clipped to norm 1
        tensor([0.7071, 0.7071])
    """

    state_fields = ("alpha", "solved_at")

    def __init__(
        self,
        max_norm: float | None = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
        tol: float = 1e-6,
        solve_on: SolveOn = "host",
    ) -> None:
        if max_norm is not None and not (math.isfinite(max_norm) and max_norm > 0):
            raise ValueError(f"max_norm must be a positive number or None; got {max_norm}.")
        if isinstance(update_weights_every, bool) or not (
            isinstance(update_weights_every, int) and update_weights_every >= 1
        ):
            raise ValueError(
                f"update_weights_every must be a positive integer; got {update_weights_every!r}."
            )
        if isinstance(optim_niter, bool) or not (isinstance(optim_niter, int) and optim_niter >= 1):
            raise ValueError(f"optim_niter must be a positive integer; got {optim_niter!r}.")
        if not (math.isfinite(tol) and tol > 0):
            raise ValueError(f"tol must be a positive number; got {tol}.")
        self.max_norm = None if max_norm is None else float(max_norm)
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter
        self.tol = float(tol)
        self.solve_on = checked_solve_on(solve_on)
        self.alpha: Tensor | None = None
        self.solved_at: int | None = None

    @override
    def weights(self, batch: GramianBatch) -> Tensor:
        gramian = batch.gramian
        alpha = self._previous_alpha(gramian)
        step = batch.progress.step
        if alpha is None or self._due(step):
            solution, solved = bargain(
                gramian, 1.0, alpha, self.optim_niter, self.tol, self.solve_on
            )
            fallback = alpha if alpha is not None else torch.ones_like(solution)
            alpha = finite_or(solution, fallback, solved)
            self.alpha, self.solved_at = alpha, step
        weights = clipped_update_weights(alpha, gramian, self.max_norm)
        return weights

    def _previous_alpha(self, gramian: Tensor) -> Tensor | None:
        """The last ``α`` on ``gramian``'s device, if it is for this many objectives."""
        if self.alpha is None or self.alpha.shape != gramian.shape[:1]:
            return None
        return self.alpha.to(device=gramian.device, dtype=torch.float64)

    def _due(self, step: int) -> bool:
        return self.solved_at is None or not 0 <= step - self.solved_at < self.update_weights_every
