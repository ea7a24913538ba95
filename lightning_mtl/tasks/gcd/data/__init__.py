"""GCD data: the two-view digits of the default recipe, the old/new class splits (digits, CIFAR)
and the SSB readers (CUB, Stanford Cars, FGVC-Aircraft, Herbarium19)."""

from lightning_mtl.tasks.gcd.data.digits import DigitsDataModule, digits_two_view_augment
from lightning_mtl.tasks.gcd.data.splits import (
    BalancedLabeledSampler,
    CIFARGCDDataModule,
    DigitsGCDDataModule,
    GCDDataModule,
    GCDSplit,
    gcd_split,
    gcd_transforms,
)
from lightning_mtl.tasks.gcd.data.ssb import (
    AircraftGCDDataModule,
    CUBGCDDataModule,
    Herbarium19GCDDataModule,
    StanfordCarsGCDDataModule,
)

__all__ = [
    "AircraftGCDDataModule",
    "BalancedLabeledSampler",
    "CIFARGCDDataModule",
    "CUBGCDDataModule",
    "DigitsDataModule",
    "DigitsGCDDataModule",
    "GCDDataModule",
    "GCDSplit",
    "Herbarium19GCDDataModule",
    "StanfordCarsGCDDataModule",
    "digits_two_view_augment",
    "gcd_split",
    "gcd_transforms",
]
