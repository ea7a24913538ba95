"""Gradient-balancing strategies, one method per file."""

from lightning_mtl.strategies.base import (
    GradientBalancingStrategy,
    ObjectiveBatch,
    Requirement,
    TrainingProgress,
)
from lightning_mtl.strategies.linear_scalarization import LinearScalarization
from lightning_mtl.strategies.pgi import PGI
from lightning_mtl.strategies.rgb import RGB

__all__ = [
    "PGI",
    "RGB",
    "GradientBalancingStrategy",
    "LinearScalarization",
    "ObjectiveBatch",
    "Requirement",
    "TrainingProgress",
]
