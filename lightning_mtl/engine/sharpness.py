"""Sharpness-aware perturbation of a parameter scope (SAM, Foret et al. 2021), as PLOT uses it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_mtl.engine.balance import Backend
from lightning_mtl.engine.jacobian import flatten, unflatten_into_grads

_TINY = 1e-12


@dataclass
class Perturbation:
    """What :func:`perturb` changed, to undo it and to train the parameters outside the scope.

    Args:
        scope: the perturbed parameters.
        offset: ``[D]`` the perturbation ``ε`` added to them (flattened, unscaled).
        others: the parameters outside the scope that the loss uses.
        other_grads: their gradient of the loss (flattened, in the loss scaler's units).
        finite: a 0-d device bool: whether the perturbing gradient was finite (else ``ε`` is 0,
            so that no NaN reaches the weights, and the step must be skipped).
    """

    scope: Sequence[nn.Parameter]
    offset: Tensor
    others: Sequence[nn.Parameter]
    other_grads: Tensor
    finite: Tensor

    def undo(self, keep: float = 0.0) -> None:
        """Remove ``(1 − keep)`` of the perturbation from the scope's weights."""
        _add_flat(self.scope, self.offset, -(1.0 - keep))

    def write_other_grads(self) -> None:
        """Give the parameters outside the scope their gradient of the unperturbed loss."""
        unflatten_into_grads(self.others, self.other_grads)


def perturb(
    loss: Tensor,
    scope: Sequence[nn.Parameter],
    others: Sequence[nn.Parameter],
    radius: float,
    backend: Backend,
) -> Perturbation:
    """Move ``scope`` to ``θ + ε`` with ``ε = ρ g / ‖g‖``, ``g`` the scope's gradient of ``loss``
    (the first-order solution of the inner max, PLOT eq. 3–4). One backward pass, which also
    yields the gradient of the parameters outside the scope; under DDP both are averaged over
    processes in one collective; under ``16-mixed`` the loss is scaled and ``ε`` unscaled.

    Example::

        >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
        >>> state = perturb((w**2).sum() / 2, [w], [], radius=0.5, backend=Backend())
        >>> w.data  # moved by 0.5 along g / ‖g‖ = (0.6, 0.8)
        tensor([3.3000, 4.4000])
        >>> state.undo()
        >>> w.data
        tensor([3., 4.])
    """
    scaled = loss * backend.loss_scale if backend.loss_scale is not None else loss
    grads = torch.autograd.grad(
        scaled, [*scope, *others], allow_unused=True, materialize_grads=True
    )
    flat = flatten(grads)
    if backend.world_size > 1:
        flat = backend.all_reduce_sum(flat) / backend.world_size
    size = sum(p.numel() for p in scope)
    scope_grad = flat[:size]
    if backend.loss_scale is not None:
        scope_grad = scope_grad / backend.loss_scale
    offset = radius * scope_grad / (scope_grad.norm() + _TINY)
    # Chosen on the device: a non-finite gradient (an overflow under 16-mixed, or a NaN loss)
    # must not move the weights; the training loop skips the step on `finite`.
    finite = torch.isfinite(flat).all()
    offset = torch.where(finite, offset, torch.zeros_like(offset))
    _add_flat(scope, offset, 1.0)
    return Perturbation(
        scope=scope, offset=offset, others=others, other_grads=flat[size:], finite=finite
    )


def _add_flat(parameters: Sequence[nn.Parameter], flat: Tensor, factor: float) -> None:
    offset = 0
    with torch.no_grad():
        for parameter in parameters:
            size = parameter.numel()
            parameter.add_(flat[offset : offset + size].view_as(parameter), alpha=factor)
            offset += size
