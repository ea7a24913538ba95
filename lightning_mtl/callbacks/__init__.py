"""Generic callbacks: gradient angles, strategy phases (warm-up, PLOT's temporal MOO) and
equilibrium diagnostics. Domain callbacks (e.g. cRT's classifier re-training) live in their slice
under :mod:`lightning_mtl.tasks`."""

from lightning_mtl.callbacks.equilibrium import EquilibriumMonitor
from lightning_mtl.callbacks.gradient_angles import GradientAngleLogger, cosine_heatmap
from lightning_mtl.callbacks.switch import StrategySwitch
from lightning_mtl.callbacks.temporal import TemporalMOO
from lightning_mtl.callbacks.warmup import WarmupThenSwitch
from lightning_mtl.engine.observers import GradientObserver

__all__ = [
    "EquilibriumMonitor",
    "GradientAngleLogger",
    "GradientObserver",
    "StrategySwitch",
    "TemporalMOO",
    "WarmupThenSwitch",
    "cosine_heatmap",
]
