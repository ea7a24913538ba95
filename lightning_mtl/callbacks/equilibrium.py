"""Multi-task equilibrium (MER) diagnostics of RGB's appendix A.8, for any strategy."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_mtl.engine.geometry import equilibrium_terms
from lightning_mtl.engine.observers import GradientObserver


class EquilibriumMonitor(GradientObserver, Callback):
    """Every ``every_n_steps`` steps, log the equilibrium diagnostics of the RGB paper (appendix
    A.8).

    Logged as ``mer/conflict``, ``mer/proximity``, ``mer/condition_number`` and
    ``mer/balance`` (per step and per-epoch mean), computed from the per-objective gradients of
    the balanced scope and the gradients the strategy actually combined: the edited ones for
    strategies that edit individual gradients (PCGrad, GradVac, GradDrop, RGB), the original
    ones otherwise (then proximity is 0). This lets PCGrad, GradVac and RGB be compared as in
    the paper's figure 5. Steps off the cadence cost nothing.

    Args:
        every_n_steps: the cadence, in optimizer steps.

    Example::

        >>> EquilibriumMonitor(every_n_steps=25).every_n_steps
        25
    """

    wants_edited_gradients = True

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer; got {every_n_steps}.")
        self.every_n_steps = every_n_steps

    @override
    def wants_objective_gradients(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        return trainer.global_step % self.every_n_steps == 0

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        gradients = getattr(pl_module, "objective_gradients", {}).get(self.scope_key)
        if gradients is None or len(gradients.names) < 2:
            return
        combined = gradients.edited if gradients.edited is not None else gradients.jacobian
        for name, value in equilibrium_terms(gradients.jacobian, combined).items():
            pl_module.log(f"mer/{name}", value.float(), on_step=True, on_epoch=True, batch_size=1)
