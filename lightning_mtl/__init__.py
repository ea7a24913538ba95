"""Gradient balancing for multi-objective training, as a PyTorch Lightning plug-in."""

from lightning_mtl.mixin import MultiObjectiveMixin, NonFiniteObjectiveError
from lightning_mtl.objectives import Objectives, per_class_objectives
from lightning_mtl.strategies.base import GradientBalancingStrategy, Requirement

__version__ = "0.1.0"

__all__ = [
    "GradientBalancingStrategy",
    "MultiObjectiveMixin",
    "NonFiniteObjectiveError",
    "Objectives",
    "Requirement",
    "__version__",
    "per_class_objectives",
]
