"""Models: the embedded recipes' small CNNs and multi-objective modules, ResNet-32 for CIFAR."""

from lightning_mtl.models.digits import DigitsEncoder, DigitsMultiObjective
from lightning_mtl.models.resnet_cifar import ResNetCIFAR, resnet32

__all__ = ["DigitsEncoder", "DigitsMultiObjective", "ResNetCIFAR", "resnet32"]
