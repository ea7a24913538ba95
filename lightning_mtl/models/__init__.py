"""Models: the embedded recipes' small CNNs and multi-objective modules, ResNet-32 for CIFAR."""

from lightning_mtl.models.digits import DigitsEncoder, DigitsMultiObjective
from lightning_mtl.models.multidigits import MultiDigitsEncoder, MultiDigitsModule
from lightning_mtl.models.resnet_cifar import ResNetCIFAR, resnet32

__all__ = [
    "DigitsEncoder",
    "DigitsMultiObjective",
    "MultiDigitsEncoder",
    "MultiDigitsModule",
    "ResNetCIFAR",
    "resnet32",
]
