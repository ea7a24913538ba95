"""What a callback implements to receive per-objective gradients from the mixin."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn

SHARED_SCOPE = "shared"
"""Scope key of the balanced scope (the strategy's own)."""


class ObjectiveGradientCallback(Callback):
    """Base of callbacks that need per-objective gradients on some steps.

    Before each step the :class:`~lightning_mtl.MultiObjectiveMixin` asks every such callback
    whether it wants gradients on this step; on those steps it computes them (once per scope,
    reusing what the strategy computed when the scopes coincide) and leaves them in
    ``pl_module.objective_gradients[self.scope_key]`` until the next step. Steps where no
    callback asks cost nothing extra.
    """

    scope_key: str = SHARED_SCOPE

    def wants_objective_gradients(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Whether per-objective gradients are needed on the coming step."""
        return False

    def objective_gradient_parameters(
        self, pl_module: pl.LightningModule
    ) -> Sequence[nn.Parameter] | None:
        """The parameters to differentiate; ``None`` means the balanced scope."""
        return None
