"""Shared maths of the gradient-surgery strategies: PCGrad, GradVac and GradDrop.

PCGrad and GradVac change each objective's gradient ``g_i`` by adding multiples of the other
objectives' gradients ``g_j``, meeting the others one at a time in a random order. A changed
gradient therefore stays a combination of the original ones, ``g'_i = Σ_k C_ik g_k``, and
everything their rules look at is a function of the ``[T, T]`` coefficients ``C`` and of the
Gramian ``G = J Jᵀ``: ``g'_i · g_j = (C G)_ij`` and ``‖g'_i‖² = Σ_k C_ik (C G)_ik``. So the
surgery never touches a ``[T, D]`` tensor: one pass over the Jacobian builds ``G``, ``T − 1``
rounds of ``O(T²)`` work update ``C`` and ``C G`` (round ``k`` treats every objective at once:
objective ``i`` meets the ``k``-th objective of its own random order), and one more pass over
the Jacobian forms the update ``Σ_i g'_i = (1ᵀ C) J``.

Both passes over the Jacobian accumulate in float64, one block of columns at a time, so memory
stays ``O(T²)`` plus one block. Products of float32 numbers are exact in float64, so the Gramian
carries no float32 rounding: cosines of nearly parallel gradients, and the decisions taken on
them, keep their digits; and the update, whose coefficients are large and of mixed signs when
gradients nearly cancel, is summed without losing the small remainder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

# Entries per block of columns: 64 MiB of float32, 128 MiB once widened to float64.
_BLOCK_ENTRIES = 1 << 24
# Entries per float64 block of the two passes over the Jacobian on a CPU: 512 KiB, so that the
# widened copy stays in the cache and its one buffer is reused, where a copy of the whole
# Jacobian would be fresh memory (page faults) on every step. On an accelerator the blocks stay
# large: each one costs kernel launches, not cache.
_CPU_WIDE_BLOCK_ENTRIES = 1 << 16


def checked_seed(seed: int) -> int:
    """``seed`` if it is an integer (the per-step generator's seed).

    Raises:
        ValueError: for anything else, booleans included.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer; got {seed!r}.")
    return seed


def column_blocks(matrix: Tensor, entries: int = _BLOCK_ENTRIES) -> tuple[Tensor, ...]:
    """Views of consecutive column ranges of ``matrix``, of at most ``entries`` (2²⁴) entries
    each, so that the temporaries of a computation over a ``[T, D]`` Jacobian stay small.

    Example::

        >>> [block.shape[1] for block in column_blocks(torch.zeros(2, 5))]
        [5]
    """
    width = max(1, entries // max(1, matrix.shape[0]))
    return matrix.split(width, dim=1)


def widened_blocks(matrix: Tensor) -> Iterator[tuple[int, Tensor]]:
    """``(first column, float64 copy)`` of each block of :func:`column_blocks`, written into one
    buffer that every block reuses: use each block before taking the next. The blocks are cache-
    sized on a CPU and large elsewhere (see ``_CPU_WIDE_BLOCK_ENTRIES``).

    Example::

        >>> [(start, block.tolist()) for start, block in widened_blocks(torch.eye(2))]
        [(0, [[1.0, 0.0], [0.0, 1.0]])]
    """
    entries = _CPU_WIDE_BLOCK_ENTRIES if matrix.device.type == "cpu" else _BLOCK_ENTRIES
    blocks = column_blocks(matrix, entries)
    buffer = torch.empty(
        matrix.shape[0], blocks[0].shape[1], dtype=torch.float64, device=matrix.device
    )
    start = 0
    for block in blocks:
        wide = buffer[:, : block.shape[1]]
        wide.copy_(block)
        yield start, wide
        start += block.shape[1]


def float64_gramian(jacobian: Tensor) -> Tensor:
    """The ``[T, T]`` Gramian ``J Jᵀ`` accumulated in float64.

    Example::

        >>> float64_gramian(torch.tensor([[1.0, 2.0], [3.0, 0.0]]))
        tensor([[5., 3.],
                [3., 9.]], dtype=torch.float64)
    """
    size = jacobian.shape[0]
    gramian = torch.zeros(size, size, dtype=torch.float64, device=jacobian.device)
    for _, wide in widened_blocks(jacobian):
        gramian.addmm_(wide, wide.T)
    return gramian


def combine(weights: Tensor, jacobian: Tensor) -> Tensor:
    """``weights @ jacobian`` accumulated in float64, returned in the Jacobian's dtype.

    Example::

        >>> combine(torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 1e-8], [1.0, 0.0]]))
        tensor([0.0000e+00, 1.0000e-08])
    """
    wide_weights = weights.double()
    update = torch.empty(jacobian.shape[1], dtype=jacobian.dtype, device=jacobian.device)
    for start, wide in widened_blocks(jacobian):
        update[start : start + wide.shape[1]] = wide_weights @ wide
    return update


def others_in_random_order(num_tasks: int, generator: torch.Generator) -> Tensor:
    """``[T, T − 1]`` indices on the generator's device: row ``i`` is a uniformly random order of
    the objectives other than ``i``, drawn independently for every row.

    The order of row ``i`` is the ranking of ``T − 1`` float64 uniform keys drawn by one
    ``torch.rand(T, T − 1)`` call, with ranks from ``i`` upwards shifted by one to skip ``i``.

    Example::

        >>> from lightning_mtl.strategies.base import step_generator
        >>> order = others_in_random_order(3, step_generator(0, 0, torch.device("cpu")))
        >>> [sorted(row) for row in order.tolist()]
        [[1, 2], [0, 2], [0, 1]]
    """
    device = generator.device
    keys = torch.rand(
        num_tasks, num_tasks - 1, generator=generator, device=device, dtype=torch.float64
    )
    ranks = keys.argsort(dim=1)
    rows = torch.arange(num_tasks, device=device).unsqueeze(1)
    return ranks + (ranks >= rows).long()


@dataclass(frozen=True)
class Visit:
    """One round of the surgery: every objective ``i`` meets objective ``j = others[i]``.

    All fields are ``[T]`` float64 tensors (``others`` is an index tensor), about ``g'_i``, the
    gradient of ``i`` as changed by the earlier rounds, and the original ``g_j``.

    Args:
        others: the objective ``j`` that each ``i`` meets.
        inner: ``g'_i · g_j``.
        sqnorm: ``‖g'_i‖²``.
        other_sqnorm: ``‖g_j‖²``.
        cosine: ``cos(g'_i, g_j)``; 0 when either gradient is zero.
    """

    others: Tensor
    inner: Tensor
    sqnorm: Tensor
    other_sqnorm: Tensor
    cosine: Tensor


# A rule returns, for a Visit, the [T] multiples a_i of the change g'_i ← g'_i + a_i g_j.
Rule = Callable[[Visit], Tensor]


@dataclass(frozen=True)
class Surgery:
    """What the surgery did, in terms of the original gradients.

    Args:
        coefficients: ``[T, T]`` float64 ``C``: the changed gradients are ``C @ J``. The columns
            of objectives whose gradient holds an inf or a NaN are NaN.
        cosines: ``[T, T]`` float64: entry ``(i, j)`` is ``cos(g'_i, g_j)`` when ``i`` met ``j``;
            the diagonal (never visited) is 0.
    """

    coefficients: Tensor
    cosines: Tensor


def sequential_surgery(jacobian: Tensor, order: Tensor, rule: Rule) -> Surgery:
    """Let every objective ``i`` meet the others in the order of row ``i`` of ``order``, changing
    ``g'_i`` by ``rule`` at each meeting; all objectives advance together, one round per column.

    Args:
        jacobian: ``[T, D]`` original gradients.
        order: ``[T, T − 1]`` from :func:`others_in_random_order`.
        rule: the change at a meeting.

    Example::

        >>> def halve_towards(visit):  # g'_i ← g'_i + ½ g_j
        ...     return torch.full_like(visit.inner, 0.5)
        >>> surgery = sequential_surgery(torch.eye(2), torch.tensor([[1], [0]]), halve_towards)
        >>> surgery.coefficients
        tensor([[1.0000, 0.5000],
                [0.5000, 1.0000]], dtype=torch.float64)
    """
    gramian = float64_gramian(jacobian)
    size = gramian.shape[0]
    rows = torch.arange(size, device=gramian.device)
    sqnorms = gramian.diagonal()
    coefficients = torch.eye(size, dtype=torch.float64, device=gramian.device)
    inner = gramian.clone()  # C G: row i holds g'_i · g_l for every l
    cosines = torch.zeros_like(gramian)
    for others in order.T:
        current = inner[rows, others]
        # Recomputed rather than updated, so that rounding does not accumulate over the rounds.
        sqnorm = (coefficients * inner).sum(dim=1).clamp_min(0.0)
        other_sqnorm = sqnorms[others]
        cosine = _cosine(current, sqnorm, other_sqnorm)
        step = rule(Visit(others, current, sqnorm, other_sqnorm, cosine))
        coefficients = coefficients.index_put((rows, others), step, accumulate=True)
        inner = inner + step.unsqueeze(1) * gramian[others]
        cosines = cosines.index_put((rows, others), cosine)
    # A rule's comparisons read False on NaN, which would silently drop an overflowed gradient;
    # 0 · ‖g_k‖² is NaN exactly when g_k holds an inf or a NaN, and the loss scaler must see it.
    return Surgery(coefficients + 0.0 * sqnorms, cosines)


def positive_part(values: Tensor) -> Tensor:
    """``values`` where positive, else 1: a divisor that is safe where a ``torch.where`` discards
    the quotient anyway (dividing by 0 there would still put a NaN in the discarded branch)."""
    return torch.where(values > 0, values, torch.ones_like(values))


def _cosine(inner: Tensor, sqnorm: Tensor, other_sqnorm: Tensor) -> Tensor:
    # As in engine.geometry.unit_rows, a zero gradient has cosine 0 with everything; here the
    # test is exact zero, since float64 norms of float32 gradients can be far below 1e-12.
    product = (sqnorm * other_sqnorm).sqrt()
    return (inner / positive_part(product)).clamp(-1.0, 1.0)
