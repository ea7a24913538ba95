"""Exact solvers of the Gramian strategies' T × T problems, in float64 numpy on the host.

A Gramian-based strategy (MGDA, UPGrad, CAGrad, PLOT, Nash-MTL, FairGrad, EPO, IMTL-G,
Aligned-MTL) turns the ``[T, T]`` Gramian ``G = J Jᵀ`` into ``[T]`` weights by a small
optimisation problem. Solved in torch ops on the device, it costs hundreds of tiny kernels; here
it is solved by compiled numerics (LAPACK through numpy and scipy, and scipy's Lawson–Hanson
NNLS) after one device→host copy of the Gramian (:func:`solve_on_host`), and the weights go back
as one tensor. The functions take and return numpy arrays, in float64, and need finite input.

The quadratic programs share one exact core, Lawson & Hanson's reduction of a least-distance
program to non-negative least squares (*Solving Least Squares Problems*, 1974, ch. 23): with a
factor ``R`` of the Gramian (``RᵀR = G``, :func:`gramian_factor`) the point ``y`` of least norm
with ``Rᵀy ≥ h`` is ``R u / σ``, where ``u`` solves the NNLS problem
``min_{u ≥ 0} ‖[R; hᵀ] u − e‖`` (``e`` the last unit vector) and ``σ = ‖[R; hᵀ] u − e‖²``
(``σ = 0``: no such ``y`` exists). ``λ = u / σ`` are the program's multipliers, which solve
``min_{λ ≥ 0} ½ λᵀGλ − hᵀλ``, and ``u / Σu`` solves the simplex problem of ``h = 1``. The NNLS
method is an exact active-set method: it ends on the optimal free set and solves the
least-squares problem on it by Householder QR, which copes with semi-definite, collinear and
ill-conditioned Gramians. :func:`nonnegative_qp` tries block principal pivoting first, a faster
active-set method for its many problems at once, and leaves to the core the problems that it
does not solve.

* :func:`simplex_qp`: ``min ½ wᵀGw + cᵀw`` over the probability simplex (MGDA).
* :func:`nonnegative_qp`: ``min ½ xᵀGx + cᵀx`` over ``x ≥ 0``, batched over ``c`` (UPGrad).
* :func:`conflict_averse_multipliers`: CAGrad's and PLOT's update.
* :func:`bargaining` and :func:`clipped_update_weights`: Nash-MTL's and FairGrad's equation
  ``G w = w^(−p)`` by Newton's method.
* :func:`epo_weights`: EPO's linear program by Mehrotra's interior-point method.
* :func:`imtl_g_weights` and :func:`aligned_mtl_weights`: closed forms from ``eigh``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import scipy.linalg
import scipy.optimize
import torch
from torch import Tensor

__all__ = [
    "aligned_mtl_weights",
    "bargaining",
    "clipped_update_weights",
    "conflict_averse_multipliers",
    "epo_weights",
    "gramian_factor",
    "imtl_g_weights",
    "nonnegative_qp",
    "simplex_qp",
    "solve_on_host",
]

_TINY = np.finfo(np.float64).tiny
_WELL_CONDITIONED = 1e-8  # λ_min / λ_max above which IMTL-G solves by Cholesky
_EPS = np.finfo(np.float64).eps
# LAPACK's Cholesky solve of a positive-definite system (dposv).
_positive_solve = scipy.linalg.lapack.get_lapack_funcs("posv", (np.zeros(1),))
_cholesky, _cholesky_solve, _cholesky_rcond = scipy.linalg.lapack.get_lapack_funcs(
    ("potrf", "potrs", "pocon"), (np.zeros(1),)
)
# pocon's reciprocal condition number is for the 1-norm and an estimate that can overstate it
# (it underestimates ‖G⁻¹‖₁, typically by less than 3×); λ_min / λ_max ≥ rcond₁ / T, so asking
# for _RCOND_MARGIN · T times the threshold keeps every cut case on the eigendecomposition.
_RCOND_MARGIN = 10.0


def solve_on_host(
    solve: Callable[..., np.ndarray],
    gramian: Tensor,
    *arguments: Any,
    columns: Sequence[Tensor] = (),
    shape: Sequence[int] | None = None,
) -> Tensor:
    """``solve(G, *columns, *arguments)`` on the host, from one device→host copy, as one float64
    tensor on ``gramian``'s device.

    ``gramian`` and the ``[T]`` vectors ``columns`` (losses, a warm start, ...) travel in one
    copy: they are joined into one ``[T, T + len(columns)]`` float64 block on the device, copied
    with ``.detach().to("cpu", torch.float64)`` and split again on the host. The other
    ``arguments`` go to ``solve`` as they are; they must not be tensors, whose values would take
    another copy (pass them through ``columns``).

    ``solve`` runs with one BLAS thread when ``threadpoolctl`` is installed: numpy's and
    scipy's OpenBLAS otherwise thread even T × T problems, and next to torch's own threads that
    made ``eigh`` and triangular solves at T = 40 take 10–25 ms instead of 0.1 ms on a busy
    2-core machine (measured 2026-12-05).

    When the block is not finite (a non-finite or overflowing Gramian), ``solve`` is not called
    and the result is NaN, of shape ``shape`` (``[T]`` by default): the caller's fallback
    (``finite_or``) then picks its documented weights.

    Args:
        solve: a function of numpy arrays returning a numpy array.
        gramian: ``[T, T]`` Gramian on any device, in any float dtype.
        arguments: further arguments of ``solve`` (numbers, numpy arrays, strings).
        columns: ``[T]`` tensors on ``gramian``'s device, passed to ``solve`` after the Gramian.
        shape: the shape of ``solve``'s result, for the NaN result; ``[T]`` by default.

    Returns:
        ``solve``'s result as a float64 tensor on ``gramian``'s device.

    Example::

        >>> g = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
        >>> solve_on_host(simplex_qp, g)
        tensor([0.8000, 0.2000], dtype=torch.float64)
        >>> solve_on_host(simplex_qp, torch.full((2, 2), torch.inf))
        tensor([nan, nan], dtype=torch.float64)
    """
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1]:
        raise ValueError(f"the Gramian must be [T, T]; got {tuple(gramian.shape)}.")
    if any(isinstance(argument, Tensor) for argument in arguments):
        raise TypeError(
            "solve_on_host copies the Gramian and `columns` only; pass [T] tensors through "
            "`columns` (one copy) or convert other arguments to numbers or numpy arrays."
        )
    size = gramian.shape[0]
    if columns:
        block = torch.cat(
            [gramian.double(), *(column.reshape(size, 1).double() for column in columns)], 1
        )
    else:
        block = gramian
    host = block.detach().to("cpu", torch.float64).numpy()
    if np.isfinite(host).all():
        with _one_blas_thread():
            result = solve(host[:, :size], *host[:, size:].T, *arguments)
        result = np.asarray(result, dtype=np.float64)
    else:
        result = np.full(tuple(shape) if shape is not None else (size,), np.nan)
    return torch.from_numpy(result).to(gramian.device)


@functools.cache
def _blas_pools() -> Any:
    """threadpoolctl's handle on the loaded BLAS libraries, or ``None`` without threadpoolctl
    (found once: listing the libraries takes milliseconds, limiting them microseconds)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """A context in which the BLAS libraries use one thread (no-op without threadpoolctl)."""
    pools = _blas_pools()
    return pools.limit(limits=1) if pools is not None else contextlib.nullcontext()


def gramian_factor(gramian: np.ndarray) -> np.ndarray:
    """``R`` (``[r, T]``) with ``RᵀR = G``, by Cholesky factorisation with complete pivoting
    (LAPACK ``dpstrf``), which reveals the rank ``r`` of a semi-definite ``G``.

    The factorisation stops at the first pivot below ``T · eps · max_t G_tt`` (LAPACK's
    default); the part of ``G`` left out then has entries of that order, rounding noise of a
    float64 Gramian. At ``T = 40`` this takes about 20 µs, ``eigh`` about 0.1 ms.

    Example::

        >>> g = np.array([[4.0, 2.0], [2.0, 1.0]])  # rank 1: g_2 = g_1 / 2
        >>> r = gramian_factor(g)
        >>> r.shape, bool(np.allclose(r.T @ r, g))
        ((1, 2), True)
    """
    g = _checked_gramian(gramian)
    size = len(g)
    if size == 0 or not g.diagonal().max() > 0:
        return np.zeros((0, size))
    triangle, pivots, rank, _ = scipy.linalg.lapack.dpstrf(g, lower=0)
    factor = np.zeros((rank, size))
    factor[:, pivots - 1] = np.triu(triangle[:rank])
    return factor


def simplex_qp(gramian: np.ndarray, linear: np.ndarray | None = None) -> np.ndarray:
    """Minimise ``½ wᵀGw + cᵀw`` over the probability simplex ``{w ≥ 0, Σ w = 1}``.

    With ``c = 0`` this is MGDA's problem: ``Jᵀw`` is the min-norm point of the convex hull of
    the gradients. With ``G = RᵀR`` and ``c = Rᵀq + β 1``, the objective on the simplex is
    ``½ ‖(R + q 1ᵀ) w‖²`` up to a constant, so the problem is the min-norm point of the columns
    of ``A = R + q 1ᵀ``; its KKT conditions, scaled by ``Σ λ``, are those of the non-negative
    least-squares problem ``min_{λ ≥ 0} ‖[A / √s; 1ᵀ] λ − e‖`` (``s = max_t ‖A_t‖²``), and
    ``w = λ / Σλ``. The lifting keeps the problem bounded when the hull holds 0.

    The minimiser is unique where ``A`` has full column rank; otherwise (duplicated gradients,
    say) every minimiser has the same ``Aw``, and this returns one of them.

    Args:
        gramian: ``[T, T]`` positive semi-definite ``G``.
        linear: ``[T]`` ``c``, or ``None`` for 0. It must lie in the span of the columns of
            ``G`` and the all-ones vector (always so when ``G`` is non-singular, and for any
            ``c = G u + β 1``); a ``ValueError`` says when its least-squares residual in that
            span exceeds rounding, ``1e-9`` of the size of the terms.

    Returns:
        ``[T]`` optimal weights.

    Example::

        >>> g = np.array([[1.0, 0.0], [0.0, 4.0]])
        >>> simplex_qp(g).round(6).tolist()  # the min-norm point of the hull of (1, 0), (0, 2)
        [0.8, 0.2]
        >>> simplex_qp(g, np.array([0.5, 0.0])).round(6).tolist()
        [0.7, 0.3]
    """
    factor = gramian_factor(gramian)
    if linear is not None:
        factor = factor + np.outer(_range_part(factor, linear), np.ones(len(gramian)))
    return _min_norm_weights(factor)


def _min_norm_weights(factor: np.ndarray) -> np.ndarray:
    """The weights of the min-norm point of the hull of the columns of ``factor``, from the
    lifted NNLS problem of :func:`simplex_qp`: the least-distance program of ``h = 1``."""
    scale = math.sqrt(float((factor**2).sum(0).max(initial=0.0))) or 1.0
    lifted, _ = _least_distance(factor / scale, np.ones(factor.shape[1]))
    return lifted / lifted.sum()


def nonnegative_qp(gramian: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """Minimise ``½ xᵀGx + cᵀx`` over ``x ≥ 0``, for each row ``c`` of ``linear``.

    Each problem is first tried by block principal pivoting (Júdice & Pires, "A block principal
    pivoting algorithm for large-scale strictly monotone linear complementarity problems",
    1994; Kim & Park, "Fast nonnegative matrix factorization", 2011, algorithm 1), a fast path:
    from the free set ``F = {j : c_j < 0}`` it solves ``G_FF x_F = −c_F`` by Cholesky and
    exchanges every variable that breaks the KKT conditions (``x_j < 0`` in ``F``,
    ``(Gx + c)_j < 0`` outside, beyond rounding), or only the last of them after three
    exchanges that did not reduce their number. Random and ill-conditioned test problems take
    one to three such steps. A problem still unsolved after ``10`` steps, or whose ``G_FF`` is
    singular (duplicated gradients, more gradients than dimensions), goes to the general
    method, non-negative least squares with ``G = RᵀR``:

    * where ``c = Rᵀq`` (``c`` in the range of ``G``, to rounding: UPGrad's and CAGrad's
      problems), ``½ xᵀGx + cᵀx = ½ ‖Rx + q‖² − ½ ‖q‖²``, always bounded below;
    * otherwise the minimisers are the multipliers of the least-distance program ``min ‖y‖``
      subject to ``Rᵀy ≥ −c`` (``y = Rx``; see the module docstring), posed in a scale where
      ``‖y‖`` is about 1 (and posed again in the scale of its first solution when that was
      off by more than ``10³``), so that ``σ = 1 / (1 + ‖y‖²)`` keeps its digits. The problem
      is unbounded below exactly when the program is infeasible (some ``x ≥ 0`` with
      ``Gx = 0`` has ``cᵀx < 0``); those rows, and rows so nearly unbounded that ``‖y‖``
      exceeds ``10⁶`` times its first estimate even when posed again, are NaN.

    Every method ends on the KKT conditions, solved on the optimal free set. Where the
    minimiser is not unique (``G`` singular) every minimiser has the same ``Gx``, and this
    returns one of them.

    Args:
        gramian: ``[T, T]`` positive semi-definite ``G``.
        linear: ``[T]`` or ``[k, T]`` linear terms ``c``.

    Returns:
        the minimisers, shaped like ``linear``.

    Example::

        >>> nonnegative_qp(np.eye(2), np.array([-1.0, 2.0])).tolist()
        [1.0, 0.0]
        >>> nonnegative_qp(np.diag([1.0, 0.0]), np.array([[-1.0, 1.0], [-1.0, -1.0]])).tolist()
        [[1.0, 0.0], [nan, nan]]
    """
    problem = _NonnegativeQP(_checked_gramian(gramian))
    rows = np.asarray(linear, dtype=np.float64)
    if rows.shape[-1:] != (problem.size,) or rows.ndim not in (1, 2):
        raise ValueError(f"linear must be [T] or [k, T] with T = {problem.size}; got {rows.shape}.")
    if not np.isfinite(rows).all():
        raise ValueError("linear must be finite.")
    return problem.solve(np.atleast_2d(rows)).reshape(rows.shape)


# Block principal pivoting steps before the general method takes over.
_PIVOTING_STEPS = 10
# Exchanges of all violators that may fail to reduce their number before single exchanges.
_PIVOTING_BACKUP = 3
# A computed (Gx + c)_j counts as negative below −this × its rounding bound.
_ROUNDING = 64 * _EPS
# A least-distance solution ‖y‖ this many times its first estimate is posed again in its scale;
# this many times, after that, counts as unbounded.
_RESCALE = 1e3
_UNBOUNDED = 1e6


class _NonnegativeQP:
    """The problems of :func:`nonnegative_qp` on one Gramian; its factor is built on demand."""

    def __init__(self, gramian: np.ndarray) -> None:
        self.gramian, self.size = gramian, len(gramian)
        # |G_ij| ≤ ‖g_i‖ ‖g_j‖ bounds the rounding of G x.
        self.norms = np.sqrt(np.clip(gramian.diagonal(), 0.0, None))
        self._factor: np.ndarray | None = None

    def solve(self, linear: np.ndarray) -> np.ndarray:
        """The minimisers for the rows of ``linear`` (``[k, T]``)."""
        solutions, solved = self._pivoting(linear)
        for row in (~solved).nonzero()[0]:
            solutions[row] = self._general(linear[row])
        return solutions

    def _pivoting(self, linear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Block principal pivoting on all rows at once (a Cholesky solve per row and step, the
        rest vectorised), and which rows it solved."""
        count, size = linear.shape
        free = linear < 0
        # c ≥ 0: x = 0 satisfies the KKT conditions.
        solutions = np.zeros_like(linear)
        solved: np.ndarray = np.logical_not(free.any(axis=1))
        pending: np.ndarray = np.logical_not(solved)
        fewest = np.full(count, size + 1)
        backup = np.full(count, _PIVOTING_BACKUP)
        linear_rounding = _ROUNDING * np.abs(linear)
        for _ in range(_PIVOTING_STEPS):
            rows = pending.nonzero()[0]
            if len(rows) == 0:
                break
            # v with G_FF v = c_F on each row's free set F; x_F = −v.
            negated = np.zeros((len(rows), size))
            for position, row in enumerate(rows):
                index = free[row].nonzero()[0]
                if len(index) == 0:
                    continue  # x = 0
                _, negated[position, index], info = _positive_solve(
                    self.gramian[index[:, None], index], linear[row, index]
                )
                if info != 0:  # G_FF singular: the general method takes the row
                    pending[row] = False
            kept = pending[rows]
            rows, negated = rows[kept], negated[kept]
            gradient = linear[rows] - negated @ self.gramian
            spread = _ROUNDING * (np.abs(negated) @ self.norms)
            bound = linear_rounding[rows] + spread[:, None] * self.norms
            violated = np.where(free[rows], negated > 0, gradient < -bound)
            violations = violated.sum(1)
            done = violations == 0
            solutions[rows[done]] = 0.0 - negated[done]  # not −v: no negative zeros
            solved[rows[done]] = True
            pending[rows[done]] = False
            # Exchange every violator while their number falls, or for a few more steps;
            # then only the last one.
            rows, violated, violations = rows[~done], violated[~done], violations[~done]
            falling = violations < fewest[rows]
            fewest[rows] = np.minimum(fewest[rows], violations)
            every = falling | (backup[rows] > 0)
            backup[rows] = np.where(falling, _PIVOTING_BACKUP, backup[rows] - ~falling)
            last = size - 1 - np.argmax(violated[:, ::-1], axis=1)
            violated[~every] = False
            violated[(~every).nonzero()[0], last[~every]] = True
            free[rows] ^= violated
        return solutions, solved

    def _general(self, linear: np.ndarray) -> np.ndarray:
        """The general method: as NNLS, in cone form where ``c`` is in the range of ``G``,
        else as the least-distance program."""
        if not linear.min(initial=0.0) < 0:
            return np.zeros_like(linear)  # c ≥ 0: x = 0 satisfies the KKT conditions
        if self._factor is None:
            self._factor = gramian_factor(self.gramian)
            self._factor_norms = np.sqrt((self._factor**2).sum(0))
        factor = self._factor
        coefficients, in_span = _span_coefficients(factor.T, linear)
        if in_span:
            # c = Rᵀq: ½ xᵀGx + cᵀx = ½ ‖Rx + q‖² − ½ ‖q‖², bounded below.
            return _nnls(factor, -coefficients)[0]
        bound = -linear
        # ‖y‖ ≥ max_t h_t / ‖R_t‖ for Rᵀy ≥ h (and a positive h_t on a zero column is
        # infeasible).
        with np.errstate(divide="ignore", invalid="ignore"):
            estimate = float(np.max(np.where(bound > 0, bound / self._factor_norms, 0.0)))
        if not math.isfinite(estimate):
            return np.full_like(linear, np.nan)
        for limit in (_RESCALE, _UNBOUNDED):
            lifted, residual = _least_distance(factor, bound / estimate)
            if not residual > 0:  # infeasible: unbounded below (or the NNLS iteration failed)
                break
            distance = math.sqrt(max(1.0 - residual, 0.0) / residual)
            if distance <= limit:
                return lifted * (estimate / residual)
            estimate *= distance
        return np.full_like(linear, np.nan)


def _nnls(matrix: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """scipy's NNLS solution of ``min_{x ≥ 0} ‖A x − b‖`` and its residual norm; NaN when the
    iteration stops at its cap (which cycling on degenerate input could reach)."""
    try:
        return scipy.optimize.nnls(matrix, target, maxiter=10 * matrix.shape[1] + 10)
    except RuntimeError:
        return np.full(matrix.shape[1], np.nan), math.nan


def _least_distance(factor: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, float]:
    """``(u, σ)``: the NNLS solution of ``min_{u ≥ 0} ‖[R; hᵀ] u − e‖`` and its squared
    residual, for ``R = factor`` and ``h = bound`` (see the module docstring)."""
    matrix = np.vstack([factor, bound])
    target = np.zeros(len(matrix))
    target[-1] = 1.0
    solution, residual = _nnls(matrix, target)
    return solution, residual**2


def _range_part(factor: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """``q`` with ``c = Rᵀq + β 1`` (see :func:`simplex_qp`)."""
    c = np.asarray(linear, dtype=np.float64)
    if c.shape != (factor.shape[1],) or not np.isfinite(c).all():
        raise ValueError(f"linear must be a finite [T] vector; got shape {c.shape}.")
    coefficients, in_span = _span_coefficients(np.column_stack([factor.T, np.ones_like(c)]), c)
    if not in_span:
        raise ValueError(
            "linear must lie in the span of the Gramian's columns and the all-ones vector "
            "(c = G u + β 1)."
        )
    return coefficients[:-1]


# A least-squares residual below this fraction of the terms' size is rounding.
_IN_SPAN = 1e-9


def _span_coefficients(basis: np.ndarray, vector: np.ndarray) -> tuple[np.ndarray, bool]:
    """The least-squares coefficients of ``vector`` in the columns of ``basis``, and whether the
    residual is rounding: at most ``1e-9 (‖v‖ + ‖ |B| |coefficients| ‖)``, the size of the
    terms. (A vector computed as ``G u`` is off the factor's range by the rounding of ``G``.)"""
    coefficients = np.linalg.lstsq(basis, vector, rcond=None)[0]
    residual = np.linalg.norm(basis @ coefficients - vector)
    size = np.linalg.norm(vector) + np.linalg.norm(np.abs(basis) @ np.abs(coefficients))
    return coefficients, bool(residual <= _IN_SPAN * size)


def _checked_gramian(gramian: np.ndarray) -> np.ndarray:
    g = np.asarray(gramian, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"the Gramian must be [T, T]; got {g.shape}.")
    if not np.isfinite(g).all():
        raise ValueError("the Gramian must be finite (solve_on_host returns NaN instead).")
    return g


# When the min-norm point of the hull is this small (squared, relative to max ‖g_t‖²), the hull is
# taken to hold 0: no level above 0 is reachable at a resolution the solver can certify.
_STATIONARY = 1e-10
# The level search stops when the squared distance is this close to radius², relative.
_ON_RADIUS = 1e-13


def conflict_averse_multipliers(
    gramian: np.ndarray, preference: np.ndarray, radius: float
) -> np.ndarray:
    """``λ ≥ 0`` such that ``d = Jᵀ(b + λ)`` maximises ``min_t ⟨g_t, d⟩`` over
    ``‖d − Jᵀb‖ ≤ radius`` (the maximiser nearest ``g0 = Jᵀb`` if several), from ``G = J Jᵀ``:
    CAGrad's update (``b = 1/T``) and PLOT's (a class preference).

    For a level ``z``, the point of ``{d : J d ≥ z}`` nearest ``g0`` is ``g0 + Jᵀλ(z)`` with
    ``λ(z)`` the multipliers of the least-distance program ``min ‖y‖`` subject to
    ``Rᵀy ≥ z 1 − G b`` (``G = RᵀR``), one NNLS problem (see the module docstring). Its distance
    ``‖y(z)‖`` is convex and non-decreasing in ``z``, and the optimum is the largest ``z`` at
    distance at most ``radius``. On the free set ``F`` of a solution the active constraints
    ``R_Fᵀ y = z 1 − (G b)_F`` make ``y`` affine in ``z``, so ``‖y(z)‖ = radius`` is a quadratic
    equation: the search solves it for the free set of its last level (exact if that set is
    still free at the root), or takes a Newton step on ``‖y(z)‖²`` with the piece's slope
    (which corrects a root that rounding put off the radius), solves the program at the new
    level, and stops when the distance is ``radius`` to ``1e-13`` (relative, squared). A
    bracket of levels inside and outside the radius guards it: a guess outside the bracket is
    replaced by the bracket's midpoint, and should the bracket shrink to rounding, the answer
    is interpolated across it.

    The search range: the optimal level is at least ``min_t (Gb)_t`` (where ``λ = 0``), at most
    ``min_t (Gb)_t + radius ‖g_t‖`` (no ``d`` in the ball does better on objective ``t``), and at
    most ``(‖g0‖ + radius) ‖x*‖`` with ``x*`` the min-norm point of the hull (every ``d`` in the
    ball is that short, and no ``d`` that short does better on all objectives). The last bound is
    0 when ``‖x*‖² ≤ 1e-10 max_t ‖g_t‖²`` (the hull holds 0 to the solver's resolution); then
    the answer at level 0 is the point of the dual cone ``{d : J d ≥ 0}`` nearest ``g0``.

    Args:
        gramian: ``[T, T]`` Gramian ``G``.
        preference: ``[T]`` non-negative ``b``.
        radius: the radius, ``≥ 0``.

    Returns:
        ``[T]`` multipliers ``λ``.

    Example::

        >>> g = np.array([[1.0, 0.0], [0.0, 9.0]])
        >>> b = np.array([0.5, 0.5])
        >>> radius = 0.5 * math.sqrt(b @ g @ b)  # c = 0.5
        >>> multipliers = conflict_averse_multipliers(g, b, radius)
        >>> (multipliers / radius).round(6).tolist()  # all of the radius goes to g_1 = (1, 0)
        [1.0, 0.0]
    """
    g = _checked_gramian(gramian)
    b = np.asarray(preference, dtype=np.float64)
    if b.shape != (len(g),) or not (np.isfinite(b).all() and b.min(initial=0.0) >= 0):
        raise ValueError(f"preference must be a finite non-negative [T] vector; got {b}.")
    if not (radius >= 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be finite and >= 0; got {radius}.")
    if radius == 0:
        return np.zeros_like(b)
    search = _LevelSearch(g, b, float(radius))
    return search.run()


class _Level(NamedTuple):
    """The least-distance program of one level: its multipliers, its squared distance over
    radius² (``inf`` when infeasible) and its free set."""

    level: float
    multipliers: np.ndarray
    reach: float
    free: np.ndarray


class _LevelSearch:
    """The level search of :func:`conflict_averse_multipliers`, with its constants."""

    def __init__(self, gramian: np.ndarray, preference: np.ndarray, radius: float) -> None:
        self.gramian, self.radius = gramian, radius
        self.factor = gramian_factor(gramian)
        self.toward = gramian @ preference
        norms = np.sqrt(np.clip(gramian.diagonal(), 0.0, None))
        self.lower = float(self.toward.min())
        upper = max(float((self.toward + radius * norms).min()), self.lower)
        reach = self._reachable_level(preference)
        # NaN (a failed NNLS iteration) passes on, to the caller's fallback.
        self.upper = min(upper, max(reach, self.lower)) if math.isfinite(reach) else math.nan

    def _reachable_level(self, preference: np.ndarray) -> float:
        """``(‖g0‖ + radius) ‖x*‖``, 0 when ``x*`` is stationary."""
        hull = _min_norm_weights(self.factor)
        squared_min_norm = max(float(hull @ self.gramian @ hull), 0.0)
        if squared_min_norm <= _STATIONARY * self.gramian.diagonal().max():
            return 0.0
        longest = math.sqrt(max(float(preference @ self.toward), 0.0)) + self.radius
        return longest * math.sqrt(squared_min_norm)

    def solve(self, level: float) -> _Level:
        """The program at ``level``, posed in units of the radius (``y / radius``)."""
        lifted, residual = _least_distance(self.factor, (level - self.toward) / self.radius)
        if not residual > 0:  # infeasible, or the NNLS iteration failed
            return _Level(level, np.full_like(lifted, np.nan), math.inf, lifted > 0)
        # ‖y / radius‖² = (1 − σ) / σ (see the module docstring).
        reach = max(1.0 - residual, 0.0) / residual
        return _Level(level, lifted * (self.radius / residual), reach, lifted > 0)

    def candidates(self, point: _Level) -> tuple[float, float]:
        """Two guesses of the optimal level from ``point``'s free set ``F``, NaN where there is
        none. On ``F``, ``λ_F(z) = G_FF⁻¹ (z 1 − (G b)_F)`` and ``‖y(z)‖² = λ_Fᵀ G_FF λ_F =
        A z² − 2 B z + C``. The first guess is the larger root of ``‖y(z)‖ = radius``: the
        optimum if ``F`` is still free there. The second is a Newton step on ``‖y‖² / radius²``
        from ``point``, with the slope of the piece and ``point``'s own (exact) value: where
        the first was rounded off the radius, it corrects it; from above the radius it never
        overshoots, ``‖y‖²`` being convex in ``z``."""
        index = point.free.nonzero()[0]
        if len(index) == 0 or not math.isfinite(point.reach):
            return math.nan, math.nan
        sides = np.column_stack([np.ones(len(index)), self.toward[index]])
        _, solution, info = _positive_solve(self.gramian[index[:, None], index], sides)
        if info != 0:  # G_FF singular (more free gradients than dimensions, say)
            return math.nan, math.nan
        quadratic, half_linear = float(solution[:, 0].sum()), float(solution[:, 1].sum())
        constant = float(solution[:, 1] @ self.toward[index]) - self.radius**2
        discriminant = half_linear**2 - quadratic * constant
        root = math.nan
        if quadratic > 0 and discriminant >= 0:
            if half_linear >= 0:
                root = (half_linear + math.sqrt(discriminant)) / quadratic
            else:
                root = constant / (half_linear - math.sqrt(discriminant))
        slope = 2.0 * (quadratic * point.level - half_linear) / self.radius**2
        newton = point.level - (point.reach - 1.0) / slope if slope > 0 else math.nan
        return root, newton

    def run(self) -> np.ndarray:
        if not math.isfinite(self.upper):
            return np.full_like(self.toward, np.nan)
        point = self.solve(self.upper)
        if point.reach <= 1.0 + _ON_RADIUS:
            return point.multipliers
        low = _Level(self.lower, np.zeros_like(self.toward), 0.0, np.zeros_like(point.free))
        high = point
        # Each round tries the guesses of the last level, else halves the bracket; 100 rounds
        # of halving reach rounding from any bracket.
        for _ in range(100):
            inside = [z for z in self.candidates(point) if low.level < z < high.level]
            level = inside[0] if inside else 0.5 * (low.level + high.level)
            if not low.level < level < high.level:
                break
            point = self.solve(level)
            if abs(point.reach - 1.0) <= _ON_RADIUS:
                return point.multipliers
            if point.reach <= 1.0:
                low = point
            else:
                high = point
        return self._to_radius(low.multipliers, high.multipliers)

    def _to_radius(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """``low + t (high − low)``, ``t ∈ [0, 1]``, at distance ``radius``: the distance squared
        is a convex quadratic in ``t``, at most ``radius²`` at 0 and above it at 1."""
        if not np.isfinite(high).all():
            return low
        step = high - low
        curvature = float(step @ self.gramian @ step)
        slope = float(low @ self.gramian @ step)
        room = max(self.radius**2 - float(low @ self.gramian @ low), 0.0)
        # The root of curvature·t² + 2·slope·t = room, written without cancellation.
        denominator = slope + math.sqrt(max(slope**2 + curvature * room, 0.0))
        fraction = room / denominator if denominator > 0 else 0.0
        return low + min(max(fraction, 0.0), 1.0) * step


# Newton step lengths τ tried besides 1/(1 + λ): 1, 1/2, ..., 2^-29.
_HALVINGS = 30
# Newton decrement below which the full step is taken (the quadratic-convergence region).
_FULL_STEP_DECREMENT = 0.25
# Relative residual at which the iteration stops: float64 rounding noise.
_FROZEN = 1e-12


def bargaining(
    gramian: np.ndarray,
    power: float,
    start: np.ndarray | None = None,
    iterations: int = 20,
    tol: float = 1e-6,
) -> tuple[np.ndarray, bool]:
    """Solve ``(G w)_i = w_i^(−p)`` for ``w > 0``: Nash-MTL's weights (``p = 1``) and FairGrad's
    (``p = 1/α``).

    The method of :mod:`lightning_mtl.strategies._bargaining`, step for step: Newton's method on
    the strictly convex potential ``ψ(w) = ½ wᵀGw − Σ_i h(w_i)`` (``h = log`` for ``p = 1``,
    ``w^(1−p) / (1 − p)`` otherwise), equilibrated, with the step chosen by ``ψ`` among the
    Newton steps of lengths ``1/(1 + λ), 1, ½, …, 2⁻²⁹`` and their multiplicative counterparts
    (the full step once the Newton decrement ``λ ≤ ¼``), from the better of the
    orthogonal-gradient start and ``start``, each rescaled to its best multiple. The iteration
    stops once the relative residual ``max_i |w_i^p (G w)_i − 1|`` reaches 1e-12, as the
    device solver's CPU path does. Objectives with a zero gradient are left out (weight 0).

    Args:
        gramian: ``[T, T]`` Gramian ``G``.
        power: ``p > 0``.
        start: ``[T]`` an earlier solution to start from; ignored when ``None``.
        iterations: the most Newton iterations.
        tol: the largest relative residual accepted as a solution.

    Returns:
        ``[T]`` weights (0 for zero gradients) and whether they solve the equation to ``tol``
        (false when no solution exists, e.g. at a Pareto-stationary point).

    Example::

        >>> w, solved = bargaining(np.diag([4.0, 1.0]), power=1.0)
        >>> w.round(6).tolist(), solved  # orthogonal gradients: w_i = 1 / ‖g_i‖
        ([0.5, 1.0], True)
    """
    g = _checked_gramian(gramian)
    if not power > 0:
        raise ValueError(f"power must be positive; got {power}.")
    if iterations < 0:
        raise ValueError(f"iterations must be non-negative; got {iterations}.")
    # A zero gradient's row and column become the identity's: it bargains alone, and is dropped.
    bargains = g.diagonal() != 0
    g = np.where(np.outer(bargains, bargains), g, np.diag((~bargains).astype(np.float64)))
    equation = _Bargaining(g, float(power))
    weights = equation.starting_point(start)
    residual = equation.residual(weights)
    worst = float(np.abs(residual).max(initial=0.0))
    for _ in range(iterations):
        if worst <= _FROZEN:
            break
        stepped = equation.newton_step(weights, residual)
        if np.all(stepped > 0) and np.isfinite(stepped).all():
            weights = stepped
        residual = equation.residual(weights)
        worst = float(np.abs(residual).max(initial=0.0))
    solved = worst <= tol and bool(np.all(weights > 0))
    return np.where(bargains, weights, 0.0), solved


class _Bargaining:
    """The potential ``ψ`` of a Gramian and a power, and Newton's method on it."""

    def __init__(self, gramian: np.ndarray, power: float) -> None:
        self.gramian, self.power = gramian, power
        # ψ(w) = −(1/κ) Σ_i (u_i − ½κ w_i (G w)_i): u = log w and κ = 1 for p = 1, else
        # u = w^κ and κ = 1 − p.
        self.exponent = 1.0 if power == 1.0 else 1.0 - power
        # The step lengths 1, 1/2, ..., 2^-29 (1/(1 + λ) is prepended per step).
        self.halvings = 2.0 ** -np.arange(_HALVINGS, dtype=np.float64)

    def residual(self, weights: np.ndarray) -> np.ndarray:
        """``w^p ∘ (G w) − 1``."""
        scaled = weights if self.power == 1.0 else weights**self.power
        return scaled * (self.gramian @ weights) - 1.0

    def potential(self, weights: np.ndarray) -> np.ndarray:
        """``ψ`` along the last axis, ``+inf`` where some weight is not positive."""
        positive = np.all(weights > 0, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            utility = np.log(weights) if self.power == 1.0 else weights**self.exponent
            terms = utility - 0.5 * self.exponent * (weights @ self.gramian) * weights
            return np.where(positive, terms.sum(-1) * (-1.0 / self.exponent), np.inf)

    def scaled_to_best_multiple(self, weights: np.ndarray) -> np.ndarray:
        """``t w`` with ``t`` minimising ``ψ(t w)``: ``t^(1+p) = Σ w_i^(1−p) / wᵀ G w``."""
        curvature = max(float(weights @ self.gramian @ weights), _TINY)
        gain = float(np.sum(weights ** (1.0 - self.power)))
        return weights * (gain / curvature) ** (1.0 / (1.0 + self.power))

    def starting_point(self, start: np.ndarray | None) -> np.ndarray:
        diagonal = np.maximum(self.gramian.diagonal(), _TINY)
        orthogonal = diagonal ** (-1.0 / (1.0 + self.power))
        candidate = self.scaled_to_best_multiple(orthogonal)
        if start is None or np.shape(start) != orthogonal.shape:
            return candidate
        warm = np.asarray(start, dtype=np.float64)
        warm = np.where((warm > 0) & np.isfinite(warm), warm, orthogonal)
        warm = self.scaled_to_best_multiple(warm)
        return warm if self.potential(warm) < self.potential(candidate) else candidate

    def newton_step(self, weights: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """One Newton step on ``ψ`` from ``weights``, whose :meth:`residual` is ``residual``."""
        # In the variables w ∘ u: gradient w ∘ (G w) − w^(1−p) and Hessian
        # diag(w) G diag(w) + diag(p w^(1−p)), equilibrated by D = diag(H)^(−1/2) on the rows
        # (which gives the same step as on both sides under partial pivoting).
        hessian = np.outer(weights, weights) * self.gramian
        if self.power == 1.0:
            gradient = residual
            hessian[np.diag_indices_from(hessian)] += 1.0
        else:
            slope = weights ** (1.0 - self.power)
            gradient = slope * residual
            hessian[np.diag_indices_from(hessian)] += self.power * slope
        equilibrate = hessian.diagonal() ** -0.5
        try:
            relative = np.linalg.solve(equilibrate[:, None] * hessian, equilibrate * gradient)
        except np.linalg.LinAlgError:
            return np.full_like(weights, np.nan)
        decrement = math.sqrt(max(float(gradient @ relative), 0.0))
        # The Newton step is −w ∘ relative; τ = 1 is the full step.
        full = weights - weights * relative
        if decrement <= _FULL_STEP_DECREMENT and np.all(full > 0):
            return full
        lengths = np.concatenate([[1.0 / (1.0 + decrement)], self.halvings])
        exponents = np.outer(-lengths, relative)
        with np.errstate(over="ignore"):
            candidates = np.concatenate(
                [weights + weights * exponents, np.exp(exponents) * weights]
            )
        return candidates[np.argmin(self.potential(candidates))]


def clipped_update_weights(
    weights: np.ndarray, gramian: np.ndarray, max_norm: float | None
) -> np.ndarray:
    """``weights`` scaled so that the update ``Σ_i w_i g_i`` has norm at most ``max_norm`` (no
    scaling for ``None``): Nash-MTL's and FairGrad's clipping.

    Example::

        >>> clipped_update_weights(np.ones(2), np.eye(2) * 8.0, 2.0).tolist()
        [0.5, 0.5]
    """
    if max_norm is None:
        return weights
    norm = math.sqrt(max(float(weights @ gramian @ weights), 0.0))
    return weights * min(max_norm / norm, 1.0) if norm > 0 else weights


# EPO: constraint rows below this fraction of the largest coefficient are treated as zero rows.
_NEGLIGIBLE = 1e-12
# Relative ridge on the diagonal of the normal equations.
_RIDGE = 1e-13
# Fraction of the distance to the boundary of the positive orthant that a step may cover.
_TO_BOUNDARY = 0.99


def epo_weights(
    gramian: np.ndarray,
    losses: np.ndarray,
    preference: np.ndarray,
    eps: float = 1e-4,
    iterations: int = 40,
    tol: float = 1e-8,
) -> tuple[np.ndarray, float]:
    """EPO's weights ``T β`` and the losses' non-uniformity ``μ``, as
    :class:`~lightning_mtl.strategies.epo.EPO` computes them on the device: the program of the
    step's mode (balance for ``μ > eps``, else descent), solved by Mehrotra's predictor–corrector
    method in the same standard form, equilibration and stopping test (the iteration stops at
    ``tol`` or after ``iterations``); ``β = r / Σr`` when it is infeasible or does not converge.

    Args:
        gramian: ``[T, T]`` Gramian ``G``.
        losses: ``[T]`` the objectives' losses (``≤ 0`` counts as 0).
        preference: ``[T]`` positive ``r``.
        eps: the non-uniformity below which EPO descends.
        iterations: the most interior-point iterations.
        tol: the relative residuals and duality gap accepted as a solution.

    Returns:
        ``[T]`` weights and ``μ`` (through :func:`solve_on_host`, return them as one array,
        ``np.append(weights, μ)``).

    Example::

        >>> weights, mu = epo_weights(np.eye(2), np.array([2.0, 1.0]), np.ones(2))
        >>> weights.round(6).tolist(), round(mu, 4)  # balance: only the larger loss descends
        ([2.0, 0.0], 0.0566)
    """
    g = _checked_gramian(gramian)
    values, r = (np.asarray(v, dtype=np.float64) for v in (losses, preference))
    shape = (len(g),)
    if values.shape != shape or r.shape != shape or not np.isfinite(values).all():
        raise ValueError(f"losses must be a finite [T] vector; got {values}.")
    if not (np.isfinite(r).all() and np.all(r > 0)):
        raise ValueError(f"preference must be positive; got {r}.")
    non_uniformity, program = _epo_program(values, r, g, eps)
    beta, solved = _maximise_on_simplex(program, iterations, tol)
    if not (solved and np.isfinite(beta).all()):
        beta = r / r.sum()
    return len(g) * beta, non_uniformity


class _LinearProgram(NamedTuple):
    """Maximise ``objectiveᵀ β`` over the simplex subject to ``rows[k] β ≥ bounds[k]`` for the
    ``active`` rows ``k``."""

    objective: np.ndarray
    rows: np.ndarray
    bounds: np.ndarray
    active: np.ndarray


def _epo_program(
    losses: np.ndarray, preference: np.ndarray, gramian: np.ndarray, eps: float
) -> tuple[float, _LinearProgram]:
    """The non-uniformity ``μ`` and the program of this step's mode (see :class:`EPO`)."""
    count = len(losses)
    weighted = np.maximum(preference * losses, 0.0)
    total = weighted.sum()
    # All losses at 0 are on every ray: uniform shares.
    shares = np.maximum(weighted / total if total > 0 else np.full(count, 1.0 / count), _TINY)
    logs = np.log(count * shares)
    non_uniformity = float(shares @ logs)
    gains = gramian @ (preference * (logs - non_uniformity))
    zero = np.zeros_like(gains)
    if non_uniformity > eps:
        rising = gains > 0
        leading = weighted == weighted.max()
        bounds = np.where(leading, zero, gains) if rising.any() else zero
        active = ~rising.any() | ~rising | leading
        program = _LinearProgram(
            gains, np.vstack([gramian, zero]), np.append(bounds, 0.0), np.append(active, False)
        )
    else:
        program = _LinearProgram(
            gramian.sum(0),
            np.vstack([gramian, gains]),
            np.append(zero, min(gains.max(), 0.0)),
            np.ones(count + 1, dtype=bool),
        )
    return non_uniformity, program


def _maximise_on_simplex(
    program: _LinearProgram, iterations: int, tol: float
) -> tuple[np.ndarray, bool]:
    """Solve ``program`` by Mehrotra's method on its standard form, as ``epo._StandardForm``
    does: with a slack ``s_k`` per row, ``z = (β, s) ≥ 0``, ``1ᵀβ = 1`` and
    ``rows β − s = bounds`` (an inactive row becomes ``0 β − s_k = −1``). Returns ``β`` and
    whether the last iterate is feasible and optimal to ``tol``."""
    count = len(program.objective)
    # Every bound is ≤ 0, so a row of (rounding noise about) zeros always holds; equilibrating it
    # would turn the noise into a constraint.
    row_scale = np.abs(program.rows).max(1)
    active = program.active & (row_scale > _NEGLIGIBLE * row_scale.max())
    row_scale = np.maximum(row_scale, _TINY)
    rows = np.where(active[:, None], program.rows / row_scale[:, None], 0.0)
    bounds = np.where(active, program.bounds / row_scale, -1.0)
    objective = program.objective / max(np.abs(program.objective).max(), _TINY)
    form = _StandardForm(rows, bounds, objective, tol)
    point, reduced, multipliers = form.start()
    dual, products, done = form.residuals(point, reduced, multipliers)
    for _ in range(iterations):
        if done:
            break
        step = form.mehrotra_step(point, reduced, dual, products)
        if not all(np.isfinite(part).all() for part in step):
            break  # the device solver keeps the iterate, and would find the same step again
        point, reduced, multipliers = (
            x + dx for x, dx in zip((point, reduced, multipliers), step, strict=True)
        )
        dual, products, done = form.residuals(point, reduced, multipliers)
    beta = np.maximum(point[:count], 0.0)
    return beta / max(beta.sum(), _TINY), done


class _StandardForm:
    """Minimise ``costᵀ z`` subject to ``M z = target``, ``z ≥ 0``, by Mehrotra's method: the
    iteration of ``epo._StandardForm``, on the host."""

    def __init__(self, rows: np.ndarray, bounds: np.ndarray, objective: np.ndarray, tol: float):
        count, constraints = len(objective), len(rows)
        self.count, self.size, self.tol = count, count + constraints, tol
        self.matrix = np.zeros((constraints + 1, self.size))
        self.matrix[0, :count] = 1.0
        self.matrix[1:, :count] = rows
        self.matrix[1:, count:] = -np.eye(constraints)
        self.target = np.append(1.0, bounds)
        self.cost = np.append(-objective, np.zeros(constraints))
        # The primal and dual residuals count relative to 1 + the largest target and cost entry.
        self.primal_scale = 1.0 / (1.0 + np.abs(self.target).max())
        self.dual_scale = 1.0 / (1.0 + np.abs(self.cost).max())

    def start(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        point = np.append(np.full(self.count, 1.0 / self.count), np.ones(self.size - self.count))
        return point, np.ones(self.size), np.zeros(len(self.target))

    def residuals(
        self, point: np.ndarray, reduced: np.ndarray, multipliers: np.ndarray
    ) -> tuple[np.ndarray, float, bool]:
        """The dual residual ``Mᵀ y + ζ − cost``, ``zᵀ ζ``, and whether the relative primal and
        dual residuals and the duality gap are at most ``tol``."""
        primal = self.matrix @ point - self.target
        dual = self.matrix.T @ multipliers + reduced - self.cost
        products = float(point @ reduced)
        worst = max(np.abs(primal).max() * self.primal_scale, np.abs(dual).max() * self.dual_scale)
        gap = products - self.tol * abs(float(self.cost @ point))
        return dual, products, max(worst, gap) <= self.tol

    def mehrotra_step(
        self, point: np.ndarray, reduced: np.ndarray, dual: np.ndarray, products: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The step ``(Δz, Δζ, Δy)`` from an iterate with dual residual ``dual`` and
        ``zᵀζ = products``."""
        matrix = self.matrix
        ratio = point / reduced
        scaled = matrix * ratio
        normal = scaled @ matrix.T
        # Near the solution ratio spans many orders of magnitude and, with nearly collinear
        # gradients, the normal matrix is nearly singular; a relative ridge keeps the solve
        # accurate.
        normal[np.diag_indices_from(normal)] *= 1.0 + _RIDGE
        factors = scipy.linalg.lu_factor(normal, check_finite=False)

        # Newton's equations with the complementarity row ζ ∘ Δz + z ∘ Δζ = −z ∘ ζ − w reduce,
        # with D = diag(z/ζ), to M D Mᵀ Δy = target − M D r_d + M (w/ζ), then
        # Δζ = −r_d − Mᵀ Δy and Δz = −z − w/ζ − D Δζ; `shift` is −z − w/ζ.
        def direction(rhs: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, ...]:
            d_multipliers = scipy.linalg.lu_solve(factors, rhs, check_finite=False)
            d_reduced = -dual - matrix.T @ d_multipliers
            return shift - ratio * d_reduced, d_reduced, d_multipliers

        affine_rhs = self.target - scaled @ dual  # w = 0
        d_point, d_reduced, _ = direction(affine_rhs, -point)
        to_point, to_reduced = _longest_steps(point, reduced, d_point, d_reduced, 1.0)
        affine_products = float((point + to_point * d_point) @ (reduced + to_reduced * d_reduced))
        # Corrector: w = Δz_aff ∘ Δζ_aff − σ μ, centring σ = (affine gap / gap)³, μ = zᵀζ / n.
        centring = (affine_products / max(products, _TINY)) ** 3
        correction = (d_point * d_reduced - centring * products / self.size) / reduced
        d_point, d_reduced, d_multipliers = direction(
            affine_rhs + matrix @ correction, -point - correction
        )
        to_point, to_reduced = _longest_steps(point, reduced, d_point, d_reduced, _TO_BOUNDARY)
        return to_point * d_point, to_reduced * d_reduced, to_reduced * d_multipliers


def _longest_steps(
    point: np.ndarray,
    reduced: np.ndarray,
    d_point: np.ndarray,
    d_reduced: np.ndarray,
    fraction: float,
) -> tuple[float, float]:
    """For the point and the reduced costs, ``min(1, fraction · the largest t with
    values + t change ≥ 0)``, that is ``fraction / max(fraction, max_i −change_i / values_i)``."""
    return tuple(  # type: ignore[return-value]
        fraction / max(fraction, float(np.max(-change / values)))
        for values, change in ((point, d_point), (reduced, d_reduced))
    )


# IMTL-G: below this fraction of Σ|v_t| the sum Σ v_t is cancellation noise.
_DEGENERATE_SUM = 1e-8
# IMTL-G: when G G⁺ n misses n by more than this fraction of ‖n‖, n is not in the range of G.
_OUT_OF_RANGE = 1e-3


def imtl_g_weights(gramian: np.ndarray, *, eps: float) -> np.ndarray:
    """IMTL-G's weights ``G⁺n / |Σ_t (G⁺n)_t|`` with ``n_t = ‖g_t‖``, or zeros where no
    combination of the gradients has equal non-zero projections on their directions, as
    :class:`~lightning_mtl.strategies.imtl_g.IMTLG` defines them.

    The pseudo-inverse drops the eigen-directions of ``G`` up to ``T · eps · λ_max``.

    Args:
        gramian: ``[T, T]`` Gramian ``G``.
        eps: the machine epsilon of the dtype the Gramian was computed in
            (``torch.finfo(dtype).eps``), for the rank cut.

    Example::

        >>> imtl_g_weights(np.diag([4.0, 1.0]), eps=1e-7).round(6).tolist()
        [0.333333, 0.666667]
    """
    g = _checked_gramian(gramian)
    norms = np.sqrt(np.clip(g.diagonal(), 0.0, None))
    solution = None
    if len(g) > 1:
        # Where no eigen-direction is cut, G⁺ = G⁻¹: one Cholesky solve instead of the full
        # eigendecomposition (a third of the time at T = 40), its conditioning checked from the
        # factor by LAPACK's estimate; kept to condition numbers of 1e8 or less, where it agrees
        # with the eigendecomposition to about 1e-8.
        factor, info = _cholesky(g, lower=True)
        needed = _RCOND_MARGIN * len(g) * max(len(g) * eps, _WELL_CONDITIONED)
        if info == 0 and _cholesky_rcond(factor, np.abs(g).sum(0).max(), uplo="L")[0] > needed:
            solution = _cholesky_solve(factor, norms, lower=True)[0]
    if solution is None:
        values, vectors = np.linalg.eigh(g)
        kept = _significant(values, eps)
        inverse = np.where(kept, 1.0 / np.where(kept, values, 1.0), 0.0)
        solution = vectors @ (inverse * (vectors.T @ norms))
    total = float(solution.sum())
    missed = np.linalg.norm(g @ solution - norms) > _OUT_OF_RANGE * np.linalg.norm(norms)
    if missed or abs(total) <= _DEGENERATE_SUM * np.abs(solution).sum():
        return np.zeros_like(solution)
    return solution / abs(total)


def aligned_mtl_weights(
    gramian: np.ndarray,
    preference: np.ndarray,
    *,
    eps: float,
    scale_mode: Literal["min", "median", "rmse"] = "min",
) -> np.ndarray:
    """Aligned-MTL's weights ``B p`` with ``B = σ V Λ^{-1/2} Vᵀ`` on the kept eigen-directions of
    ``G = V Λ Vᵀ``, as :class:`~lightning_mtl.strategies.aligned_mtl.AlignedMTL` defines them:
    eigenvalues up to ``T · eps · λ_max`` are dropped, and ``σ²`` is the smallest kept one
    (``"min"``), their lower median (``"median"``) or their mean (``"rmse"``).

    Args:
        gramian: ``[T, T]`` Gramian ``G``.
        preference: ``[T]`` weights ``p`` of the aligned gradients.
        eps: the machine epsilon of the dtype the Gramian was computed in.
        scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.

    Example::

        >>> aligned_mtl_weights(np.diag([9.0, 1.0]), np.array([0.5, 0.5]), eps=1e-7).tolist()
        [0.16666666666666666, 0.5]
    """
    g = _checked_gramian(gramian)
    values, vectors = np.linalg.eigh(g)  # ascending
    kept = _significant(values, eps)
    count = int(kept.sum())
    if scale_mode == "min":
        target = values[kept].min(initial=np.inf)
    elif scale_mode == "rmse":
        target = values[kept].sum() / max(count, 1)
    elif scale_mode == "median":
        target = values[len(values) - count + (count - 1) // 2]
    else:
        raise ValueError(f"scale_mode must be 'min', 'median' or 'rmse'; got {scale_mode!r}.")
    with np.errstate(invalid="ignore"):
        gains = np.where(kept, np.sqrt(target / np.where(kept, values, 1.0)), 0.0)
    return vectors @ (gains * (vectors.T @ np.asarray(preference, dtype=np.float64)))


def _significant(eigenvalues: np.ndarray, eps: float) -> np.ndarray:
    """Which eigenvalues exceed ``T · eps · λ_max`` (``_gramian_tools.significant``)."""
    return eigenvalues > eigenvalues.max(initial=0.0) * len(eigenvalues) * eps
