"""The bargaining equation ``G w = w^(−p)`` of Nash-MTL (``p = 1``) and FairGrad (``p = 1/α``).

Both methods weigh the objectives by the positive solution of ``(G w)_i = w_i^(−p)``, where
``G`` is the Gramian of the objectives' gradients. That solution is the unique minimiser over
``w > 0`` of the strictly convex potential

    ``ψ(w) = ½ wᵀ G w − Σ_i h(w_i)``,  ``h(w) = log w`` (``p = 1``), ``w^(1−p) / (1 − p)`` (else),

whose gradient is ``G w − w^(−p)``. It exists exactly when some update strictly decreases every
objective (then ``ψ`` grows quadratically; otherwise, by Gordan's theorem, some ``w ≥ 0`` has
``Jᵀw = 0`` and ``ψ`` has no minimiser along it), the methods' standing assumption. We minimise
``ψ`` by Newton's method in float64 on the device:

* Newton's step solves ``(G + diag(p w^(−p−1))) Δ = −∇ψ``; we solve it in the variables
  ``w ∘ u`` with a diagonal equilibration, so that gradients of very different norms (``w_i``
  of very different sizes) do not make the system ill-conditioned.
* The step is the best, by ``ψ``, of the Newton steps of lengths ``τ = 1/(1 + λ)`` (``λ`` the
  Newton decrement) and ``τ = 1, ½, ¼, …`` that keep ``w > 0``, and of their multiplicative
  counterparts ``w ∘ exp(−τ u)`` (``w ∘ (1 − τ u)`` being the Newton step), which shrink a
  weight by orders of magnitude in one step where the solution needs it (small ``p``). Once
  ``λ ≤ ¼`` the full Newton step is taken. For ``p = 1``, ``ψ`` is self-concordant and the
  ``1/(1 + λ)`` step alone converges globally from any start (Nesterov, *Lectures on Convex
  Optimization*, §5.2), quadratically once ``λ`` is small; the other candidates extend that
  robustness to other ``p``.
* Newton's method is invariant under rescaling of the variables, and both starting points are
  chosen covariantly: the orthogonal-gradient solution ``w_i = G_ii^(−1/(1+p))`` and, when
  given, the previous step's solution, each rescaled to the best multiple ``t w`` (a closed
  form), whichever has the lower ``ψ``. So the iterates obey the methods' scaling laws up to
  rounding.
* The iteration count is fixed and there is no host synchronisation. Iterates stop changing
  once the relative residual ``max_i |w_i^p (G w)_i − 1|`` reaches float64 noise (1e-12); the
  solve counts as successful when it is at most ``tol``. For ``p = 1`` the scaled Newton
  matrix is at least the identity, so a residual ``r`` bounds the relative error of ``w`` by
  about ``‖r‖``.

An objective whose gradient is exactly zero can neither gain nor lose from any update, and no
positive ``w`` solves the equation with it; it is left out of the bargaining (its row and column
of ``G`` are replaced by those of the identity) and gets weight 0.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from lightning_mtl.strategies import host_solvers
from lightning_mtl.strategies.host_solvers import solve_on_host
from lightning_mtl.strategies.solvers import settled_on_host

# Newton step lengths τ tried besides 1/(1 + λ): 1, 1/2, ..., 2^-29.
_HALVINGS = 30
# Newton decrement below which the full step is taken (the quadratic-convergence region).
_FULL_STEP_DECREMENT = 0.25
# Relative residual at which iterates stop changing: float64 rounding noise.
_FROZEN = 1e-12


def bargain(
    gramian: Tensor,
    power: float,
    start: Tensor | None,
    iterations: int,
    tol: float,
    solve_on: str,
) -> tuple[Tensor, Tensor]:
    """:func:`solve_bargaining` on the host (:func:`~lightning_mtl.strategies.host_solvers.
    bargaining`, the same method in numpy, from one copy of the Gramian and the warm start) or on
    the device, as ``solve_on`` says.

    Example::

        >>> g = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
        >>> bargain(g, 1.0, None, 20, 1e-6, "host")[0]
        tensor([0.7071, 1.4142], dtype=torch.float64)
    """
    if solve_on != "host":
        return solve_bargaining(gramian, power, start=start, iterations=iterations, tol=tol)
    solve = functools.partial(_host_bargaining, power=power, iterations=iterations, tol=tol)
    columns = (start,) if start is not None else ()
    size = gramian.shape[0]
    result = solve_on_host(solve, gramian, columns=columns, shape=(size + 1,))
    return result[:size], result[size] > 0.5


def _host_bargaining(
    gramian: np.ndarray,
    start: np.ndarray | None = None,
    *,
    power: float,
    iterations: int,
    tol: float,
) -> np.ndarray:
    """The host solution followed by its ``solved`` flag (1 or 0), as one array."""
    solution, solved = host_solvers.bargaining(gramian, power, start, iterations, tol)
    return np.append(solution, float(solved))


def solve_bargaining(
    gramian: Tensor,
    power: float,
    start: Tensor | None = None,
    iterations: int = 20,
    tol: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """Solve ``(G w)_i = w_i^(−p)`` for ``w > 0``.

    Args:
        gramian: ``[T, T]`` Gramian ``G`` of the objectives' gradients (any float dtype).
        power: ``p > 0``.
        start: ``[T]`` an earlier solution to start from (warm start); ignored when ``None``.
        iterations: Newton iterations (fixed count).
        tol: the largest relative residual ``max_i |w_i^p (G w)_i − 1|`` accepted as a solution.

    Returns:
        ``[T]`` float64 weights (0 for objectives with a zero gradient) and a 0-d boolean that
        is true when they solve the equation to ``tol`` (false for non-finite input, or when no
        solution exists, e.g. at a Pareto-stationary point).

    Example::

        >>> w, solved = solve_bargaining(torch.tensor([[4.0, 0.0], [0.0, 1.0]]), power=1.0)
        >>> w, bool(solved)  # orthogonal gradients: w_i = 1 / ‖g_i‖
        (tensor([0.5000, 1.0000], dtype=torch.float64), True)
    """
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1]:
        raise ValueError(f"the Gramian must be [T, T]; got {tuple(gramian.shape)}.")
    if not power > 0:
        raise ValueError(f"power must be positive; got {power}.")
    if iterations < 0:
        raise ValueError(f"iterations must be non-negative; got {iterations}.")
    g, bargaining = _without_zero_gradients(gramian.double())
    equation = _Bargaining(g, power)
    weights = equation.starting_point(start)
    residual = equation.residual(weights)
    worst = torch.linalg.vector_norm(residual, torch.inf)
    done = worst <= _FROZEN
    # On an accelerator every kernel of this loop runs `iterations` times whatever the data, so
    # the body is kept to few kernels; the Newton step reuses the residual of the done check.
    for _ in range(iterations):
        stepped = equation.newton_step(weights, residual)
        # The step is taken when it is positive and finite, that is when max_i |log w_i| < ∞
        # (NaN compares false); booleans order False < True, so `>=` reads "done or not taken".
        # (torch.isfinite costs four kernels.)
        keep = done >= (torch.linalg.vector_norm(stepped.log(), torch.inf) < torch.inf)
        weights = torch.where(keep, weights, stepped)
        residual = equation.residual(weights)
        worst = torch.linalg.vector_norm(residual, torch.inf)
        done = done | (worst <= _FROZEN)
        if settled_on_host(done):
            break
    solved = (worst <= tol) & (weights > 0).all() & torch.isfinite(gramian).all()
    return weights.masked_fill(~bargaining, 0.0), solved


def _without_zero_gradients(g: Tensor) -> tuple[Tensor, Tensor]:
    """``G`` with the rows and columns of zero gradients replaced by the identity's, and the
    mask of the objectives that bargain. A NaN diagonal bargains, so NaN reaches the result."""
    bargaining = ~(g.diagonal() == 0)
    pair = bargaining[:, None] & bargaining[None, :]
    identity = torch.diag_embed((~bargaining).to(g.dtype))
    return torch.where(pair, g, identity), bargaining


class _Bargaining:
    """The potential ``ψ`` of a Gramian and a power, and Newton's method on it, with the
    constants of every iteration built once."""

    def __init__(self, g: Tensor, power: float) -> None:
        self.gramian, self.power = g, power
        # ψ(w) = −(1/κ) Σ_i (u_i − ½κ w_i (G w)_i): u = log w and κ = 1 for p = 1, else
        # u = w^κ and κ = 1 − p, so that ψ takes one fused product and one reduction.
        self.exponent = 1.0 if power == 1.0 else 1.0 - power
        self.reduction = torch.full_like(g[0], -1.0 / self.exponent)
        self.infinity = g.new_full((), torch.inf)
        self.minus_one = g.new_full((), -1.0)
        self.identity = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
        self.full_index = torch.ones((), dtype=torch.long, device=g.device)
        # −1/τ for the step lengths τ = 1/(1 + λ), 1, 1/2, ..., 2^-29, but for the λ that the
        # indicator `first` brings in.
        halvings = torch.arange(_HALVINGS, dtype=g.dtype, device=g.device)
        self.negated_inverse_lengths = torch.cat([-torch.ones_like(g[0, :1]), -(2.0**halvings)])
        self.first = torch.cat([torch.ones_like(g[0, :1]), torch.zeros_like(halvings)])

    def residual(self, weights: Tensor) -> Tensor:
        """``w^p ∘ (G w) − 1``."""
        scaled = weights if self.power == 1.0 else weights.pow(self.power)
        return torch.addcmul(self.minus_one, scaled, self.gramian @ weights)

    def potential(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        """``ψ`` along the last dimension, ``+inf`` where some weight is not positive, and
        whether every weight is positive."""
        positive = (weights > 0).all(-1)
        utility = torch.log(weights) if self.power == 1.0 else weights.pow(self.exponent)
        terms = torch.addcmul(utility, weights @ self.gramian, weights, value=-0.5 * self.exponent)
        return torch.where(positive, terms @ self.reduction, self.infinity), positive

    def scaled_to_best_multiple(self, weights: Tensor) -> Tensor:
        """``t w`` with ``t`` minimising ``ψ(t w)``: ``t^(1+p) = Σ w_i^(1−p) / wᵀ G w``."""
        curvature = (weights @ self.gramian @ weights).clamp_min(torch.finfo(weights.dtype).tiny)
        gain = weights.pow(1.0 - self.power).sum()
        return weights * (gain / curvature).pow(1.0 / (1.0 + self.power))

    def starting_point(self, start: Tensor | None) -> Tensor:
        g = self.gramian
        orthogonal = (
            g.diagonal().clamp_min(torch.finfo(g.dtype).tiny).pow(-1.0 / (1.0 + self.power))
        )
        candidate = self.scaled_to_best_multiple(orthogonal)
        if start is None or start.shape != orthogonal.shape:
            return candidate
        warm = start.to(device=g.device, dtype=g.dtype)
        warm = torch.where((warm > 0) & torch.isfinite(warm), warm, orthogonal)
        warm = self.scaled_to_best_multiple(warm)
        better = self.potential(warm)[0] < self.potential(candidate)[0]
        return torch.where(better, warm, candidate)

    def newton_step(self, weights: Tensor, residual: Tensor) -> Tensor:
        """One Newton step on ``ψ`` from ``weights``, whose :meth:`residual` is ``residual``,
        with the step length chosen as in the module docstring."""
        # In the variables w ∘ u: gradient w ∘ (G w) − w^(1−p) and Hessian
        # diag(w) G diag(w) + diag(p w^(1−p)).
        if self.power == 1.0:
            gradient = residual
            hessian = torch.addcmul(self.identity, torch.outer(weights, weights), self.gramian)
        else:
            slope = weights.pow(1.0 - self.power)
            gradient = slope * residual
            hessian = torch.outer(weights, weights) * self.gramian
            hessian.diagonal().add_(slope, alpha=self.power)
        # Equilibrated as D H D Δ' = D ∇, Δ = D Δ', with D = diag(H)^(−1/2); scaling the
        # columns does not change Gaussian elimination with partial pivoting (its pivots and
        # multipliers), so scaling the rows alone gives the same step, with fewer kernels.
        equilibrate = hessian.diagonal().rsqrt()
        solution, _ = torch.linalg.solve_ex(
            equilibrate[:, None] * hessian, (equilibrate * gradient)[:, None]
        )
        relative = solution[:, 0]  # the Newton step is −w ∘ relative
        decrement = torch.dot(gradient, relative).clamp_min(0).sqrt()
        negated_lengths = torch.addcmul(
            self.negated_inverse_lengths, self.first, decrement, value=-1.0
        ).reciprocal()
        exponents = torch.outer(negated_lengths, relative)
        linear = torch.addcmul(weights, weights, exponents)
        candidates = torch.cat([linear, torch.exp(exponents) * weights])
        value, positive = self.potential(candidates)
        take_full = (decrement <= _FULL_STEP_DECREMENT) & positive[1]
        # index_select, not indexing with a tensor, which would read the index on the host.
        best = torch.where(take_full, self.full_index, torch.argmin(value))
        return candidates.index_select(0, best.reshape(1))[0]


def clipped_update_weights(weights: Tensor, gramian: Tensor, max_norm: float | None) -> Tensor:
    """``weights`` scaled so that the update ``Σ_i w_i g_i`` has norm at most ``max_norm``
    (no scaling when ``max_norm`` is ``None``), in the Gramian's dtype.

    A non-finite Gramian gives NaN weights, so that an overflow stays visible to the loss scaler
    even where the solver fell back to finite weights.

    Example::

        >>> clipped_update_weights(torch.ones(2, dtype=torch.float64), torch.eye(2) * 8.0, 2.0)
        tensor([0.5000, 0.5000])
    """
    g = gramian.double()
    if max_norm is not None:
        norm = (weights @ g @ weights).clamp_min(0.0).sqrt()
        weights = weights * (max_norm / norm).clamp(max=1.0)
    weights = torch.where(torch.isfinite(g).all(), weights, torch.full_like(weights, torch.nan))
    return weights.to(gramian.dtype)
