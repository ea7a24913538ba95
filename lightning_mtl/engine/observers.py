"""The gradient-observer contract: how a callback receives per-objective gradients from the engine.

Before each step the :class:`~lightning_mtl.MultiObjectiveMixin` asks every
:class:`GradientObserver` among the Trainer's callbacks whether it wants gradients on this step.
On those steps the engine computes them — once per scope, reusing what the strategy computed when
the scopes coincide — and the mixin leaves them in ``pl_module.objective_gradients[scope_key]``
(an :class:`~lightning_mtl.engine.ObjectiveGradients`) until its next step starts. Observers only
read them, so any number of observers can share one scope. Steps where no observer asks cost
nothing extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

BALANCED_SCOPE = "shared"
"""Scope key of the balanced scope (the strategy's own)."""


class GradientObserver:
    """Mix into a ``Callback`` that needs per-objective gradients on some steps.

    Attributes:
        scope_key: which gradients: :data:`BALANCED_SCOPE` (the balanced scope) or a key of the
            observer's own scope, shared by observers that measure the same parameters.
        wants_edited_gradients: also keep the edited per-objective gradients of a
            :class:`~lightning_mtl.strategies.GradientSurgery` strategy (PCGrad, GradVac,
            GradDrop, RGB) in ``ObjectiveGradients.edited``, on the steps it observes the
            balanced scope.

    Example::

        >>> from lightning.pytorch.callbacks import Callback
        >>> class EveryTenSteps(GradientObserver, Callback):
        ...     def wants_objective_gradients(self, trainer, pl_module):
        ...         return trainer.global_step % 10 == 0
        ...     def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ...         gradients = pl_module.objective_gradients.get(self.scope_key)
        ...         if gradients is not None:
        ...             print(gradients.jacobian.shape)
    """

    scope_key: str = BALANCED_SCOPE
    wants_edited_gradients: bool = False

    def wants_objective_gradients(self, trainer: Any, pl_module: Any) -> bool:
        """Whether per-objective gradients are needed on the coming step."""
        return False

    def objective_gradient_parameters(self, pl_module: Any) -> Sequence[nn.Parameter] | None:
        """The parameters to differentiate; ``None`` means the balanced scope."""
        return None
