"""EPO: Exact Pareto Optimal search along a preference ray, one linear program per step."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies._gramian_tools import (
    Preference,
    PreferenceSpec,
    SolveOn,
    checked_solve_on,
    finite_or,
)
from lightning_mtl.strategies.base import GramianBatch, GramianWeighting
from lightning_mtl.strategies.host_solvers import epo_weights, solve_on_host
from lightning_mtl.strategies.solvers import settled_on_host

# Constraint rows below this fraction of the largest coefficient are treated as zero rows.
_NEGLIGIBLE = 1e-12
# Relative ridge on the diagonal of the normal equations.
_RIDGE = 1e-13
# Fraction of the distance to the boundary of the positive orthant that a step may cover.
_TO_BOUNDARY = 0.99


class EPO(GramianWeighting):
    """Exact Pareto Optimal search (Mahapatra & Rajan, "Multi-Task Learning with User
    Preferences: Gradient Descent with Controlled Ascent in Pareto Optimization", ICML 2020).

    EPO steers the losses ``l`` to the preference ray, where ``r_1 l_1 = … = r_T l_T``, and then
    descends along it. With ``l̂ = r∘l / Σ r∘l``, the non-uniformity ``μ = Σ_i l̂_i log(T l̂_i)``
    (the KL divergence from uniform) measures the distance to the ray, and
    ``a = r ∘ (log(T l̂) − μ)`` is proportional to its gradient with respect to ``l``. Each step
    solves a linear program over weights ``β`` on the simplex, with ``C = G`` the Gramian:

    * balance mode (``μ > eps``): maximise ``βᵀ C a``, the first-order decrease of ``μ``, subject
      to ``(C β)_j ≥ (C a)_j`` for the objectives with ``(C a)_j ≤ 0`` and ``(C β)_j ≥ 0`` for
      the objectives of largest ``r_j l_j`` (with ``(C β)_j ≥ 0`` for all ``j`` when no
      ``(C a)_j`` is positive);
    * descent mode (``μ ≤ eps``): maximise ``Σ_j (C β)_j`` subject to ``C β ≥ 0`` (every loss
      decreases to first order) and ``βᵀ C a ≥ min(max_j (C a)_j, 0)``.

    The update is ``T Σ_i β_i ∇l_i``. The rules for the constraint sets, ``eps = 1e-4``, the
    factor ``T`` and the fallback ``β = r / Σ r`` when the program has no solution are those of
    the authors' code (``epo_lp.py``, ``epo_train.py``).

    Choices made here:

    * The authors solve the program with GLPK on the host. We solve it (on the host by default, or
      on the device) with Mehrotra's predictor–corrector interior-point method (Nocedal & Wright,
      *Numerical Optimization*, algorithm 14.3) in float64 with a fixed number of iterations, after
      equilibrating the constraint rows and the objective (which leaves the program unchanged). An
      infeasible program (the descent constraints can contradict each other) shows in the residuals
      after the last iteration; then the fallback applies, as it does if the method has not
      converged (the default 40 iterations are twice what the test problems need). Where several
      ``β`` are optimal, the interior-point method ends inside the optimal face, near its analytic
      centre, where GLPK returns a vertex: on the ray with orthogonal gradients of equal norm, for
      instance, every ``β`` is optimal and we return the uniform one, GLPK a single objective. Both
      are solutions of the paper's program.
    * The mode is chosen with ``torch.where`` (both programs are set up, one is solved).
    * EPO needs positive losses (the authors' code raises otherwise); a loss ``≤ 0`` counts as
      0, so ``l̂_i = 0`` (the objective is as far ahead as can be), with ``0 log 0 = 0``; when
      every loss is 0 the losses are on the ray.

    Args:
        preference: ``r_t > 0``, by objective name (naming every objective) or in row order;
            ``None`` for equal ``r_t`` (all losses equal on the ray). Only the ray matters, so
            ``r`` and ``2 r`` are the same preference.
        eps: the non-uniformity below which EPO descends instead of balancing.
        iterations: interior-point iterations per step.
        tol: the largest relative primal and dual residual and duality gap accepted as a
            solution of the program.
        solve_on: where the problem is solved, ``"host"`` (default: compiled float64 numerics
            after one copy of the Gramian) or ``"device"`` (torch ops, no host read; see
            :data:`~lightning_mtl.strategies.SolveOn`).

    Example::

        >>> import torch
        >>> epo = EPO()
        >>> gradients = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> epo.aggregate(gradients, losses=torch.tensor([2.0, 1.0])).round(decimals=6)  # balance
        tensor([2., 0.])
        >>> epo.aggregate(gradients, losses=torch.tensor([1.0, 1.0]))  # on the ray: descend
        tensor([1., 1.])
    """

    reads_loss_values = True

    def __init__(
        self,
        preference: PreferenceSpec = None,
        eps: float = 1e-4,
        iterations: int = 40,
        tol: float = 1e-8,
        solve_on: SolveOn = "host",
    ) -> None:
        self.preference = Preference(preference, "EPO")
        self.solve_on = checked_solve_on(solve_on)
        if 0.0 in _values(self.preference):
            raise ValueError(
                f"EPO preference weights must be positive (a zero keeps the losses off every "
                f"ray); got {preference}."
            )
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a non-negative number; got {eps}.")
        if isinstance(iterations, bool) or not (isinstance(iterations, int) and iterations >= 1):
            raise ValueError(f"iterations must be a positive integer; got {iterations!r}.")
        if not (math.isfinite(tol) and tol > 0):
            raise ValueError(f"tol must be a positive number; got {tol}.")
        self.eps = float(eps)
        self.iterations = iterations
        self.tol = float(tol)
        self.non_uniformity: Tensor | None = None

    @override
    def setup(self, names: Sequence[str]) -> None:
        self.preference.check(names)

    @override
    def weights(self, batch: GramianBatch) -> Tensor:
        losses = batch.losses
        gramian = batch.gramian
        preference = self.preference.vector(batch.names, losses).double()
        if self.solve_on == "host":
            solve = functools.partial(
                _host_epo, eps=self.eps, iterations=self.iterations, tol=self.tol
            )
            size = len(batch.names)
            result = solve_on_host(solve, gramian, columns=(losses, preference), shape=(size + 1,))
            self.non_uniformity = result[size]
            return result[:size].to(gramian.dtype)
        g = gramian.double()
        non_uniformity, program = _programs(losses.double(), preference, g, self.eps)
        beta, solved = _maximise_on_simplex(program, self.iterations, self.tol)
        beta = finite_or(beta, preference / preference.sum(), solved)
        weights = len(batch.names) * beta
        finite = torch.isfinite(g).all() & torch.isfinite(losses).all()
        weights = torch.where(finite, weights, torch.full_like(weights, torch.nan))
        self.non_uniformity = non_uniformity
        return weights.to(gramian.dtype)

    @override
    def log_values(self) -> dict[str, Tensor | float]:
        values = super().log_values()
        if self.non_uniformity is not None:
            values["non_uniformity"] = self.non_uniformity
        return values


def _host_epo(
    gramian: np.ndarray,
    losses: np.ndarray,
    preference: np.ndarray,
    *,
    eps: float,
    iterations: int,
    tol: float,
) -> np.ndarray:
    """EPO's weights followed by the non-uniformity ``μ``, as one array, on the host."""
    weights, non_uniformity = epo_weights(gramian, losses, preference, eps, iterations, tol)
    return np.append(weights, non_uniformity)


def _values(preference: Preference) -> tuple[float, ...]:
    values = preference.values
    if isinstance(values, dict):
        return tuple(values.values())
    return values if values is not None else ()


class _LinearProgram(NamedTuple):
    """Maximise ``objectiveᵀ β`` over the simplex subject to ``rows[k] β ≥ bounds[k]`` for the
    ``active`` rows ``k``."""

    objective: Tensor
    rows: Tensor
    bounds: Tensor
    active: Tensor


def _programs(
    losses: Tensor, preference: Tensor, gramian: Tensor, eps: float
) -> tuple[Tensor, _LinearProgram]:
    """The non-uniformity ``μ`` and the program of this step's mode (see :class:`EPO`)."""
    count = losses.shape[0]
    weighted = (preference * losses).clamp_min(0.0)
    total = weighted.sum()
    # All losses at 0 are on every ray: uniform shares.
    shares = torch.where(total > 0, weighted / total, 1.0 / count)
    shares = shares.clamp_min(torch.finfo(losses.dtype).tiny)
    logs = torch.log(count * shares)
    non_uniformity = (shares * logs).sum()
    adjustment = preference * (logs - non_uniformity)
    gains = gramian @ adjustment  # (C a)_j: how fast loss j falls along the balancing direction
    rising = gains > 0
    leading = weighted == weighted.max()
    zero = torch.zeros_like(gains)
    balance_bounds = torch.where(rising.any(), torch.where(leading, zero, gains), zero)
    balance_active = ~rising.any() | ~rising | leading
    balance = _LinearProgram(
        objective=gains,
        rows=torch.cat([gramian, zero[None]]),
        bounds=torch.cat([balance_bounds, zero[:1]]),
        active=torch.cat([balance_active, balance_active.new_zeros(1)]),
    )
    descent = _LinearProgram(
        objective=gramian.sum(0),
        rows=torch.cat([gramian, gains[None]]),
        bounds=torch.cat([zero, gains.max().clamp(max=0.0)[None]]),
        active=torch.ones(count + 1, dtype=torch.bool, device=gramian.device),
    )
    balancing = non_uniformity > eps
    program = _LinearProgram(
        *(torch.where(balancing, b, d) for b, d in zip(balance, descent, strict=True))
    )
    return non_uniformity, program


def _maximise_on_simplex(
    program: _LinearProgram, iterations: int, tol: float
) -> tuple[Tensor, Tensor]:
    """Solve ``program`` by Mehrotra's predictor–corrector method on its standard form.

    With a slack ``s_k`` per row, the variables ``z = (β, s) ≥ 0`` satisfy ``1ᵀβ = 1`` and
    ``rows β − s = bounds``; an inactive row becomes ``0 β − s_k = −1`` so that shapes stay
    fixed. Returns ``β`` and whether the final iterate is feasible and optimal to ``tol``.
    """
    count = program.objective.shape[0]
    tiny = torch.finfo(program.objective.dtype).tiny
    # Every bound is ≤ 0, so a row of (rounding noise about) zeros always holds: that of a zero
    # gradient, or the C a row of descent mode with the losses on the ray. Equilibrating it
    # would turn the noise into a constraint.
    row_scale = program.rows.abs().amax(-1)
    active = program.active & (row_scale > _NEGLIGIBLE * row_scale.amax())
    row_scale = row_scale.clamp_min(tiny)
    rows = (program.rows / row_scale[:, None]).masked_fill(~active[:, None], 0.0)
    bounds = (program.bounds / row_scale).masked_fill(~active, -1.0)
    objective = program.objective / program.objective.abs().amax().clamp_min(tiny)
    form = _StandardForm(rows, bounds, objective, tol)

    state = form.start
    residuals, products, done = form.residuals(state)
    for _ in range(iterations):
        stepped = form.mehrotra_step(state, residuals, products)
        # The step is taken when finite (NaN compares false); booleans order False < True, so
        # `>=` reads "done or not taken". (torch.isfinite costs four kernels.)
        keep = done >= (torch.linalg.vector_norm(stepped, torch.inf) < torch.inf)
        state = torch.where(keep, state, stepped)
        # Iterates stop at tol: closer to the boundary the normal equations lose accuracy.
        residuals, products, converged = form.residuals(state)
        done = done | converged
        if settled_on_host(done):
            break
    beta = state[:count].clamp_min(0.0)
    return beta / beta.sum().clamp_min(tiny), done


class _StandardForm:
    """Minimise ``costᵀ z`` subject to ``M z = target``, ``z ≥ 0``, by Mehrotra's method.

    An iterate is one vector ``(z, ζ, y)``: the point, its reduced costs and the multipliers.
    On an accelerator every kernel of an iteration runs the full iteration count whatever the
    data, so an iteration is kept to few kernels: the constants are built once, the residuals
    of the convergence test are those the next step starts from, and the right-hand sides of
    the normal equations are simplified with ``M z − target`` eliminated.
    """

    def __init__(self, rows: Tensor, bounds: Tensor, objective: Tensor, tol: float) -> None:
        count, constraints = objective.shape[0], rows.shape[0]
        size, equations = count + constraints, constraints + 1
        self.size, self.equations, self.tol = size, equations, tol
        like: dict[str, Any] = {"dtype": rows.dtype, "device": rows.device}
        ones, slacks = torch.ones_like(objective), torch.zeros_like(bounds)
        self.matrix = torch.cat(
            [torch.cat([ones, slacks])[None], torch.cat([rows, -torch.eye(constraints, **like)], 1)]
        )
        self.transposed = self.matrix.T
        self.target = torch.cat([ones[:1], bounds])
        cost = torch.cat([-objective, slacks])
        point = torch.cat([torch.full_like(objective, 1.0 / count), torch.ones_like(slacks)])
        self.start = torch.cat([point, torch.ones_like(point), torch.zeros_like(self.target)])
        # (M z − target, Mᵀ y + ζ − cost, costᵀ z) = system (z, ζ, y) − offset.
        zeros = self.matrix.new_zeros
        self.system = torch.cat(
            [
                torch.cat([self.matrix, zeros(equations, size + equations)], 1),
                torch.cat([zeros(size, size), torch.eye(size, **like), self.transposed], 1),
                torch.cat([cost, zeros(size + equations)])[None],
            ]
        )
        self.offset = torch.cat([self.target, cost, zeros(1)])
        # The primal and dual residuals count relative to 1 + the largest target and cost entry.
        self.residual_scale = torch.cat(
            [
                (1.0 + self.target.abs().amax()).reciprocal().expand(equations),
                (1.0 + cost.abs().amax()).reciprocal().expand(size),
            ]
        )
        # The step length of each entry: the primal one for z, the dual one for ζ and y.
        self.step_of_entry = (torch.arange(2 * size + equations, device=rows.device) >= size).long()
        self.affine_fraction = objective.new_full((), -1.0)
        self.to_boundary = objective.new_full((), -_TO_BOUNDARY)

    def residuals(self, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The residuals ``(M z − target, Mᵀ y + ζ − cost, costᵀ z)``, ``zᵀ ζ``, and whether
        the relative primal and dual residuals and duality gap are at most ``tol``."""
        residuals = torch.addmv(self.offset, self.system, state, beta=-1)
        products = torch.dot(state[: self.size], state[self.size : 2 * self.size])
        primal_dual = torch.linalg.vector_norm(residuals[:-1] * self.residual_scale, torch.inf)
        # zᵀζ / (1 + |costᵀ z|) ≤ tol, without the division.
        gap = torch.sub(products, residuals[-1].abs(), alpha=self.tol)
        return residuals, products, torch.maximum(primal_dual, gap) <= self.tol

    def mehrotra_step(self, state: Tensor, residuals: Tensor, products: Tensor) -> Tensor:
        """The next iterate from ``state``, whose :meth:`residuals` are ``residuals`` and
        ``products``."""
        size, matrix, transposed = self.size, self.matrix, self.transposed
        pair = state[: 2 * size].view(2, size)
        point, reduced = pair.unbind()
        dual_residual = residuals[self.equations : -1]
        ratio = point / reduced
        scaled = matrix * ratio
        normal = scaled @ transposed
        # Near the solution ratio spans many orders of magnitude and, with nearly collinear
        # gradients, the normal matrix is nearly singular; a relative ridge keeps the solve
        # accurate.
        normal.diagonal().mul_(1.0 + _RIDGE)
        factors, pivots, _ = torch.linalg.lu_factor_ex(normal)

        # Newton's equations with the complementarity row ζ ∘ Δz + z ∘ Δζ = −z ∘ ζ − w reduce,
        # with D = diag(z/ζ), to M D Mᵀ Δy = target − M D r_d + M (w/ζ), then
        # Δζ = −r_d − Mᵀ Δy and Δz = −z − w/ζ − D Δζ; `shift` is −z − w/ζ.
        def direction(rhs: Tensor, shift: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            d_multipliers = torch.linalg.lu_solve(factors, pivots, rhs[:, None])[:, 0]
            d_reduced = torch.addmv(dual_residual, transposed, d_multipliers, beta=-1, alpha=-1)
            d_point = torch.addcmul(shift, ratio, d_reduced, value=-1.0)
            return d_point, d_reduced, d_multipliers

        affine_rhs = torch.addmv(self.target, scaled, dual_residual, alpha=-1)  # w = 0
        negated_point = -point
        d_point, d_reduced, _ = direction(affine_rhs, negated_point)
        affine = torch.cat([d_point, d_reduced]).view(2, size)
        steps = _longest_steps(pair, affine, self.affine_fraction)
        affine_products = torch.dot(*torch.addcmul(pair, steps[:, None], affine).unbind())
        ratio_of_gaps = affine_products / products.clamp_min(torch.finfo(products.dtype).tiny)
        # Corrector: w = Δz_aff ∘ Δζ_aff − σ μ, centring σ = (affine gap / gap)³, μ = zᵀζ / n.
        centring = ratio_of_gaps.pow(3)
        w = torch.addcmul(d_point * d_reduced, centring, products, value=-1.0 / size)
        correction = w / reduced
        corrector = torch.cat(
            direction(torch.addmv(affine_rhs, matrix, correction), negated_point - correction)
        )
        steps = _longest_steps(pair, corrector[: 2 * size].view(2, size), self.to_boundary)
        return torch.addcmul(state, steps.index_select(0, self.step_of_entry), corrector)


def _longest_steps(values: Tensor, change: Tensor, negated_fraction: Tensor) -> Tensor:
    """Per row of positive ``values``, ``min(1, fraction · the largest t with values + t change
    ≥ 0)``, that is ``fraction / max(fraction, max_i −change_i / values_i)``."""
    lowest = (change / values).amin(-1)
    return torch.div(negated_fraction, lowest.clamp_max(negated_fraction))
