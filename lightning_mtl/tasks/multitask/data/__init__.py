"""Multi-task data: multi-digits (three digits side by side), CelebA, NYUv2."""

from lightning_mtl.tasks.multitask.data.celeba import CelebADataModule
from lightning_mtl.tasks.multitask.data.multidigits import MultiDigitsDataModule
from lightning_mtl.tasks.multitask.data.nyuv2 import NYUv2DataModule

__all__ = ["CelebADataModule", "MultiDigitsDataModule", "NYUv2DataModule"]
