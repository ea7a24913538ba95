"""Models: the recipes' multi-objective modules (digits, multi-digits, CelebA, NYUv2) and
ResNet-32 for CIFAR."""

from lightning_mtl.models.celeba import CelebAMultiTask
from lightning_mtl.models.digits import DigitsEncoder, DigitsMultiObjective
from lightning_mtl.models.long_tail import LongTailClassifier
from lightning_mtl.models.multidigits import MultiDigitsEncoder, MultiDigitsModule
from lightning_mtl.models.nyuv2 import NYUv2MultiTask
from lightning_mtl.models.resnet_cifar import ResNetCIFAR, resnet32

__all__ = [
    "CelebAMultiTask",
    "DigitsEncoder",
    "DigitsMultiObjective",
    "LongTailClassifier",
    "MultiDigitsEncoder",
    "MultiDigitsModule",
    "NYUv2MultiTask",
    "ResNetCIFAR",
    "resnet32",
]
