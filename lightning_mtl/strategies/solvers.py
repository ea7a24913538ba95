"""Small convex quadratic programs over objective weights, solved in torch on the device.

Every method that solves an optimisation problem over objective weights (MGDA, CAGrad, UPGrad,
...) does it here, so the numerics live in one place. The solver is a primal active-set method
(Nocedal & Wright, *Numerical Optimization*, algorithm 16.3): each iteration solves the
equality-constrained problem on the current free set with one batched linear solve, then either
moves to it, or moves towards it until a weight hits zero and drops that weight, or frees the
weight whose multiplier is most negative. It is exact once the right free set is found, which
takes a handful of iterations, so it copes with ill-conditioned and nearly collinear Gramians
that defeat first-order methods.

The iteration count is fixed (``max_iter``) and converged problems stop changing, so there is no
data-dependent control flow and no host synchronisation on an accelerator; on the CPU, where
reading a tensor costs nothing, the loop stops as soon as every problem has converged
(:func:`settled_on_host`), with the same result. Problems are batched over leading dimensions
(UPGrad solves its T projections in one call) and solved in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_mtl.strategies.code_paths import host_shortcuts


def settled_on_host(done: Tensor) -> bool:
    """Whether a fixed-count iteration may stop early: every problem in ``done`` has converged
    and the flags may be read on the host for free (:func:`~lightning_mtl.strategies.code_paths.
    host_shortcuts`). On an accelerator it is always False, so the loop runs its full count
    without a host read (converged iterates stop changing, so both give the same result).

    Example::

        >>> settled_on_host(torch.tensor([True, True]))
        True
        >>> settled_on_host(torch.tensor([True, False]))
        False
    """
    return host_shortcuts(done) and bool(done.all())


def solve_simplex_qp(
    gramian: Tensor, linear: Tensor | None = None, max_iter: int | None = None, tol: float = 1e-12
) -> Tensor:
    """Minimise ``½ wᵀ G w + cᵀ w`` over the probability simplex ``{w ≥ 0, Σ w = 1}``.

    With ``c = 0`` this is MGDA's min-norm problem: ``Jᵀw`` is the minimum-norm point of the
    convex hull of the gradients.

    Args:
        gramian: ``[..., T, T]`` positive semi-definite matrix ``G``.
        linear: ``[..., T]`` linear term ``c``; zero when omitted.
        max_iter: iteration cap; default ``3T + 10``.
        tol: optimality tolerance on the multipliers, relative to ``max diag G``.

    Returns:
        ``[..., T]`` optimal weights, in ``gramian``'s dtype.

    Example::

        >>> g = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
        >>> solve_simplex_qp(g)  # the min-norm point of the hull of (1, 0) and (0, 2)
        tensor([0.8000, 0.2000])
    """
    return _active_set(gramian, linear, simplex=True, max_iter=max_iter, tol=tol)


def solve_nonnegative_qp(
    gramian: Tensor, linear: Tensor, max_iter: int | None = None, tol: float = 1e-12
) -> Tensor:
    """Minimise ``½ wᵀ G w + cᵀ w`` subject to ``w ≥ 0``.

    Args:
        gramian: ``[..., T, T]`` positive semi-definite matrix ``G``.
        linear: ``[..., T]`` linear term ``c``.
        max_iter: iteration cap; default ``3T + 10``.
        tol: optimality tolerance on the multipliers, relative to ``max diag G``.

    Example::

        >>> solve_nonnegative_qp(torch.eye(2), torch.tensor([-1.0, 2.0]))
        tensor([1., 0.])
    """
    return _active_set(gramian, linear, simplex=False, max_iter=max_iter, tol=tol)


def _active_set(
    gramian: Tensor, linear: Tensor | None, simplex: bool, max_iter: int | None, tol: float
) -> Tensor:
    if gramian.ndim < 2 or gramian.shape[-1] != gramian.shape[-2]:
        raise ValueError(f"the Gramian must be [..., T, T]; got {tuple(gramian.shape)}.")
    size = gramian.shape[-1]
    iterations = max_iter if max_iter is not None else 3 * size + 10
    if iterations < 1:
        raise ValueError(f"max_iter must be positive; got {max_iter}.")
    g = gramian.double()
    c = (
        linear.double()
        if linear is not None
        else torch.zeros(g.shape[:-1], dtype=g.dtype, device=g.device)
    )
    if c.shape != g.shape[:-1]:
        raise ValueError(f"linear must be {tuple(g.shape[:-1])}; got {tuple(c.shape)}.")
    diagonal = g.diagonal(dim1=-2, dim2=-1).abs()
    scale = diagonal.amax(-1, keepdim=True).clamp_min(1e-300)
    # Relative to each weight's own curvature, so badly scaled problems are not biased; the
    # floor keeps zero rows (zero gradients) solvable.
    ridge = 1e-13 * diagonal + 1e-30 * scale
    # Multipliers below this are negative enough to free their weight.
    entry_level = -tol * scale
    faces = _Faces(g, c, ridge, simplex)
    if simplex:
        start = torch.argmin(0.5 * g.diagonal(dim1=-2, dim2=-1) + c, dim=-1, keepdim=True)
        free = torch.zeros_like(c, dtype=torch.bool).scatter(-1, start, True)
        weights = free.to(g.dtype)
    else:
        free = torch.zeros_like(c, dtype=torch.bool)
        weights = torch.zeros_like(c)
    done = torch.zeros((*c.shape[:-1], 1), dtype=torch.bool, device=c.device)
    # Each iteration is a few dozen small kernels, and on an accelerator it runs max_iter times
    # whatever the data, so the loop body is kept lean: weights outside the free set are exactly
    # zero at both ends of the step, which lets the ratio test and the drop skip the free mask.
    for _ in range(iterations):
        # ``shortfall`` is minus the step towards the face's minimiser.
        shortfall = weights - faces.minimiser(free)
        ratios = (weights / shortfall).masked_fill(shortfall <= 0, torch.inf)
        blocking = ratios.amin(-1, keepdim=True)
        reachable = blocking >= 1.0
        # Move to the face's minimiser when it is feasible, else until a weight hits zero, and
        # drop the weights that did.
        alpha = blocking.clamp_max(1.0)
        kept = free & (ratios > alpha)
        moved = torch.addcmul(weights, alpha, shortfall, value=-1.0).clamp_min(0.0) * kept
        # At the face's minimiser, free the weight with the most negative multiplier, if any.
        gradient = (g @ moved.unsqueeze(-1)).squeeze(-1) + c
        multipliers = (
            gradient - (gradient * moved).sum(-1, keepdim=True) if simplex else gradient
        ).masked_fill(kept, torch.inf)
        entering = multipliers.amin(-1, keepdim=True)
        advancing = reachable & (entering < entry_level)
        optimal = reachable ^ advancing
        grown = kept | ((multipliers == entering) & advancing)
        weights = torch.where(done, weights, moved)
        free = torch.where(done, free, grown)
        done = done | optimal
        if settled_on_host(done):
            break
    return weights.to(gramian.dtype)


class _Faces:
    """The equality-constrained minimisers of the quadratic on faces of the feasible set.

    On the face of a free set ``F`` (weights outside ``F`` fixed at zero; on the simplex, the
    free weights summing to one) the minimiser solves one KKT system: ``G`` restricted to ``F``
    (plus a tiny ridge), bordered by the sum constraint on the simplex, identity rows elsewhere.
    The bordered matrix and right-hand side are built once; each face only masks them.
    """

    def __init__(self, gramian: Tensor, linear: Tensor, ridge: Tensor, simplex: bool) -> None:
        self.size = linear.shape[-1]
        self.simplex = simplex
        if simplex:
            ones = torch.ones_like(linear).unsqueeze(-1)
            corner = torch.zeros_like(ones[..., :1, :])
            self.matrix = torch.cat(
                [torch.cat([gramian, ones], -1), torch.cat([ones.mT, corner], -1)], -2
            )
            self.rhs = torch.cat([-linear, ones[..., :1, 0]], -1)
            self.ridge = torch.cat([ridge, corner[..., 0]], -1)
            self.border = torch.ones_like(linear[..., :1], dtype=torch.bool)
        else:
            self.matrix, self.rhs, self.ridge = gramian, -linear, ridge
        self.ones = torch.ones_like(self.ridge)

    def minimiser(self, free: Tensor) -> Tensor:
        """``[..., T]`` minimiser on the face of the free set ``free`` (``[..., T]`` bools)."""
        if self.simplex:
            free = torch.cat([free, self.border], -1)
        mask = free.to(self.matrix.dtype)
        matrix = self.matrix * (mask.unsqueeze(-1) * mask.unsqueeze(-2))
        matrix.diagonal(dim1=-2, dim2=-1).add_(torch.where(free, self.ridge, self.ones))
        return _solve(matrix, mask * self.rhs)[..., : self.size]


def _solve(matrix: Tensor, rhs: Tensor) -> Tensor:
    # solve_ex with check_errors=False: torch.linalg.solve reads LAPACK's status on the host
    # (a synchronisation on CUDA) and raises on singular input, which must instead yield
    # non-finite weights for the callers' fallbacks.
    solution, _ = torch.linalg.solve_ex(matrix, rhs.unsqueeze(-1), check_errors=False)
    return solution.squeeze(-1)
