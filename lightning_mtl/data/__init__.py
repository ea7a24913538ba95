"""Data modules, samplers and augmentations."""

from lightning_mtl.data.celeba import CelebADataModule
from lightning_mtl.data.digits import DigitsDataModule, digits_two_view_augment
from lightning_mtl.data.gcd import (
    BalancedLabeledSampler,
    CIFARGCDDataModule,
    DigitsGCDDataModule,
    GCDDataModule,
    GCDSplit,
    gcd_split,
)
from lightning_mtl.data.long_tail import (
    CIFARLongTailDataModule,
    ClassBalancedSampler,
    DigitsLongTailDataModule,
    long_tail_counts,
    long_tail_indices,
)
from lightning_mtl.data.multidigits import MultiDigitsDataModule
from lightning_mtl.data.nyuv2 import NYUv2DataModule
from lightning_mtl.data.samplers import EpochSeededRandomSampler

__all__ = [
    "BalancedLabeledSampler",
    "CIFARGCDDataModule",
    "CIFARLongTailDataModule",
    "CelebADataModule",
    "ClassBalancedSampler",
    "DigitsDataModule",
    "DigitsGCDDataModule",
    "DigitsLongTailDataModule",
    "EpochSeededRandomSampler",
    "GCDDataModule",
    "GCDSplit",
    "MultiDigitsDataModule",
    "NYUv2DataModule",
    "digits_two_view_augment",
    "gcd_split",
    "long_tail_counts",
    "long_tail_indices",
]
