"""Data modules, samplers and augmentations."""

from lightning_mtl.data.digits import DigitsDataModule, digits_two_view_augment
from lightning_mtl.data.samplers import EpochSeededRandomSampler

__all__ = ["DigitsDataModule", "EpochSeededRandomSampler", "digits_two_view_augment"]
