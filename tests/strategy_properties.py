"""Property checks shared by the strategy tests, in the style of torchjd's aggregator suite.

Each check applies a strategy through the public ``aggregate`` entry point; a test module calls
the checks that its method promises. The comparisons against float64 references, the argument
checks and the gradient-surgery orders that several modules use live here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_mtl.strategies._gradient_surgery import others_in_random_order
from lightning_mtl.strategies.base import (
    GradientBalancingStrategy,
    GramianBatch,
    TrainingProgress,
    step_generator,
)

StrategyFactory = Callable[[], GradientBalancingStrategy]

KINDS = ("random", "collinear", "ill_conditioned", "duplicated", "with_zero_row")


def jacobian(rows: int, columns: int = 64, seed: int = 0, kind: str = "random") -> Tensor:
    """A float32 test Jacobian of one of the :data:`KINDS`, or ``"anti_collinear"``: the
    collinear rows with random signs, nearly parallel and anti-parallel, for gradient surgery."""
    if kind == "anti_collinear":
        signs = torch.randint(0, 2, (rows, 1), generator=torch.Generator().manual_seed(seed))
        return jacobian(rows, columns, seed=seed, kind="collinear") * (signs * 2 - 1)
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


def check_promised_properties(make: StrategyFactory, matrix: Tensor, *, descent: bool) -> None:
    """The update is finite, scale- and permutation-equivariant and, if ``descent``, descends."""
    check_finite(make, matrix)
    if descent:
        check_descent(make, matrix)
    check_scale_equivariance(make, matrix)
    check_permutation_equivariance(make, matrix)


def check_non_finite_and_overflow(
    make: StrategyFactory,
    entry: tuple[int, int],
    bad_values: Sequence[float],
    mean_divisor: float = 1.0,
) -> None:
    """A non-finite gradient entry gives a non-finite update; gradients whose float32 Gramian
    overflows give the mean gradient (divided by ``mean_divisor``)."""
    for bad in bad_values:
        matrix = jacobian(3, 8, seed=1)
        matrix[entry] = bad
        assert not torch.isfinite(aggregate(make, matrix)).all()
    huge = jacobian(3, 8, seed=1) * 1e20  # finite, but its Gramian overflows float32
    torch.testing.assert_close(aggregate(make, huge), huge.mean(0) / mean_divisor)


def check_float32_weights(make: StrategyFactory) -> None:
    """The weights of a float32 Gramian are float32."""
    matrix = jacobian(3, 8, seed=2)
    batch = GramianBatch(names=("a", "b", "c"), losses=torch.ones(3), gramian=matrix @ matrix.T)
    assert make().weights(batch).dtype == torch.float32


def check_agrees_with_torchjd(
    make: StrategyFactory, aggregator: str, dtype: torch.dtype, rtol: float
) -> None:
    """The update is torchjd's ``aggregator``'s on three random Jacobians (skipped without it)."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    for seed in range(3):
        matrix = jacobian(4, 16, seed=seed).to(dtype)
        expected = getattr(aggregation, aggregator)()(matrix)
        assert_same_direction(aggregate(make, matrix), expected, matrix, rtol)


def check_same_step_same_update(make: StrategyFactory, rows: Tensor) -> None:
    """Fresh strategies give one update at the same step and another at a different step."""
    first, again, later = (
        make().aggregate(rows, progress=TrainingProgress(step=step)) for step in (4, 4, 5)
    )
    assert torch.equal(first, again)
    assert not torch.allclose(first, later)


def check_rejected(make: Callable[..., object], kwargs: dict[str, Any], message: str) -> None:
    """Constructing with ``kwargs`` raises a ``ValueError`` matching ``message``."""
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def assert_same_direction(actual: Tensor, expected: Tensor, matrix: Tensor, rtol: float) -> None:
    """Agreement to ``rtol`` relative to the expected update, or to the gradients' scale when the
    expected update is (nearly) zero."""
    scale = max(float(expected.abs().max()), 1e-3 * float(matrix.abs().max()))
    error = float((actual.double() - expected.double()).abs().max())
    assert error <= rtol * scale, f"error {error:.3e} > {rtol:.0e} × {scale:.3e}"


def assert_relative(actual: Tensor, expected: Tensor, rtol: float = 1e-5) -> None:
    """Entrywise within ``rtol``, with an absolute floor of ``rtol`` times the largest entry."""
    expected = expected.double()
    floor = rtol * float(expected.abs().max()) + 1e-30
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=floor)


def order_at(seed: int, step: int, count: int) -> Tensor:
    """The order in which each objective meets the others at ``step``, in PCGrad and GradVac."""
    return others_in_random_order(count, step_generator(seed, step, torch.device("cpu")))
