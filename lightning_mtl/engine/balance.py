"""One balanced backward step: compute what the strategy needs, combine, write ``.grad``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_mtl.engine.jacobian import (
    JacobianComputer,
    JacobianForm,
    flatten,
    unflatten_into_grads,
)
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
        no_sync: a context in which ``backward`` does not synchronise processes (the
            micro-batches of an accumulated step before the last).
    """

    loss_scale: Tensor | None = None
    backward: Callable[[Tensor], None] = _plain_backward
    world_size: int = 1
    rank: int = 0
    all_reduce_sum: Callable[[Tensor], Tensor] = _no_reduce
    all_gather: Callable[[Tensor], Tensor] = field(default=lambda tensor: tensor.unsqueeze(0))
    no_sync: Callable[[], AbstractContextManager[object]] = nullcontext


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
class StepResult:
    """What a balanced step leaves for the training loop.

    Args:
        observed: scope key → the per-objective gradients an observer asked for.
        losses: ``[T]`` detached objective values, averaged over processes (every process holds
            the same values, so decisions taken on them agree).
        gradient_norms: ``[T]`` norms of the per-objective gradients of the balanced scope, when
            asked for and computed on this step (not for a loss weighting unobserved).
    """

    observed: dict[str, ObjectiveGradients]
    losses: Tensor
    gradient_norms: Tensor | None = None


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
        accumulate_grad_batches: micro-batches per optimizer step (see :meth:`step`).
        jacobian_form: how per-objective gradients are computed (see
            :class:`JacobianComputer`).
    """

    def __init__(
        self,
        chunk_size: int | None = None,
        accumulate_grad_batches: int = 1,
        jacobian_form: JacobianForm = "auto",
    ) -> None:
        if isinstance(accumulate_grad_batches, bool) or not (
            isinstance(accumulate_grad_batches, int) and accumulate_grad_batches >= 1
        ):
            raise ValueError(
                "accumulate_grad_batches must be a positive integer; got "
                f"{accumulate_grad_batches!r}."
            )
        self.jacobians = JacobianComputer(chunk_size, jacobian_form)
        self.accumulate_grad_batches = accumulate_grad_batches
        self._pending: _Pending | None = None

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
        final: bool = True,
        norms: bool = False,
    ) -> StepResult | None:
        """Write the balanced gradient into ``.grad``; return the observed gradients and the
        objectives' values averaged over processes.

        With ``accumulate_grad_batches = k > 1`` the optimizer step is made of ``k`` micro-batch
        calls: every call but the ``final`` one adds its gradients to running sums on this
        process and returns ``None``; the final one averages them over the micro-batches (and,
        in one collective, over processes), takes the one balancing decision and writes
        ``.grad``. For batch-mean objectives of equal micro-batches that is the step of the
        concatenated batch. A value-free loss weighting instead fixes its weights on the first
        micro-batch and backpropagates each one (gradients accumulate in ``.grad``; processes
        synchronise on the final one only); a loss weighting that reads the losses, the
        representation scope and sharpness-aware training cannot accumulate.

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
            final: whether this call completes the optimizer step (always, without accumulation).
            norms: also return the per-objective gradient norms of the balanced scope where the
                step has those gradients.
        """
        if not isinstance(strategy, LossWeighting | GramianWeighting | JacobianStrategy):
            raise TypeError(
                "the engine balances a LossWeighting, a GramianWeighting or a JacobianStrategy; "
                f"got {type(strategy).__name__} (pass a wrapper's inner strategy)."
            )
        if self.accumulate_grad_batches > 1:
            check_accumulation(strategy, scope)
        observed = dict(observed or {})
        scaled = objectives * backend.loss_scale if backend.loss_scale is not None else objectives
        pending = self._pending = self._pending or _Pending()
        pending.count += 1
        pending.add(_LOSSES, objectives.detach())
        for key, params in observed.items():
            if params is not None:
                pending.add(key, self.jacobians(scaled, params))
        if isinstance(strategy, LossWeighting):
            return self._loss_step(
                names,
                objectives,
                scaled,
                strategy,
                scope,
                progress,
                backend,
                observed,
                final,
                norms,
            )
        step = _Step(names, progress, keep_edited and None in observed.values())
        if scope.representation is not None:
            self._pending = None
            parts = _mean_over_processes(pending.means(), backend)
            balanced = self._balance_representation(
                step, parts[_LOSSES], scaled, strategy, scope, backend
            )
            return self._report(step.names, parts, observed, balanced, backend, norms)
        pending.add(_BALANCED, self.jacobians(scaled, scope.parameters))
        pending.add(_OTHERS, _grads(scaled.sum(), scope.others))
        if not final:
            return None
        self._pending = None
        parts = _mean_over_processes(pending.means(), backend)
        jacobian = _unscale(parts.pop(_BALANCED), backend)
        direction, edited = self._direction(strategy, step, parts[_LOSSES], jacobian, backend)
        unflatten_into_grads(scope.parameters, _rescale(direction, backend))
        unflatten_into_grads(scope.others, parts.pop(_OTHERS))
        balanced = ObjectiveGradients(names, jacobian, direction, edited)
        return self._report(names, parts, observed, balanced, backend, norms)

    def _loss_step(
        self,
        names: tuple[str, ...],
        objectives: Tensor,
        scaled: Tensor,
        strategy: LossWeighting,
        scope: Scope,
        progress: TrainingProgress,
        backend: Backend,
        observed: dict[str, Sequence[nn.Parameter] | None],
        final: bool,
        norms: bool,
    ) -> StepResult | None:
        """One weighted backward pass (per micro-batch); the per-objective gradients of the
        balanced scope only when an observer asks for them."""
        pending = self._pending
        assert pending is not None
        if None in observed.values():
            pending.add(_BALANCED, self._local_scope_jacobian(scaled, scope, backend))
        if pending.weights is None:
            losses = objectives.detach()
            if self.accumulate_grad_batches == 1:
                # Strategies with state (loss histories, learned weights) must see the same
                # losses on every process: those of the union batch.
                losses = _mean_over_processes({_LOSSES: losses}, backend)[_LOSSES]
                pending.sums[_LOSSES] = losses  # averaged already
            with full_precision(objectives.device):
                pending.weights = strategy(LossBatch(names=names, losses=losses, progress=progress))
        weights = pending.weights
        with nullcontext() if final else backend.no_sync():
            backend.backward((weights * objectives).sum() / self.accumulate_grad_batches)
        if not final:
            return None
        self._pending = None
        means = pending.means()
        if self.accumulate_grad_batches == 1:
            losses = means.pop(_LOSSES)
            parts = {**_mean_over_processes(means, backend), _LOSSES: losses}
        else:
            parts = _mean_over_processes(means, backend)
        balanced = None
        if None in observed.values():
            shared = _unscale(parts.pop(_BALANCED), backend)
            balanced = ObjectiveGradients(names, shared, weights.to(shared.dtype) @ shared)
        return self._report(names, parts, observed, balanced, backend, norms)

    def _report(
        self,
        names: tuple[str, ...],
        parts: dict[str, Tensor],
        observed: Mapping[str, Sequence[nn.Parameter] | None],
        balanced: ObjectiveGradients | None,
        backend: Backend,
        norms: bool = False,
    ) -> StepResult:
        report = {}
        for key, params in observed.items():
            if params is None:
                if balanced is not None:
                    report[key] = balanced
            else:
                jacobian = _unscale(parts[key], backend)
                report[key] = ObjectiveGradients(names, jacobian, self._applied(params, backend))
        gradient_norms = _row_norms(balanced.jacobian) if norms and balanced is not None else None
        return StepResult(report, parts[_LOSSES], gradient_norms)

    def _local_scope_jacobian(self, scaled: Tensor, scope: Scope, backend: Backend) -> Tensor:
        """This process's per-objective gradients of the balanced scope (the representation's
        gathered over processes: they are of different samples, not to be averaged)."""
        if scope.representation is not None:
            return self._representation_jacobian(scaled, scope.representation, backend)
        return self.jacobians(scaled, scope.parameters)

    def _balance_representation(
        self,
        step: _Step,
        losses: Tensor,
        scaled: Tensor,
        strategy: GramianWeighting | JacobianStrategy,
        scope: Scope,
        backend: Backend,
    ) -> ObjectiveGradients:
        representation = scope.representation
        assert representation is not None
        jacobian = _unscale(self._representation_jacobian(scaled, representation, backend), backend)
        direction, edited = self._direction(strategy, step, losses, jacobian, backend)
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
        losses: Tensor,
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
                        losses=losses,
                        gramian=gramian,
                        progress=step.progress,
                    )
                )
                direction = weights.to(jacobian.dtype) @ jacobian
            else:
                batch = JacobianBatch(
                    names=step.names, losses=losses, jacobian=jacobian, progress=step.progress
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

    @staticmethod
    def _applied(parameters: Sequence[nn.Parameter] | None, backend: Backend) -> Tensor:
        assert parameters is not None
        update = flatten([_grad_or_zeros(p) for p in parameters])
        return _unscale(update, backend)


@dataclass(frozen=True)
class _Step:
    """What the engine knows of a step besides the gradients and the losses."""

    names: tuple[str, ...]
    progress: TrainingProgress
    keep_edited: bool


_LOSSES, _BALANCED, _OTHERS = "losses", "balanced scope", "outside the scope"


class _Pending:
    """Running sums over the micro-batches of one optimizer step (a single one without gradient
    accumulation): flattened gradients and losses by key, and a value-free loss weighting's
    weights, fixed on the first micro-batch."""

    def __init__(self) -> None:
        self.count = 0
        self.sums: dict[str, Tensor] = {}
        self.weights: Tensor | None = None

    def add(self, key: str, value: Tensor) -> None:
        self.sums[key] = value if key not in self.sums else self.sums[key] + value

    def means(self) -> dict[str, Tensor]:
        if self.count == 1:
            return dict(self.sums)
        return {key: value / self.count for key, value in self.sums.items()}


def check_accumulation(strategy: GradientBalancingStrategy, scope: Scope) -> None:
    """Refuse gradient accumulation where the accumulated step would not be the concatenated
    batch's: a loss weighting that reads the losses needs all of them before weighing the first
    backward pass, and the representation scope's Jacobian is of each micro-batch's own samples.

    Example::

        >>> from lightning_mtl.strategies import DWA, MGDA
        >>> check_accumulation(MGDA(), Scope())
        >>> check_accumulation(DWA(), Scope())
        Traceback (most recent call last):
        ...
        ValueError: DWA reads the objectives' values ...
    """
    if isinstance(strategy, LossWeighting) and strategy.reads_loss_values:
        raise ValueError(
            f"{type(strategy).__name__} reads the objectives' values before it weighs them, so "
            "it cannot accumulate micro-batches: use a value-free loss weighting "
            "(LinearScalarization, PGI, RLW) or a gradient strategy with accumulate_grad_batches."
        )
    if scope.representation is not None:
        raise ValueError(
            "the representation scope balances the gradients of each micro-batch's own features "
            "and cannot accumulate micro-batches: balance a parameter scope with "
            "accumulate_grad_batches."
        )


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


def _mean_over_processes(parts: dict[str, Tensor], backend: Backend) -> dict[str, Tensor]:
    """The parts averaged over processes, in one flattened collective."""
    if backend.world_size == 1 or not parts:
        return parts
    flat = backend.all_reduce_sum(torch.cat([part.reshape(-1).float() for part in parts.values()]))
    flat = flat / backend.world_size
    averaged, offset = {}, 0
    for key, part in parts.items():
        averaged[key] = flat[offset : offset + part.numel()].view_as(part)
        offset += part.numel()
    return averaged


def _row_norms(jacobian: Tensor) -> Tensor:
    with full_precision(jacobian.device):
        return jacobian.float().norm(dim=1)


def _unscale(tensor: Tensor, backend: Backend) -> Tensor:
    return tensor / backend.loss_scale if backend.loss_scale is not None else tensor


def _rescale(tensor: Tensor, backend: Backend) -> Tensor:
    return tensor * backend.loss_scale if backend.loss_scale is not None else tensor


def _grad_or_zeros(parameter: nn.Parameter) -> Tensor:
    return parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
