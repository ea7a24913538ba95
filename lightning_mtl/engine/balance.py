"""One balanced backward step: compute what the strategy needs, combine, write ``.grad``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_mtl.engine.jacobian import JacobianComputer, flatten, unflatten_into_grads
from lightning_mtl.engine.precision import full_precision
from lightning_mtl.strategies.base import (
    GradientBalancingStrategy,
    GradientSurgery,
    GramianBatch,
    GramianWeighting,
    JacobianBatch,
    JacobianStrategy,
    LossBatch,
    LossWeighting,
    TrainingProgress,
    gramian_of,
)


def _plain_backward(loss: Tensor) -> None:
    loss.backward()


def _no_reduce(tensor: Tensor) -> Tensor:
    return tensor


@dataclass
class Backend:
    """How a step talks to the training loop: mixed-precision scaling and other processes.

    Args:
        loss_scale: the ``16-mixed`` loss scale as a device tensor, or ``None``.
        backward: a backward pass of a scalar loss that scales it and synchronises processes
            (``LightningModule.manual_backward``); used for loss-only strategies.
        world_size: number of processes.
        rank: this process's index.
        all_reduce_sum: sums a tensor over processes.
        all_gather: stacks a tensor from every process along a new first dimension.
    """

    loss_scale: Tensor | None = None
    backward: Callable[[Tensor], None] = _plain_backward
    world_size: int = 1
    rank: int = 0
    all_reduce_sum: Callable[[Tensor], Tensor] = _no_reduce
    all_gather: Callable[[Tensor], Tensor] = field(default=lambda tensor: tensor.unsqueeze(0))


@dataclass(frozen=True)
class ObjectiveGradients:
    """Per-objective gradients of one scope on one step, in true (unscaled) units.

    Args:
        names: objective names, in row order.
        jacobian: ``[T, D]`` per-objective gradients (averaged over processes).
        update: ``[D]`` the gradient actually applied to the scope (before the optimizer).
        edited: ``[T, D]`` the per-objective gradients as a
            :class:`~lightning_mtl.strategies.GradientSurgery` strategy edited them, when an
            observer asked for them (else ``None``).
    """

    names: tuple[str, ...]
    jacobian: Tensor
    update: Tensor
    edited: Tensor | None = None


@dataclass(frozen=True)
class Scope:
    """The balanced part of the model: parameters, or a shared representation tensor.

    Args:
        parameters: the balanced parameters (parameter mode).
        representation: the shared feature tensor (representation mode).
        trunk: parameters the representation depends on (representation mode).
        others: used parameters outside the scope; they get the gradient of the plain sum.
    """

    parameters: Sequence[nn.Parameter] = ()
    representation: Tensor | None = None
    trunk: Sequence[nn.Parameter] = ()
    others: Sequence[nn.Parameter] = ()


class GradientEngine:
    """Turns stacked objectives into parameter gradients, computing no more than needed.

    * A :class:`~lightning_mtl.strategies.LossWeighting`: weights from the losses, then one
      weighted backward pass.
    * A :class:`~lightning_mtl.strategies.GramianWeighting` or
      :class:`~lightning_mtl.strategies.JacobianStrategy`: per-objective gradients of the scope
      (batched vector-Jacobian products), averaged over processes in one flattened collective,
      combined by the strategy; parameters outside the scope get the gradient of the plain sum.

    The strategy's arithmetic runs with autocast off (:func:`full_precision`).

    Under ``16-mixed`` the objectives are scaled before differentiation, the strategy sees
    unscaled gradients, and the written ``.grad`` is scaled again so that the optimizer step
    unscales it and skips steps with overflow, which is made to reach the written gradient.

    Args:
        chunk_size: objectives per batched backward pass (see :class:`JacobianComputer`).
    """

    def __init__(self, chunk_size: int | None = None) -> None:
        self.jacobians = JacobianComputer(chunk_size)

    def step(
        self,
        names: tuple[str, ...],
        objectives: Tensor,
        strategy: GradientBalancingStrategy,
        scope: Scope,
        progress: TrainingProgress,
        backend: Backend,
        observed: Mapping[str, Sequence[nn.Parameter] | None] | None = None,
        keep_edited: bool = False,
    ) -> dict[str, ObjectiveGradients]:
        """Write the balanced gradient into ``.grad``; return the observed gradients.

        Args:
            names: objective names.
            objectives: ``[T]`` objective values, attached to the graph.
            strategy: the strategy that combines them: a loss weighting, a Gramian weighting or
                a Jacobian strategy (a wrapper such as ``SharpnessAware`` is unwrapped by the
                mixin).
            scope: the balanced scope.
            progress: training progress, for scheduled strategies.
            backend: precision and process glue.
            observed: scope key → parameters (``None``: the balanced scope) for which callbacks
                want per-objective gradients on this step.
            keep_edited: also report a gradient surgery's edited gradients of the balanced scope.
        """
        if not isinstance(strategy, LossWeighting | GramianWeighting | JacobianStrategy):
            raise TypeError(
                "the engine balances a LossWeighting, a GramianWeighting or a JacobianStrategy; "
                f"got {type(strategy).__name__} (pass a wrapper's inner strategy)."
            )
        observed = dict(observed or {})
        losses = objectives.detach()
        if backend.world_size > 1:
            # Strategies with state (loss histories, learned weights) must see the same losses on
            # every process: those of the union batch.
            losses = backend.all_reduce_sum(losses.clone()) / backend.world_size
        scaled = objectives * backend.loss_scale if backend.loss_scale is not None else objectives
        extra = {
            key: self._parameter_jacobian(scaled, params, backend)
            for key, params in observed.items()
            if params is not None
        }
        balanced: ObjectiveGradients | None
        if isinstance(strategy, LossWeighting):
            with full_precision(objectives.device):
                weights = strategy(LossBatch(names=names, losses=losses, progress=progress))
            shared = (
                self._scope_jacobian(scaled, scope, backend) if None in observed.values() else None
            )
            backend.backward((weights * objectives).sum())
            balanced = (
                None
                if shared is None
                else ObjectiveGradients(names, shared, weights.to(shared.dtype) @ shared)
            )
        else:
            batch = _Step(names, losses, progress, keep_edited and None in observed.values())
            balanced = self._balance(batch, scaled, strategy, scope, backend)
        report = {
            key: ObjectiveGradients(names, jacobian, self._applied(observed[key], backend))
            for key, jacobian in extra.items()
        }
        for key, params in observed.items():
            if params is None and balanced is not None:
                report[key] = balanced
        return report

    def _balance(
        self,
        step: _Step,
        scaled: Tensor,
        strategy: GramianWeighting | JacobianStrategy,
        scope: Scope,
        backend: Backend,
    ) -> ObjectiveGradients:
        if scope.representation is not None:
            return self._balance_representation(step, scaled, strategy, scope, backend)
        jacobian = self.jacobians(scaled, scope.parameters)
        others = _grads(scaled.sum(), scope.others)
        jacobian, others = _mean_over_processes(jacobian, others, backend)
        jacobian = _unscale(jacobian, backend)
        direction, edited = self._direction(strategy, step, jacobian, backend)
        unflatten_into_grads(scope.parameters, _rescale(direction, backend))
        unflatten_into_grads(scope.others, others)
        return ObjectiveGradients(step.names, jacobian, direction, edited)

    def _balance_representation(
        self,
        step: _Step,
        scaled: Tensor,
        strategy: GramianWeighting | JacobianStrategy,
        scope: Scope,
        backend: Backend,
    ) -> ObjectiveGradients:
        representation = scope.representation
        assert representation is not None
        jacobian = _unscale(self._representation_jacobian(scaled, representation, backend), backend)
        direction, edited = self._direction(strategy, step, jacobian, backend)
        width = representation.numel()
        local = direction[backend.rank * width : (backend.rank + 1) * width]
        heads = _grads(scaled.sum(), scope.others)
        trunk = _grads(
            representation, scope.trunk, _rescale(local, backend).view_as(representation)
        )
        # The union-batch Jacobian already carries the 1/world factor, so the trunk's share is
        # summed over processes, while the heads' gradients are averaged.
        flat = torch.cat([heads / backend.world_size, trunk]) if backend.world_size > 1 else None
        if flat is not None:
            flat = backend.all_reduce_sum(flat)
            heads, trunk = flat[: heads.numel()], flat[heads.numel() :]
        unflatten_into_grads(scope.others, heads)
        unflatten_into_grads(scope.trunk, trunk)
        return ObjectiveGradients(step.names, jacobian, direction, edited)

    def _direction(
        self,
        strategy: GramianWeighting | JacobianStrategy,
        step: _Step,
        jacobian: Tensor,
        backend: Backend,
    ) -> tuple[Tensor, Tensor | None]:
        """The update of the scope, and the edited gradients if asked for and available."""
        edited = None
        with full_precision(jacobian.device):
            if isinstance(strategy, GramianWeighting):
                gramian = gramian_of(jacobian)
                weights = strategy(
                    GramianBatch(
                        names=step.names,
                        losses=step.losses,
                        gramian=gramian,
                        progress=step.progress,
                    )
                )
                direction = weights.to(jacobian.dtype) @ jacobian
            else:
                batch = JacobianBatch(
                    names=step.names, losses=step.losses, jacobian=jacobian, progress=step.progress
                )
                if step.keep_edited and isinstance(strategy, GradientSurgery):
                    result = strategy.edit(batch)
                    direction, edited = result.direction, result.rows()
                else:
                    direction = strategy(batch)
        if backend.loss_scale is not None:
            # A solver may turn overflowed inputs into finite output; adding 0 · Σ J keeps an inf
            # or NaN visible to the loss scaler, which then skips the step.
            direction = direction + jacobian.sum() * 0
        return direction, edited

    def _representation_jacobian(
        self, scaled: Tensor, representation: Tensor, backend: Backend
    ) -> Tensor:
        jacobian = self.jacobians(scaled, [representation])
        if backend.world_size == 1:
            return jacobian
        # Rows are gradients w.r.t. this process's samples: the union batch's Jacobian is the
        # concatenation over processes, each block scaled by 1/world (the losses are averaged).
        gathered = backend.all_gather(jacobian)
        return gathered.permute(1, 0, 2).reshape(jacobian.shape[0], -1) / backend.world_size

    def _scope_jacobian(self, scaled: Tensor, scope: Scope, backend: Backend) -> Tensor:
        if scope.representation is not None:
            return _unscale(
                self._representation_jacobian(scaled, scope.representation, backend), backend
            )
        return self._parameter_jacobian(scaled, scope.parameters, backend)

    def _parameter_jacobian(
        self, scaled: Tensor, parameters: Sequence[nn.Parameter], backend: Backend
    ) -> Tensor:
        jacobian, _ = _mean_over_processes(self.jacobians(scaled, parameters), None, backend)
        return _unscale(jacobian, backend)

    @staticmethod
    def _applied(parameters: Sequence[nn.Parameter] | None, backend: Backend) -> Tensor:
        assert parameters is not None
        update = flatten([_grad_or_zeros(p) for p in parameters])
        return _unscale(update, backend)


@dataclass(frozen=True)
class _Step:
    """What the engine knows of a step besides the gradients."""

    names: tuple[str, ...]
    losses: Tensor
    progress: TrainingProgress
    keep_edited: bool


def _grads(output: Tensor, inputs: Sequence[Tensor], grad_output: Tensor | None = None) -> Tensor:
    if not inputs:
        return output.new_zeros(0, dtype=torch.float32)
    grads = torch.autograd.grad(
        output,
        list(inputs),
        grad_outputs=grad_output,
        retain_graph=True,
        allow_unused=True,
        materialize_grads=True,
    )
    return flatten(grads)


def _mean_over_processes(
    jacobian: Tensor, others: Tensor | None, backend: Backend
) -> tuple[Tensor, Tensor | None]:
    if backend.world_size == 1:
        return jacobian, others
    parts = [jacobian.reshape(-1)] + ([others] if others is not None else [])
    flat = backend.all_reduce_sum(torch.cat(parts)) / backend.world_size
    reduced = flat[: jacobian.numel()].view_as(jacobian)
    return reduced, (flat[jacobian.numel() :] if others is not None else None)


def _unscale(tensor: Tensor, backend: Backend) -> Tensor:
    return tensor / backend.loss_scale if backend.loss_scale is not None else tensor


def _rescale(tensor: Tensor, backend: Backend) -> Tensor:
    return tensor * backend.loss_scale if backend.loss_scale is not None else tensor


def _grad_or_zeros(parameter: nn.Parameter) -> Tensor:
    return parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
