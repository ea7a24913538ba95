"""Loss functions for representation learning objectives."""

from lightning_mtl.losses.supcon import SupConLoss, supervised_contrastive_loss

__all__ = ["SupConLoss", "supervised_contrastive_loss"]
