"""Callbacks: gradient angles, warm-up-then-switch, equilibrium diagnostics."""

from lightning_mtl.callbacks.base import ObjectiveGradientCallback
from lightning_mtl.callbacks.equilibrium import EquilibriumMonitor
from lightning_mtl.callbacks.gradient_angles import GradientAngleLogger, cosine_heatmap
from lightning_mtl.callbacks.warmup import WarmupThenSwitch

__all__ = [
    "EquilibriumMonitor",
    "GradientAngleLogger",
    "ObjectiveGradientCallback",
    "WarmupThenSwitch",
    "cosine_heatmap",
]
