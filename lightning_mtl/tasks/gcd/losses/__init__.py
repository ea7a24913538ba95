"""GCD losses: supervised contrastive (and InfoNCE), SwAV with Sinkhorn, SimGCD
self-distillation."""

from lightning_mtl.tasks.gcd.losses.distillation import (
    SelfDistillationLoss,
    SelfDistillationOutput,
    self_distillation_loss,
    teacher_temperature,
)
from lightning_mtl.tasks.gcd.losses.supcon import SupConLoss, supervised_contrastive_loss
from lightning_mtl.tasks.gcd.losses.swav import SwAVLoss, sinkhorn_knopp, swav_loss

__all__ = [
    "SelfDistillationLoss",
    "SelfDistillationOutput",
    "SupConLoss",
    "SwAVLoss",
    "self_distillation_loss",
    "sinkhorn_knopp",
    "supervised_contrastive_loss",
    "swav_loss",
    "teacher_temperature",
]
