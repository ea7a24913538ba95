"""Loss functions: contrastive, SwAV with Sinkhorn, SimGCD self-distillation, long-tail."""

from lightning_mtl.losses.distillation import (
    SelfDistillationLoss,
    SelfDistillationOutput,
    self_distillation_loss,
    teacher_temperature,
)
from lightning_mtl.losses.long_tail import (
    BalancedSoftmaxLoss,
    DeferredReweighting,
    LDAMLoss,
    LogitAdjustedLoss,
    drw_weights,
    mixup,
)
from lightning_mtl.losses.supcon import SupConLoss, supervised_contrastive_loss
from lightning_mtl.losses.swav import SwAVLoss, sinkhorn_knopp, swav_loss
from lightning_mtl.losses.variability import per_class_loss_std, variability_collapse_loss

__all__ = [
    "BalancedSoftmaxLoss",
    "DeferredReweighting",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "SelfDistillationLoss",
    "SelfDistillationOutput",
    "SupConLoss",
    "SwAVLoss",
    "drw_weights",
    "mixup",
    "per_class_loss_std",
    "self_distillation_loss",
    "sinkhorn_knopp",
    "supervised_contrastive_loss",
    "swav_loss",
    "teacher_temperature",
    "variability_collapse_loss",
]
