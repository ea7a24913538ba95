"""CAGrad: the best worst-case improvement within a ball around the average gradient."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

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
    row_norms,
    solvable,
)
from lightning_mtl.strategies.base import GramianBatch, GramianWeighting
from lightning_mtl.strategies.code_paths import host_shortcuts
from lightning_mtl.strategies.host_solvers import (
    conflict_averse_multipliers as host_multipliers,
)
from lightning_mtl.strategies.host_solvers import solve_on_host
from lightning_mtl.strategies.solvers import solve_nonnegative_qp

# The search for the best worst-case level z narrows its bracket 65536 times, then interpolates
# exactly inside it. On the CPU it tries 16 levels per round for 4 rounds (16⁴): each level is a
# QP, and the solver stops once all have converged. On an accelerator each round costs the
# solver's full, fixed iteration count in small kernels whatever the batch, so 2 rounds of 256
# levels (256²) take half the launches of the CPU plan (2 QP runs, the hull's in the first).
_CPU_SEARCH = (4, 16)
_ACCELERATOR_SEARCH = (2, 256)
# When the min-norm point of the hull is this small (squared, relative to max ‖g_t‖²), the hull is
# taken to hold 0: no level above 0 is reachable at a resolution the solver can certify.
_STATIONARY = 1e-10


class CAGrad(GramianWeighting):
    """Conflict-averse gradient descent: the update that most improves the worst objective among
    those within ``c ‖g0‖`` of the average gradient ``g0``.

    Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021. The update solves ``max_d min_t ⟨g_t, d⟩`` subject to ``‖d − g0‖ ≤ c ‖g0‖``;
    the paper solves its dual ``min_{w ∈ Δ} g_wᵀ g0 + c ‖g0‖ ‖g_w‖`` and sets
    ``d = g0 + c ‖g0‖ g_w / ‖g_w‖``. Any such ``d`` has ``⟨g0, d⟩ ≥ (1 − c) ‖g0‖²``, so for
    ``c < 1`` the average loss decreases and training converges to a stationary point of it;
    ``c = 0`` is gradient descent on the average, larger ``c`` favours the worst-off objective.

    The dual is not a quadratic program, and first-order methods on it are slow on
    ill-conditioned Gramians. We solve the primal instead, as a monotone search over the
    worst-case level ``z`` (see :func:`conflict_averse_multipliers`): the distance from ``g0`` to
    ``{d : J d ≥ z}`` grows with ``z``, and the nearest point is ``g0 + Jᵀλ`` with ``λ ≥ 0``
    the solution of a non-negative QP on the Gramian. Each of 4 rounds solves 16 levels in one
    batched call of the shared solver and keeps the bracket where the distance crosses
    ``c ‖g0‖``; ``λ`` is affine in ``z`` within an active set, so interpolating it across the
    final bracket to distance exactly ``c ‖g0‖`` gives the optimum (to the bracket's width, 65536
    times narrower than the first, should the active set change inside it). One more QP, MGDA's,
    bounds the search. The result is the paper's update (``w ∝ λ``) without its ``1e-8`` guards.
    Where the optimum is not unique, because the hull of the gradients holds 0 (an objective with
    a zero gradient, say), the dual formula divides zero by zero; we return the optimal update
    nearest ``g0``. The hull is taken to hold 0 when its min-norm point is below ``1e-5`` of the
    largest gradient norm, the resolution at which the solver can tell.

    Defaults follow the authors' code: ``c = 0.5`` and ``rescale = 1``, which divides the update
    by ``1 + c²`` (``rescale = 2`` divides by ``1 + c``, ``rescale = 0`` not at all). Their code
    also multiplies the update by ``T`` "to match the sum loss"; we keep the scale of the mean,
    like the other strategies here.

    ``preference`` replaces the mean by a weighted sum ``g0 = Σ_t b_t g_t`` (for example class
    weights ``b_c ∝ log(n_max / n_c + 0.01)``), used as given; by default ``b_t = 1/T``.

    Should the search fail (only a non-finite or overflowing Gramian makes it), the update falls
    back to ``g0`` (rescaled).

    Args:
        c: radius of the ball around ``g0``, relative to ``‖g0‖``; ``c ≥ 0``.
        rescale: 0, 1 or 2, as above.
        preference: weights ``b`` of ``g0``, by objective name or in row order.
        solve_on: where the problem is solved, ``"host"`` (default: compiled float64 numerics
            after one copy of the Gramian) or ``"device"`` (torch ops, no host read; see
            :data:`~lightning_mtl.strategies.SolveOn`).

    Example::

        >>> import torch
        >>> CAGrad(c=0.5, rescale=0).aggregate(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
        tensor([1.2906, 1.5000])
    """

    def __init__(
        self,
        c: float = 0.5,
        rescale: Literal[0, 1, 2] = 1,
        preference: PreferenceSpec = None,
        solve_on: SolveOn = "host",
    ) -> None:
        if not (c >= 0 and c < float("inf")):
            raise ValueError(f"c must be finite and >= 0; got {c}.")
        if rescale not in (0, 1, 2):
            raise ValueError(f"rescale must be 0, 1 or 2; got {rescale!r}.")
        self.c = float(c)
        self.rescale = rescale
        self.preference = Preference(preference, "CAGrad")
        self.divisor = (1.0, 1.0 + self.c**2, 1.0 + self.c)[rescale]
        self.solve_on = checked_solve_on(solve_on)

    @override
    def setup(self, names: Sequence[str]) -> None:
        self.preference.check(names)

    @override
    def weights(self, batch: GramianBatch) -> Tensor:
        preference = self.preference.vector(batch.names, batch.gramian).double()
        fallback = preference / self.divisor
        if self.solve_on == "host":
            solve = functools.partial(host_conflict_averse_weights, c=self.c, average=False)
            weights = solve_on_host(solve, batch.gramian, columns=(preference,)) / self.divisor
            return finite_or(weights, fallback).to(batch.gramian.dtype)
        gramian, finite = solvable(batch.gramian.double())
        radius = self.c * (preference @ gramian @ preference).clamp_min(0.0).sqrt()
        multipliers = conflict_averse_multipliers(gramian, preference, radius)
        weights = (preference + multipliers) / self.divisor
        return finite_or(weights, fallback, finite).to(batch.gramian.dtype)


def host_conflict_averse_weights(
    gramian: np.ndarray, preference: np.ndarray, *, c: float, average: bool
) -> np.ndarray:
    """``b + λ`` on the host, with ``λ`` the conflict-averse multipliers for the radius
    ``c ‖g0‖``: ``g0 = Jᵀb`` (CAGrad), or the plain mean of the gradients with ``average``
    (PLOT, where ``b`` steers only the correction). ``b`` sums to 1 for PLOT.

    Example::

        >>> host_conflict_averse_weights(np.eye(2), np.full(2, 0.5), c=0.0, average=False)
        array([0.5, 0.5])
    """
    centre = np.full(len(preference), 1.0 / len(preference)) if average else preference
    radius = c * math.sqrt(max(float(centre @ gramian @ centre), 0.0))
    return centre + host_multipliers(gramian, preference, radius)


def conflict_averse_multipliers(gramian: Tensor, preference: Tensor, radius: Tensor) -> Tensor:
    """``λ ≥ 0`` such that ``d = Jᵀ(b + λ)`` maximises ``min_t ⟨g_t, d⟩`` over
    ``‖d − Jᵀb‖ ≤ radius`` (the maximiser nearest ``Jᵀb`` if several), from ``G = J Jᵀ`` alone.

    For a level ``z``, ``λ(z) = argmin_{λ ≥ 0} ½ λᵀGλ + (Gb − z)ᵀλ`` gives the point of
    ``{d : J d ≥ z}`` nearest ``g0 = Jᵀb``, at distance ``√(λᵀGλ)``, non-decreasing in ``z``.
    The optimum is at the largest ``z`` whose distance is at most ``radius``. It is at least
    ``min_t (Gb)_t`` (where ``λ = 0``), at most ``min_t (Gb)_t + radius ‖g_t‖`` (no ``d`` in the
    ball does better on objective ``t``) and at most ``(‖g0‖ + radius) ‖x*‖`` with ``x*`` the
    min-norm point of the hull (every ``d`` in the ball is that short, and no ``d`` that short does
    better on all objectives). Above the last bound a level's QP may have no bounded solution
    (when the hull holds 0), so levels above it count as outside the radius whatever their
    multipliers; it is 0 when ``‖x*‖² ≤ 1e-10 max_t ‖g_t‖²``.

    Example::

        >>> g = torch.tensor([[1.0, -1.0], [-1.0, 4.0]], dtype=torch.float64)
        >>> b = torch.tensor([0.5, 0.5], dtype=torch.float64)
        >>> conflict_averse_multipliers(g, b, torch.tensor(0.0, dtype=torch.float64))
        tensor([0., 0.], dtype=torch.float64)
    """
    toward = gramian @ preference
    low, high, high_tried = _bracket(gramian, preference, toward, radius)
    return _to_radius(gramian, low, high, high_tried, radius)


def _bracket(
    gramian: Tensor, preference: Tensor, toward: Tensor, radius: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Multipliers at the ends of the final bracket of levels, and whether the upper end was
    ever solved (else the optimum is at the top of the search range).

    The min-norm point, which caps the reachable levels, is solved in the first round's batch
    (as the equivalent non-negative QP of :func:`_min_norm_problem`): on an accelerator a QP run
    costs the same launches whatever its batch, so this saves a whole run."""
    size = toward.shape[-1]
    rounds, points = search_plan(toward)
    lower = toward.min()
    upper = torch.maximum((toward + radius * row_norms(gramian)).min(), lower)
    low = torch.zeros_like(toward)
    high = torch.zeros_like(toward)
    high_tried = torch.zeros((), dtype=torch.bool, device=toward.device)
    steps = torch.arange(1, points + 1, dtype=toward.dtype, device=toward.device)
    fractions = steps / points
    stacked = gramian.expand(points, size, size)
    tried = torch.ones(points, dtype=torch.bool, device=toward.device)
    hull_matrix, hull_linear = _min_norm_problem(gramian)
    reach = upper
    for round_index in range(rounds):
        levels = lower + (upper - lower) * fractions
        if round_index == 0:
            solutions = solve_nonnegative_qp(
                torch.cat([hull_matrix[None], stacked]),
                torch.cat([hull_linear[None], toward - levels[:, None]]),
            )
            reach = _reachable_level(gramian, preference, toward, radius, solutions[0])
            multipliers = solutions[1:]
        else:
            multipliers = solve_nonnegative_qp(stacked, toward - levels[:, None])
        # A level above the reachable ones has no bounded QP; its multipliers mean nothing.
        within = (levels <= reach) & ((multipliers @ gramian * multipliers).sum(-1) <= radius**2)
        # Levels are ordered, so the leading run of levels within the radius ends at the crossing.
        crossing = within.to(torch.int64).cumprod(0).sum()
        lower = _pick(torch.cat([lower[None], levels]), crossing)
        low = _pick(torch.cat([low[None], multipliers]), crossing)
        upper = _pick(torch.cat([levels, upper[None]]), crossing)
        high = _pick(torch.cat([multipliers, high[None]]), crossing)
        high_tried = _pick(torch.cat([tried, high_tried[None]]), crossing)
        capped = upper > reach
        upper = torch.where(capped, torch.maximum(reach, lower), upper)
        high_tried = high_tried & ~capped
    return low, high, high_tried


def _min_norm_problem(gramian: Tensor) -> tuple[Tensor, Tensor]:
    """``(G/s + 11ᵀ, −1)``: the non-negative QP whose solution ``λ`` gives the min-norm point
    of the hull as ``λ / Σλ`` (its KKT conditions are the simplex QP's, scaled by ``Σλ``; the
    ``11ᵀ`` term keeps it bounded when the hull holds 0). ``s = max_t ‖g_t‖²`` keeps the two
    terms comparable."""
    scale = gramian.diagonal().amax().clamp_min(torch.finfo(gramian.dtype).tiny)
    return gramian / scale + 1.0, -torch.ones_like(gramian[0])


def _reachable_level(
    gramian: Tensor, preference: Tensor, toward: Tensor, radius: Tensor, lifted: Tensor
) -> Tensor:
    """``(‖g0‖ + radius) ‖x*‖`` (see :func:`conflict_averse_multipliers`), 0 when ``x*`` is
    stationary, from ``lifted``, the solution of :func:`_min_norm_problem`."""
    hull = lifted / lifted.sum().clamp_min(torch.finfo(lifted.dtype).tiny)
    squared_min_norm = (hull @ gramian @ hull).clamp_min(0.0)
    stationary = squared_min_norm <= _STATIONARY * gramian.diagonal().amax()
    min_norm = torch.where(stationary, 0.0, squared_min_norm.sqrt())
    longest = (preference @ toward).clamp_min(0.0).sqrt() + radius
    return longest * min_norm


def search_plan(toward: Tensor) -> tuple[int, int]:
    """``(rounds, levels per round)`` of the level search for a problem held like ``toward``
    (see ``_CPU_SEARCH``).

    Example::

        >>> search_plan(torch.zeros(3))
        (4, 16)
    """
    return _CPU_SEARCH if host_shortcuts(toward) else _ACCELERATOR_SEARCH


def _pick(stacked: Tensor, index: Tensor) -> Tensor:
    """``stacked[index]`` for a 0-d device index, by a kernel rather than a host read."""
    return stacked.index_select(0, index.reshape(1)).squeeze(0)


def _to_radius(
    gramian: Tensor, low: Tensor, high: Tensor, high_tried: Tensor, radius: Tensor
) -> Tensor:
    """``low + t (high − low)`` with ``t ∈ [0, 1]`` at distance ``radius``: the distance squared
    is a convex quadratic in ``t``, at most ``radius²`` at 0 and above it at 1. When no level
    beyond the bracket's lower end was ever outside the radius, the lower end is the answer."""
    step = high - low
    curvature = step @ gramian @ step
    slope = low @ gramian @ step
    room = (radius**2 - low @ gramian @ low).clamp_min(0.0)
    # The root of curvature·t² + 2·slope·t = room, written without cancellation.
    denominator = slope + (slope**2 + curvature * room).clamp_min(0.0).sqrt()
    usable = high_tried & (denominator > 0)
    fraction = torch.where(usable, room / torch.where(usable, denominator, 1.0), 0.0)
    return low + fraction.clamp(0.0, 1.0) * step
