"""Callbacks: gradient-angle logging, warm-up-then-switch."""

from lightning_mtl.callbacks.base import ObjectiveGradientCallback
from lightning_mtl.callbacks.gradient_angles import GradientAngleLogger, cosine_heatmap
from lightning_mtl.callbacks.warmup import WarmupThenSwitch

__all__ = ["GradientAngleLogger", "ObjectiveGradientCallback", "WarmupThenSwitch", "cosine_heatmap"]
