"""Multi-task models: multi-digits, CelebA (40 binary attributes), NYUv2 (segmentation, depth,
normals)."""

from lightning_mtl.tasks.multitask.models.celeba import CelebAMultiTask
from lightning_mtl.tasks.multitask.models.multidigits import MultiDigitsEncoder, MultiDigitsModule
from lightning_mtl.tasks.multitask.models.nyuv2 import NYUv2MultiTask

__all__ = ["CelebAMultiTask", "MultiDigitsEncoder", "MultiDigitsModule", "NYUv2MultiTask"]
