"""Metrics: multi-task (Δm%, mean rank, per-task accuracy), GCD clustering accuracy, long-tail
Many / Medium / Few accuracy."""

from lightning_mtl.metrics.gcd import ClusterAccuracy, cluster_accuracy
from lightning_mtl.metrics.long_tail import LongTailAccuracy, shot_groups
from lightning_mtl.metrics.multitask import PerTaskAccuracy, delta_m, mean_rank

__all__ = [
    "ClusterAccuracy",
    "LongTailAccuracy",
    "PerTaskAccuracy",
    "cluster_accuracy",
    "delta_m",
    "mean_rank",
    "shot_groups",
]
