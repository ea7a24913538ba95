"""The strategy contract: what a gradient-balancing method receives from the engine and returns.

A strategy declares what it consumes by its base class, and receives exactly that:

* :class:`LossWeighting`: weights from the objectives' values (a :class:`LossBatch`); the update
  is one weighted backward pass.
* :class:`GramianWeighting`: weights from the ``[T, T]`` Gramian ``J Jᵀ`` of the per-objective
  gradients (a :class:`GramianBatch`); the update is ``wᵀ J``.
* :class:`JacobianStrategy`: the update direction from the ``[T, D]`` Jacobian itself (a
  :class:`JacobianBatch`).
* :class:`GradientSurgery`: a :class:`JacobianStrategy` that edits each objective's gradient and
  sums the edited rows; diagnostics can ask for the edited rows.

The engine computes no more than the base class asks for.
"""

from __future__ import annotations

import enum
import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor
from typing_extensions import Self


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


@dataclass(frozen=True, kw_only=True)
class ObjectiveBatch:
    """What every strategy is told about a step.

    Args:
        names: the objectives' names, in row order.
        losses: ``[T]`` detached objective values (NaN placeholders when
            :meth:`GradientBalancingStrategy.aggregate` is called without them, which only
            strategies that do not :attr:`~GradientBalancingStrategy.reads_loss_values` allow).
        progress: the training progress at this step.
    """

    names: tuple[str, ...]
    losses: Tensor
    progress: TrainingProgress = TrainingProgress()

    @property
    def num_objectives(self) -> int:
        return len(self.names)


@dataclass(frozen=True, kw_only=True)
class LossBatch(ObjectiveBatch):
    """The input of a :class:`LossWeighting`: the objectives' names and values."""


@dataclass(frozen=True, kw_only=True)
class GramianBatch(ObjectiveBatch):
    """The input of a :class:`GramianWeighting`.

    Args:
        gramian: ``[T, T]`` inner products of the per-objective gradients, float32 or wider.
    """

    gramian: Tensor


@dataclass(frozen=True, kw_only=True)
class JacobianBatch(ObjectiveBatch):
    """The input of a :class:`JacobianStrategy`.

    Args:
        jacobian: ``[T, D]`` per-objective gradients of the scope, float32 or wider.
    """

    jacobian: Tensor


class GradientBalancingStrategy(ABC):
    """Base class of every gradient-balancing method.

    Subclass one of the kinds — :class:`LossWeighting`, :class:`GramianWeighting`,
    :class:`JacobianStrategy` or :class:`GradientSurgery` — not this class. The base provides
    what every strategy shares: :meth:`aggregate` (the strategy applied to a Jacobian outside
    Lightning), the weights of the last step in :meth:`log_values`, checkpoint state
    (:attr:`state_fields`), and :meth:`hyperparameters` and ``repr`` from the constructor's
    arguments.

    State that must survive a checkpoint (schedules, moving averages, warm starts) is returned by
    :meth:`state_dict` as plain Python values and tensors, so that checkpoints load with
    ``weights_only=True``.

    Example::

        >>> import torch
        >>> from lightning_mtl.strategies import LinearScalarization
        >>> LinearScalarization().aggregate(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
        tensor([1., 3.])
    """

    state_fields: ClassVar[tuple[str, ...]] = ()
    """Attributes that make up the strategy's state; :meth:`state_dict` and
    :meth:`load_state_dict` save and restore exactly these."""

    reads_loss_values: bool = False
    """Whether the strategy reads the objectives' values (``batch.losses``), so that
    :meth:`aggregate` needs them."""

    needs_parameter_scope: ClassVar[bool] = False
    """Whether the strategy keeps state in the coordinates of the balanced scope from step to
    step (RGB's EMA direction), which only parameters keep: a representation scope's coordinates
    are features of other samples at every step, so ``configure_balancing`` refuses it."""

    _init_arguments: dict[str, Any]
    _last_weights: tuple[tuple[str, ...], Tensor] | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        instance = super().__new__(cls)
        # The constructor's arguments, as given (defaults filled in), for repr and for
        # hyper-parameter logging. A copy or an unpickling calls __new__ without arguments and
        # restores the attribute from the instance's dictionary instead.
        instance._init_arguments = {}
        if cls.__init__ is object.__init__:
            return instance
        signature = inspect.signature(cls.__init__)
        try:
            bound = signature.bind(instance, *args, **kwargs)
        except TypeError:
            return instance
        bound.apply_defaults()
        for name, value in list(bound.arguments.items())[1:]:
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                instance._init_arguments.update(value)
            elif kind is not inspect.Parameter.VAR_POSITIONAL:
                instance._init_arguments[name] = value
        return instance

    @property
    @abstractmethod
    def requirement(self) -> Requirement:
        """What the engine computes for this strategy (set by the kind's base class)."""

    def setup(self, names: Sequence[str]) -> None:  # noqa: B027 - optional hook, a no-op here
        """Check the objective names once, before the first step that uses them.

        Raises:
            ValueError: when the strategy cannot work with these objectives.
        """

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
            losses: ``[T]`` objective values; needed by strategies that
                :attr:`reads_loss_values`, NaN placeholders for the others when omitted.
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
        if losses is None:
            if self.reads_loss_values:
                raise ValueError(
                    f"{type(self).__name__} reads the objectives' loss values: pass losses=... to "
                    "aggregate()."
                )
            losses = jacobian.new_full((len(names),), float("nan"))
        self.setup(names)
        return self._combine_rows(
            jacobian, names, losses, progress if progress is not None else TrainingProgress()
        )

    @abstractmethod
    def _combine_rows(
        self,
        jacobian: Tensor,
        names: tuple[str, ...],
        losses: Tensor,
        progress: TrainingProgress,
    ) -> Tensor:
        """:meth:`aggregate` after its checks: the kind's own way of combining the rows."""

    def record_weights(self, names: tuple[str, ...], weights: Tensor) -> None:
        """Keep this step's weights of the objectives for :meth:`log_values` and
        :attr:`last_weights` (the weighting kinds call it; a Jacobian strategy whose update is a
        weighted sum may too)."""
        self._last_weights = (names, weights.detach())

    @property
    def last_weights(self) -> dict[str, Tensor]:
        """The objectives' weights of the last step, by name (empty before the first step, and
        for strategies whose update is not a weighted sum)."""
        if self._last_weights is None:
            return {}
        names, weights = self._last_weights
        return dict(zip(names, weights, strict=True))

    def log_values(self) -> dict[str, Tensor | float]:
        """Scalars worth logging after a step: ``weight/<name>`` for each objective's last weight;
        strategies add their own (e.g. a scheduled coefficient)."""
        return {f"weight/{name}": value for name, value in self.last_weights.items()}

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (the :attr:`state_fields`): plain Python values and tensors only."""
        return {name: getattr(self, name) for name in self.state_fields}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        for name in self.state_fields:
            setattr(self, name, state_dict[name])

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor's arguments as given, defaults filled in (nested strategies as
        themselves).

        Example::

            >>> from lightning_mtl.strategies import CAGrad
            >>> CAGrad(c=0.4).hyperparameters()
            {'c': 0.4, 'rescale': 1, 'preference': None, 'solve_on': 'host'}
        """
        return dict(self._init_arguments)

    def config(self) -> dict[str, Any]:
        """The strategy as LightningCLI writes it, ``{"class_path": ..., "init_args": {...}}``
        (nested strategies as their own configs): plain values that a checkpoint's
        ``hparams.yaml`` can hold and :func:`strategy_from_config` rebuilds.

        Raises:
            TypeError: when an argument is not a plain value (e.g. a torchjd module).

        Example::

            >>> from lightning_mtl.strategies import CAGrad
            >>> CAGrad(c=0.4).config()
            {'class_path': 'lightning_mtl.strategies.cagrad.CAGrad', 'init_args': {'c': 0.4, \
'rescale': 1, 'preference': None, 'solve_on': 'host'}}
        """
        cls = type(self)
        arguments = {name: _plain(value, name) for name, value in self.hyperparameters().items()}
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": arguments}

    def __repr__(self) -> str:
        arguments = ", ".join(f"{name}={value!r}" for name, value in self.hyperparameters().items())
        return f"{type(self).__name__}({arguments})"


def _plain(value: Any, name: str) -> Any:
    """``value`` as plain Python data for :meth:`GradientBalancingStrategy.config`."""
    if isinstance(value, GradientBalancingStrategy):
        return value.config()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item, name) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item, name) for key, item in value.items()}
    raise TypeError(f"the argument {name}={value!r} is not a plain value, so it has no config.")


def strategy_from_config(config: Mapping[str, Any]) -> GradientBalancingStrategy:
    """Rebuild a strategy from :meth:`GradientBalancingStrategy.config` (or from the
    ``class_path`` / ``init_args`` that LightningCLI writes). Only strategy classes are built.

    Example::

        >>> from lightning_mtl.strategies import CAGrad
        >>> strategy_from_config(CAGrad(c=0.4).config())
        CAGrad(c=0.4, rescale=1, preference=None, solve_on='host')
    """
    if "class_path" not in config:
        raise ValueError(f"a strategy config needs a class_path; got {dict(config)}.")
    module_name, _, class_name = str(config["class_path"]).rpartition(".")
    if not module_name:
        module_name = "lightning_mtl.strategies"
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, GradientBalancingStrategy)):
        raise ValueError(f"{config['class_path']!r} names no gradient-balancing strategy.")
    arguments = {
        name: strategy_from_config(value)
        if isinstance(value, Mapping) and "class_path" in value
        else value
        for name, value in dict(config.get("init_args") or {}).items()
    }
    return cls(**arguments)


BatchT = TypeVar("BatchT", bound=ObjectiveBatch)


class Weighting(GradientBalancingStrategy, Generic[BatchT]):
    """The weighting kinds (:class:`LossWeighting`, :class:`GramianWeighting`): ``[T]`` weights
    from what a ``BatchT`` holds; the update is ``Σ_t w_t g_t``. Calling the strategy returns
    :meth:`weights` and keeps them for :meth:`log_values`."""

    @abstractmethod
    def weights(self, batch: BatchT) -> Tensor:
        """Return ``[T]`` weights; the update is ``Σ_t w_t g_t``."""

    def __call__(self, batch: BatchT) -> Tensor:
        weights = self.weights(batch)
        self.record_weights(batch.names, weights)
        return weights


class LossWeighting(Weighting[LossBatch]):
    """A strategy that weighs the objectives from their values alone: one backward pass of
    ``Σ_t w_t L_t``, so its cost is that of a plain training step.

    A subclass implements :meth:`weights`. One that never reads the values (fixed weights, a
    schedule, random weights) sets :attr:`reads_loss_values` to ``False`` so that
    :meth:`aggregate` works without ``losses``.
    """

    reads_loss_values = True

    @property
    def requirement(self) -> Requirement:
        return Requirement.LOSSES

    def _combine_rows(
        self,
        jacobian: Tensor,
        names: tuple[str, ...],
        losses: Tensor,
        progress: TrainingProgress,
    ) -> Tensor:
        weights = self(LossBatch(names=names, losses=losses, progress=progress))
        return weights.to(jacobian.dtype) @ jacobian


class GramianWeighting(Weighting[GramianBatch]):
    """A strategy that weighs the objectives from the Gramian ``G = J Jᵀ`` of their gradients:
    the update is ``wᵀ J``. A subclass implements :meth:`weights`.
    """

    @property
    def requirement(self) -> Requirement:
        return Requirement.GRAMIAN

    def _combine_rows(
        self,
        jacobian: Tensor,
        names: tuple[str, ...],
        losses: Tensor,
        progress: TrainingProgress,
    ) -> Tensor:
        batch = GramianBatch(
            names=names, losses=losses, gramian=gramian_of(jacobian), progress=progress
        )
        return self(batch).to(jacobian.dtype) @ jacobian


class JacobianStrategy(GradientBalancingStrategy):
    """A strategy that computes the update direction from the ``[T, D]`` Jacobian itself. A
    subclass implements :meth:`direction`.
    """

    @property
    def requirement(self) -> Requirement:
        return Requirement.JACOBIAN

    @abstractmethod
    def direction(self, batch: JacobianBatch) -> Tensor:
        """Return the ``[D]`` combined update."""

    def __call__(self, batch: JacobianBatch) -> Tensor:
        return self.direction(batch)

    def _combine_rows(
        self,
        jacobian: Tensor,
        names: tuple[str, ...],
        losses: Tensor,
        progress: TrainingProgress,
    ) -> Tensor:
        return self(JacobianBatch(names=names, losses=losses, jacobian=jacobian, progress=progress))


@dataclass(frozen=True)
class EditedGradients:
    """The result of a gradient surgery.

    Args:
        direction: ``[D]`` the update.
        rows: computes the ``[T, D]`` edited gradients, only when called (diagnostics ask for
            them on their cadence; the update never needs them formed).
    """

    direction: Tensor
    rows: Callable[[], Tensor]


class GradientSurgery(JacobianStrategy):
    """A :class:`JacobianStrategy` that edits each objective's gradient (projects, rotates or
    masks it) and combines the edited gradients. A subclass implements :meth:`edit`, which also
    tells how to form the edited rows, so that diagnostics (e.g.
    :class:`~lightning_mtl.callbacks.EquilibriumMonitor`) can compare them with the originals.
    """

    @abstractmethod
    def edit(self, batch: JacobianBatch) -> EditedGradients:
        """The update and, on request, the edited gradients of ``batch.jacobian``."""

    def direction(self, batch: JacobianBatch) -> Tensor:
        return self.edit(batch).direction


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
    """The ``[T, T]`` matrix of inner products of the rows of ``jacobian``, in float32 or wider.

    Example::

        >>> gramian_of(torch.tensor([[1.0, 2.0], [0.0, 3.0]]))
        tensor([[5., 6.],
                [6., 9.]])
    """
    wide = jacobian if jacobian.dtype in (torch.float32, torch.float64) else jacobian.float()
    return wide @ wide.T
