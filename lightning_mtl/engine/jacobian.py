"""Per-objective gradients of a set of tensors: batched vector-Jacobian products."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor


class JacobianComputer:
    """Computes the ``[T, D]`` matrix of per-objective gradients of ``inputs``.

    The fast path is one batched vector-Jacobian product (``is_grads_batched``, i.e. ``vmap``
    over the backward pass) per chunk of ``chunk_size`` objectives; ``None`` means all objectives
    in one chunk. If an operator of the model has no batching rule, the computer warns once and
    falls back to one backward pass per objective for the rest of its life.

    Args:
        chunk_size: objectives per batched backward pass; lower it to cap the memory of the
            batched pass (it grows with the number of rows).

    Example::

        >>> import torch
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> losses = torch.stack([(w**2).sum(), w.sum()])
        >>> JacobianComputer()(losses, [w])
        tensor([[2., 4.],
                [1., 1.]])
    """

    def __init__(self, chunk_size: int | None = None) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None; got {chunk_size}.")
        self.chunk_size = chunk_size
        self.batched = True

    def __call__(self, outputs: Tensor, inputs: Sequence[Tensor]) -> Tensor:
        """Gradients of each entry of the 1-D ``outputs`` with respect to ``inputs``, flattened.

        The graph is retained, so the caller can still differentiate ``outputs`` afterwards.
        Inputs an output does not depend on contribute zeros.
        """
        if outputs.ndim != 1:
            raise ValueError(f"outputs must be 1-D; got shape {tuple(outputs.shape)}.")
        if not inputs:
            raise ValueError("there are no inputs to differentiate with respect to.")
        rows = outputs.shape[0]
        sizes = [tensor.numel() for tensor in inputs]
        jacobian = torch.empty(rows, sum(sizes), dtype=torch.float32, device=outputs.device)
        step = self.chunk_size or rows
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            for offset, block in zip(
                _offsets(sizes), self._chunk(outputs, inputs, start, stop), strict=True
            ):
                jacobian[start:stop, offset : offset + block[0].numel()] = block.reshape(
                    stop - start, -1
                )
        return jacobian

    def _chunk(
        self, outputs: Tensor, inputs: Sequence[Tensor], start: int, stop: int
    ) -> list[Tensor]:
        if self.batched:
            selector = torch.eye(outputs.shape[0], dtype=outputs.dtype, device=outputs.device)
            try:
                grads = torch.autograd.grad(
                    outputs,
                    list(inputs),
                    grad_outputs=selector[start:stop],
                    is_grads_batched=True,
                    retain_graph=True,
                    allow_unused=True,
                    materialize_grads=True,
                )
                return list(grads)
            except RuntimeError as error:
                warnings.warn(
                    "The batched backward pass failed, so per-objective gradients fall back to "
                    f"one backward pass per objective (slower). Cause: {error}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.batched = False
        per_row = [
            torch.autograd.grad(
                outputs[row],
                list(inputs),
                retain_graph=True,
                allow_unused=True,
                materialize_grads=True,
            )
            for row in range(start, stop)
        ]
        return [torch.stack(column) for column in zip(*per_row, strict=True)]


def _offsets(sizes: Sequence[int]) -> list[int]:
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += size
    return offsets


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one flat float32 vector (the layout of a Jacobian's columns)."""
    return torch.cat([tensor.reshape(-1).float() for tensor in tensors])


def unflatten_into_grads(parameters: Sequence[Tensor], flat: Tensor) -> None:
    """Write consecutive slices of ``flat`` into the ``.grad`` of each parameter."""
    offset = 0
    for parameter in parameters:
        size = parameter.numel()
        parameter.grad = flat[offset : offset + size].view_as(parameter).to(parameter.dtype)
        offset += size
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries; parameters have {offset}.")
