"""The strategy contract: what a gradient-balancing method asks of the engine and returns."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor


class Requirement(enum.Enum):
    """What a strategy needs the engine to compute, in increasing cost.

    ``LOSSES``: the objective values only; the update is one weighted backward pass.
    ``GRAMIAN``: the ``[T, T]`` Gramian ``J Jᵀ`` of the per-objective gradients of the scope.
    ``JACOBIAN``: the full ``[T, D]`` matrix of per-objective gradients of the scope.
    """

    LOSSES = "losses"
    GRAMIAN = "gramian"
    JACOBIAN = "jacobian"


@dataclass(frozen=True)
class TrainingProgress:
    """Where training stands, as seen by a strategy with a schedule.

    Args:
        step: optimizer steps taken so far.
        epoch: the current epoch, counted from 0.
        total_steps: optimizer steps the whole run will take, if known.
        total_epochs: epochs the whole run will take, if known.
    """

    step: int = 0
    epoch: int = 0
    total_steps: int | None = None
    total_epochs: int | None = None


@dataclass(frozen=True)
class ObjectiveBatch:
    """Everything the engine hands a strategy for one step.

    Only the fields that the strategy's :class:`Requirement` asks for are filled; the others
    are ``None``.

    Args:
        names: the objectives' names, in row order.
        losses: ``[T]`` detached objective values.
        jacobian: ``[T, D]`` per-objective gradients of the scope.
        gramian: ``[T, T]`` inner products of those gradients.
        progress: the training progress at this step.
    """

    names: tuple[str, ...]
    losses: Tensor | None = None
    jacobian: Tensor | None = None
    gramian: Tensor | None = None
    progress: TrainingProgress = TrainingProgress()

    @property
    def num_objectives(self) -> int:
        return len(self.names)


class GradientBalancingStrategy:
    """Base class of every gradient-balancing method.

    A subclass sets :attr:`requirement` and overrides :meth:`weights` (a weighting of the
    objectives; enough for loss-based and Gramian-based methods) or :meth:`direction` (the
    combined update itself; for methods that transform individual gradients, such as PCGrad).
    The engine computes no more than :attr:`requirement` asks for.

    State that must survive a checkpoint (schedules, moving averages, warm starts) is returned by
    :meth:`state_dict` as plain Python values and tensors, so that checkpoints load with
    ``weights_only=True``.

    Outside Lightning, :meth:`aggregate` applies the strategy to a per-objective Jacobian.

    Example::

        >>> import torch
        >>> from lightning_mtl.strategies import LinearScalarization
        >>> LinearScalarization().aggregate(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
        tensor([1., 3.])
    """

    requirement: ClassVar[Requirement] = Requirement.JACOBIAN

    sam_radius: float | None = None
    """A radius ``ρ`` turns on a sharpness-aware step: the mixin first perturbs the balanced
    scope by ``ρ g / ‖g‖`` and balances the objectives there (see PLOT)."""

    record_adjusted: bool = False
    """Set by diagnostics callbacks on their cadence: a strategy that edits individual gradients
    (PCGrad, GradVac, RGB, ...) then keeps the edited per-objective gradients of that step in
    :attr:`adjusted_gradients`, as a ``[T, D]`` tensor."""
    adjusted_gradients: Tensor | None = None

    def setup(self, names: Sequence[str]) -> None:
        """Check the objective names once, before the first step that uses them.

        Raises:
            ValueError: when the strategy cannot work with these objectives.
        """

    def weights(self, batch: ObjectiveBatch) -> Tensor:
        """Return ``[T]`` weights; the update is ``Σ_t w_t ∇L_t``."""
        raise TypeError(
            f"{type(self).__name__} computes a direction, not weights; call direction()."
        )

    def direction(self, batch: ObjectiveBatch) -> Tensor:
        """Return the ``[D]`` combined update from ``batch.jacobian``."""
        if batch.jacobian is None:
            raise ValueError(f"{type(self).__name__}.direction needs the jacobian.")
        weights = self.weights(batch)
        return weights.to(batch.jacobian.dtype) @ batch.jacobian

    @property
    def computes_weights(self) -> bool:
        """Whether the strategy overrides :meth:`weights` (so its update is a weighted sum)."""
        return type(self).weights is not GradientBalancingStrategy.weights

    def aggregate(
        self,
        jacobian: Tensor,
        *,
        losses: Tensor | None = None,
        names: Sequence[str] | None = None,
        progress: TrainingProgress | None = None,
    ) -> Tensor:
        """Combine the rows of a per-objective Jacobian into one update direction.

        Args:
            jacobian: ``[T, D]``, one gradient per row.
            losses: optional ``[T]`` objective values, for strategies that use them.
            names: optional objective names; default ``("0", "1", ...)``.
            progress: optional training progress, for strategies with a schedule.

        Returns:
            The ``[D]`` combined direction.
        """
        if jacobian.ndim != 2:
            raise ValueError(f"jacobian must have shape [T, D]; got {tuple(jacobian.shape)}.")
        if jacobian.shape[0] == 0:
            raise ValueError("jacobian has no rows: there must be at least one objective.")
        names = tuple(names) if names is not None else tuple(str(i) for i in range(len(jacobian)))
        if len(names) != jacobian.shape[0]:
            raise ValueError(f"got {len(names)} names for {jacobian.shape[0]} jacobian rows.")
        self.setup(names)
        batch = ObjectiveBatch(
            names=names,
            losses=losses,
            jacobian=jacobian,
            gramian=gramian_of(jacobian) if self.requirement is Requirement.GRAMIAN else None,
            progress=progress if progress is not None else TrainingProgress(),
        )
        return self.direction(batch)

    def log_values(self) -> dict[str, Tensor | float]:
        """Scalars worth logging after a step (e.g. a scheduled coefficient)."""
        return {}

    state_fields: ClassVar[tuple[str, ...]] = ()
    """Attributes that make up the strategy's state; :meth:`state_dict` and
    :meth:`load_state_dict` save and restore exactly these."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (the :attr:`state_fields`): plain Python values and tensors only."""
        return {name: getattr(self, name) for name in self.state_fields}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        for name in self.state_fields:
            setattr(self, name, state_dict[name])

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def objective_losses(batch: ObjectiveBatch, method: str) -> Tensor:
    """``batch.losses``, or a clear error for loss-based methods applied without them."""
    if batch.losses is None:
        raise ValueError(
            f"{method} weighs objectives by their loss values: pass losses=... to aggregate()."
        )
    return batch.losses


def weight_log_values(names: tuple[str, ...], weights: Tensor | None) -> dict[str, Tensor | float]:
    """``{"weight/<name>": w}`` for the weights of the last step, for :meth:`log_values`."""
    if weights is None:
        return {}
    return {f"weight/{name}": value for name, value in zip(names, weights, strict=True)}


def device_vector(values: Sequence[float], like: Tensor) -> Tensor:
    """A float32 vector of Python numbers on ``like``'s device.

    Filled by kernels with scalar arguments: ``torch.tensor(values, device="cuda")`` would make
    a blocking host-to-device copy, that is a host synchronisation in the training step.
    """
    vector = torch.empty(len(values), dtype=torch.float32, device=like.device)
    for index, value in enumerate(values):
        vector[index].fill_(value)
    return vector


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """A random generator for one training step, the same on every process and after resume.

    Randomised strategies (RLW, GradDrop, PCGrad's order) draw from it so that DDP ranks agree
    without communication and a resumed run repeats the uninterrupted one.

    Example::

        >>> a = torch.rand(2, generator=step_generator(0, 7, torch.device("cpu")))
        >>> b = torch.rand(2, generator=step_generator(0, 7, torch.device("cpu")))
        >>> torch.equal(a, b)
        True
    """
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step) % (2**63))
    return generator


def gramian_of(jacobian: Tensor) -> Tensor:
    """The ``[T, T]`` matrix of inner products of the rows of ``jacobian``, in float32 or wider."""
    wide = jacobian if jacobian.dtype in (torch.float32, torch.float64) else jacobian.float()
    return wide @ wide.T
