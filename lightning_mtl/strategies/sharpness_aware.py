"""Sharpness-aware training around any strategy: balance the objectives at the worst nearby
weights (SAM, Foret et al. 2021), as PLOT does."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies.base import GradientBalancingStrategy, Requirement, TrainingProgress


class SharpnessAware(GradientBalancingStrategy):
    """Sharpness-aware minimisation (Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware
    Minimization for Efficiently Improving Generalization", ICLR 2021) wrapped around ``inner``.

    In training, each step of :class:`~lightning_mtl.MultiObjectiveMixin` then runs two passes:

    1. the module's ``compute_perturbation_objectives`` (by default its ``compute_objectives``):
       the gradient ``g`` of their sum trains the parameters outside the balanced scope and moves
       the scope to ``θ + ε``, ``ε = ρ g_scope / ‖g_scope‖`` (the first-order worst case within
       radius ``ρ``);
    2. ``compute_objectives`` at the perturbed weights, balanced by ``inner`` over the scope;

    then ``(1 − keep)`` of ``ε`` is taken back before the optimizer steps (``keep = 0`` is SAM;
    PLOT's authors keep part of it on some settings). The scope must name submodules
    (``configure_balancing(..., scope=["layer3"])``).

    Outside Lightning there is no model to perturb: :meth:`aggregate` is ``inner``'s.

    Args:
        inner: the strategy that balances the objectives at the perturbed weights.
        rho: the radius ``ρ > 0``.
        keep: the fraction of ``ε`` left in the weights after the step, in ``[0, 1]``.

    Example::

        >>> import torch
        >>> from lightning_mtl.strategies import MGDA
        >>> sam = SharpnessAware(MGDA(), rho=0.05)
        >>> sam.requirement.value, sam.aggregate(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        ('gramian', tensor([0.4000, 0.8000]))
    """

    def __init__(self, inner: GradientBalancingStrategy, rho: float = 0.05, keep: float = 0.0):
        if not isinstance(inner, GradientBalancingStrategy) or isinstance(inner, SharpnessAware):
            raise TypeError(
                "inner must be a gradient-balancing strategy other than SharpnessAware; got "
                f"{type(inner).__name__}."
            )
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be positive; got {rho}.")
        if not 0.0 <= keep <= 1.0:
            raise ValueError(f"keep must lie in [0, 1]; got {keep}.")
        self.inner = inner
        self.rho = float(rho)
        self.keep = float(keep)
        self.reads_loss_values = inner.reads_loss_values

    @property
    def requirement(self) -> Requirement:
        return self.inner.requirement

    @override
    def setup(self, names: Sequence[str]) -> None:
        self.inner.setup(names)

    @override
    def _combine_rows(
        self,
        jacobian: Tensor,
        names: tuple[str, ...],
        losses: Tensor,
        progress: TrainingProgress,
    ) -> Tensor:
        return self.inner._combine_rows(jacobian, names, losses, progress)

    @property
    def last_weights(self) -> dict[str, Tensor]:
        return self.inner.last_weights

    @override
    def log_values(self) -> dict[str, Tensor | float]:
        return self.inner.log_values()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict["inner"])
