"""Generalized category discovery: SimGCD-style models balanced by PGI, SwAV, EAGC, clustering
accuracy, the digits / CIFAR / SSB (CUB, Stanford Cars, FGVC-Aircraft, Herbarium19) splits, and the
embedded default recipe's model. Needs ``pip install "lightning-mtl[gcd]"``."""

from lightning_mtl.extras import require

require("gcd", "sklearn", "scipy")

from lightning_mtl.tasks.gcd.data import (  # noqa: E402 - after the dependency check
    AircraftGCDDataModule,
    BalancedLabeledSampler,
    CIFARGCDDataModule,
    CUBGCDDataModule,
    DigitsDataModule,
    DigitsGCDDataModule,
    GCDDataModule,
    GCDSplit,
    Herbarium19GCDDataModule,
    StanfordCarsGCDDataModule,
    digits_two_view_augment,
    gcd_split,
    gcd_transforms,
)
from lightning_mtl.tasks.gcd.eagc import EAGC, ReferenceAnchor, conceptor, feature_energy  # noqa: E402
from lightning_mtl.tasks.gcd.losses import (  # noqa: E402
    SelfDistillationLoss,
    SelfDistillationOutput,
    SupConLoss,
    SwAVLoss,
    self_distillation_loss,
    sinkhorn_knopp,
    supervised_contrastive_loss,
    swav_loss,
    teacher_temperature,
)
from lightning_mtl.tasks.gcd.metrics import ClusterAccuracy, cluster_accuracy  # noqa: E402
from lightning_mtl.tasks.gcd.models import (  # noqa: E402
    DigitsMultiObjective,
    GCDModule,
    ProjectionHead,
    digits_gcd_backbone,
    gcd_objective_groups,
    timm_backbone,
)

__all__ = [
    "EAGC",
    "AircraftGCDDataModule",
    "BalancedLabeledSampler",
    "CIFARGCDDataModule",
    "CUBGCDDataModule",
    "ClusterAccuracy",
    "DigitsDataModule",
    "DigitsGCDDataModule",
    "DigitsMultiObjective",
    "GCDDataModule",
    "GCDModule",
    "GCDSplit",
    "Herbarium19GCDDataModule",
    "ProjectionHead",
    "ReferenceAnchor",
    "SelfDistillationLoss",
    "SelfDistillationOutput",
    "StanfordCarsGCDDataModule",
    "SupConLoss",
    "SwAVLoss",
    "cluster_accuracy",
    "conceptor",
    "digits_gcd_backbone",
    "digits_two_view_augment",
    "feature_energy",
    "gcd_objective_groups",
    "gcd_split",
    "gcd_transforms",
    "self_distillation_loss",
    "sinkhorn_knopp",
    "supervised_contrastive_loss",
    "swav_loss",
    "teacher_temperature",
    "timm_backbone",
]
