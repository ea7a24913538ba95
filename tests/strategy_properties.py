"""Property checks shared by the strategy tests, in the style of torchjd's aggregator suite.

Each check applies a strategy through the public ``aggregate`` entry point; a test module calls
the checks that its method promises.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_mtl.strategies.base import GradientBalancingStrategy

StrategyFactory = Callable[[], GradientBalancingStrategy]

KINDS = ("random", "collinear", "ill_conditioned", "duplicated", "with_zero_row")


def jacobian(rows: int, columns: int = 64, seed: int = 0, kind: str = "random") -> Tensor:
    """A float32 test Jacobian of one of the :data:`KINDS`."""
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    if kind == "collinear":
        direction = matrix[:1]
        scales = torch.rand(rows, 1, generator=generator, dtype=torch.float64) + 0.1
        matrix = direction * scales + 1e-3 * matrix
    elif kind == "ill_conditioned":
        matrix = matrix * torch.logspace(-2, 2, rows, dtype=torch.float64)[:, None]
    elif kind == "duplicated":
        if rows < 2:
            raise ValueError("a duplicated row needs at least two rows.")
        matrix[1] = matrix[0]
    elif kind == "with_zero_row":
        matrix[0] = 0.0
    elif kind != "random":
        raise ValueError(kind)
    return matrix.float()


def aggregate(make: StrategyFactory, matrix: Tensor) -> Tensor:
    return make().aggregate(matrix)


def check_descent(make: StrategyFactory, matrix: Tensor, slack: float = 1e-5) -> None:
    """Every objective's gradient has a non-negative inner product with the update."""
    direction = aggregate(make, matrix)
    products = matrix.double() @ direction.double()
    bound = slack * matrix.double().norm(dim=1) * direction.double().norm()
    assert torch.all(products >= -bound), f"not a descent direction: {products.tolist()}"


def check_scale_equivariance(make: StrategyFactory, matrix: Tensor, rtol: float = 1e-4) -> None:
    """Scaling every gradient by c > 0 scales the update by c."""
    for factor in (1e-3, 7.0):
        scaled = aggregate(make, matrix * factor)
        torch.testing.assert_close(
            scaled, aggregate(make, matrix) * factor, rtol=rtol, atol=1e-6 * factor
        )


def check_permutation_equivariance(
    make: StrategyFactory, matrix: Tensor, rtol: float = 1e-4
) -> None:
    """Reordering the objectives does not change the update."""
    order = torch.randperm(matrix.shape[0], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        aggregate(make, matrix[order]), aggregate(make, matrix), rtol=rtol, atol=1e-6
    )


def check_finite(make: StrategyFactory, matrix: Tensor) -> None:
    """The update is finite (zero rows, duplicated rows, collinear rows included)."""
    assert torch.isfinite(aggregate(make, matrix)).all()


def check_zero_at_stationarity(make: StrategyFactory, atol: float = 1e-5) -> None:
    """At a Pareto-stationary point (0 in the convex hull of the gradients) the update vanishes."""
    g = jacobian(1, 16, seed=3)[0]
    h = jacobian(1, 16, seed=4)[0]
    stationary = torch.stack([g, -g, h - h.dot(g) / g.dot(g) * g, -(h - h.dot(g) / g.dot(g) * g)])
    direction = aggregate(make, stationary)
    assert direction.norm() <= atol * stationary.norm(), f"norm {float(direction.norm())}"
