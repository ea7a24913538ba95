"""Plain summed training for a warm-up, then the configured balancing strategy."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_mtl.strategies.base import GradientBalancingStrategy
from lightning_mtl.strategies.linear_scalarization import LinearScalarization


class WarmupThenSwitch(Callback):
    """Train on the plain sum of the objectives for a warm-up, then switch to the strategy that
    the module configured.

    Seed 000 (appendix A.2) employs PGI "only after the warm-up phase", where "standard
    gradient-based optimization" trains on the summed objectives. A scheduled strategy such as
    :class:`~lightning_mtl.strategies.PGI` starts its schedule on the first step after the
    switch. The switch point is logged as ``balancing/warmup`` (1 during warm-up, 0 after) and
    kept in :attr:`switched_at_step` / :attr:`switched_at_epoch`, which survive resume.

    Args:
        warmup_epochs: length of the warm-up in epochs.
        warmup_steps: length of the warm-up in optimizer steps (instead of epochs).
        warmup_strategy: the strategy during warm-up; default the unweighted sum.

    Example::

        >>> callback = WarmupThenSwitch(warmup_epochs=5)
        >>> callback.in_warmup(step=120, epoch=4), callback.in_warmup(step=150, epoch=5)
        (True, False)
    """

    def __init__(
        self,
        warmup_epochs: int | None = None,
        warmup_steps: int | None = None,
        warmup_strategy: GradientBalancingStrategy | None = None,
    ) -> None:
        if (warmup_epochs is None) == (warmup_steps is None):
            raise ValueError("give exactly one of warmup_epochs and warmup_steps.")
        length = warmup_epochs if warmup_epochs is not None else warmup_steps
        assert length is not None
        if length < 0:
            raise ValueError(f"the warm-up length must be non-negative; got {length}.")
        self.warmup_epochs = warmup_epochs
        self.warmup_steps = warmup_steps
        self.warmup_strategy = warmup_strategy or LinearScalarization()
        self.switched_at_step: int | None = None
        self.switched_at_epoch: int | None = None

    def in_warmup(self, step: int, epoch: int) -> bool:
        """Whether training at this step and epoch is still warming up."""
        if self.warmup_epochs is not None:
            return epoch < self.warmup_epochs
        assert self.warmup_steps is not None
        return step < self.warmup_steps

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "balancing_override"):
            raise TypeError(
                "WarmupThenSwitch needs a module that uses lightning_mtl.MultiObjectiveMixin; "
                f"got {type(pl_module).__name__}."
            )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        warming = self.in_warmup(trainer.global_step, trainer.current_epoch)
        pl_module.balancing_override = self.warmup_strategy if warming else None
        if not warming and self.switched_at_step is None:
            self.switched_at_step = trainer.global_step
            self.switched_at_epoch = trainer.current_epoch
        pl_module.log("balancing/warmup", float(warming), on_step=True, on_epoch=False)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.balancing_override = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "switched_at_step": self.switched_at_step,
            "switched_at_epoch": self.switched_at_epoch,
            "warmup_strategy": self.warmup_strategy.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.switched_at_step = state_dict["switched_at_step"]
        self.switched_at_epoch = state_dict["switched_at_epoch"]
        self.warmup_strategy.load_state_dict(state_dict["warmup_strategy"])
