"""Two training phases with different strategies, switched at an epoch or a step."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_mtl.strategies.base import GradientBalancingStrategy


class StrategySwitch(Callback):
    """Use ``first`` for the first ``epochs`` epochs (or ``steps`` steps), then ``second``.

    ``None`` for either phase means the strategy the module configured. The switch is logged as
    ``balancing/<log_name>`` (1 in the first phase, 0 after), the epoch of the switch as
    ``balancing/switch_epoch`` on the step it happens, and both are kept in
    :attr:`switched_at_step` / :attr:`switched_at_epoch`, which survive resume. A scheduled
    strategy starts its schedule on its first step, i.e. after the switch when it is ``second``.
    Subclasses name the phases; see :class:`WarmupThenSwitch` and :class:`TemporalMOO`.

    Args:
        epochs: length of the first phase in epochs.
        steps: length of the first phase in optimizer steps (instead of epochs).
        first: the strategy of the first phase (``None``: the module's).
        second: the strategy of the second phase (``None``: the module's).
        log_name: the logged flag's name.

    Example::

        >>> switch = StrategySwitch(epochs=5)
        >>> switch.in_first_phase(step=120, epoch=4), switch.in_first_phase(step=150, epoch=5)
        (True, False)
    """

    def __init__(
        self,
        epochs: int | None = None,
        steps: int | None = None,
        first: GradientBalancingStrategy | None = None,
        second: GradientBalancingStrategy | None = None,
        log_name: str = "first_phase",
    ) -> None:
        if (epochs is None) == (steps is None):
            raise ValueError(f"{type(self).__name__}: give exactly one length, in epochs or steps.")
        length = epochs if epochs is not None else steps
        assert length is not None
        if length < 0:
            raise ValueError(f"the first phase's length must be non-negative; got {length}.")
        self.epochs = epochs
        self.steps = steps
        self.first = first
        self.second = second
        self.log_name = log_name
        self.switched_at_step: int | None = None
        self.switched_at_epoch: int | None = None

    def in_first_phase(self, step: int, epoch: int) -> bool:
        """Whether training at this step and epoch is still in the first phase."""
        if self.epochs is not None:
            return epoch < self.epochs
        assert self.steps is not None
        return step < self.steps

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "balancing_override"):
            raise TypeError(
                f"{type(self).__name__} needs a module that uses "
                f"lightning_mtl.MultiObjectiveMixin; got {type(pl_module).__name__}."
            )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        first = self.in_first_phase(trainer.global_step, trainer.current_epoch)
        module: Any = pl_module  # a MultiObjectiveMixin (checked in setup)
        module.balancing_override = self.first if first else self.second
        if not first and self.switched_at_step is None:
            self.switched_at_step = trainer.global_step
            self.switched_at_epoch = trainer.current_epoch
            pl_module.log("balancing/switch_epoch", float(trainer.current_epoch), on_step=True)
        pl_module.log(f"balancing/{self.log_name}", float(first), on_step=True, on_epoch=False)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module: Any = pl_module
        module.balancing_override = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            epochs=self.epochs, steps=self.steps, first=repr(self.first), second=repr(self.second)
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "switched_at_step": self.switched_at_step,
            "switched_at_epoch": self.switched_at_epoch,
            "first": self.first.state_dict() if self.first is not None else None,
            "second": self.second.state_dict() if self.second is not None else None,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.switched_at_step = state_dict["switched_at_step"]
        self.switched_at_epoch = state_dict["switched_at_epoch"]
        for strategy, state in (
            (self.first, state_dict["first"]),
            (self.second, state_dict["second"]),
        ):
            if strategy is not None and state is not None:
                strategy.load_state_dict(state)
