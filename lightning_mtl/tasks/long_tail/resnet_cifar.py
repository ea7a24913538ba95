"""ResNet for 32×32 CIFAR images (He et al., 2016, §4.2), the backbone of the CIFAR-LT protocol.

Depth ``6n + 2``: a 3×3 stem with 16 channels, three stages (``layer1``, ``layer2``, ``layer3``) of
``n`` basic blocks with 16, 32 and 64 channels (the last two start with stride 2), global average
pooling and a classifier ``fc``. ResNet-32 is ``n = 5`` (about 0.46M parameters). The stage names
matter: PLOT's class-level balancing step is applied to ``layer3``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BasicBlock", "NormalizedLinear", "ResNetCIFAR", "resnet32"]

Shortcut = Literal["A", "B"]


class NormalizedLinear(nn.Module):
    """Cosine classifier without bias: ``logits = normalize(x) · normalize(w_c)``, in ``[-1, 1]``.

    The LDAM-DRW reference uses it with ResNet-32 for LDAM; the logits need a scale (LDAM's
    ``s = 30``) before a softmax, since cosines alone give a nearly uniform distribution. The
    normalisation divides the input gradient by ``‖x‖``, so it wants a backbone whose feature
    scale is kept in check by BatchNorm (as in ResNet-32): on a small BN-free encoder (e.g.
    ``DigitsEncoder``) the first, tiny-norm features get huge gradients and training can stall;
    use ``nn.Linear`` there.

    Args:
        in_features: Input width.
        out_features: Number of classes.

    Example::

        >>> head = NormalizedLinear(4, 3)
        >>> out = head(torch.randn(5, 4))
        >>> tuple(out.shape), bool(out.abs().max() <= 1.0 + 1e-6)
        ((5, 3), True)
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        # Stored as [out, in] like nn.Linear; only the direction of each row matters.
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.uniform_(self.weight, -1.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        """Cosine similarities ``[B, out_features]`` between the inputs and the class weights."""
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        """Show the sizes in ``print(module)``."""
        return f"in_features={self.in_features}, out_features={self.out_features}"


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        extra = planes - in_planes
        # Split the new channels evenly before and after the input ones, as in He et al.'s code.
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` → ``[B, planes, H/2, W/2]``."""
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a residual connection, ReLU after the sum.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution (1 or 2).
        shortcut: ``"A"`` (parameter-free subsample + zero-pad) or ``"B"`` (1×1 conv + BN) when
            the shape changes; identity otherwise.

    Example::

        >>> BasicBlock(16, 32, stride=2)(torch.zeros(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: Shortcut = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                if stride != 2 or planes < in_planes:
                    raise ValueError("option-A shortcuts need stride 2 and planes >= in_planes.")
                self.shortcut = _PadShortcut(in_planes, planes)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )

    def forward(self, x: Tensor) -> Tensor:
        """Residual block output."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """CIFAR ResNet with ``blocks_per_stage`` basic blocks in each of three stages.

    Submodules: ``conv1``, ``bn1`` (stem), ``layer1``, ``layer2``, ``layer3`` (16/32/64 channels,
    32/16/8 pixels), ``fc`` (linear, or :class:`NormalizedLinear` with
    ``normalized_classifier=True``). Convolutions and a linear ``fc`` are initialised with Kaiming
    normal weights, as in the LDAM-DRW reference.

    Args:
        num_classes: Output classes (>= 1).
        blocks_per_stage: Blocks in each stage (>= 1); 5 gives ResNet-32.
        normalized_classifier: Use a cosine classifier (for LDAM) instead of ``nn.Linear``.
        shortcut: ``"A"`` (default, as in He et al.'s CIFAR ResNets and the LDAM-DRW code) or
            ``"B"`` (1×1 projection), used where the shape changes.

    Raises:
        ValueError: If an argument is out of range.

    Example::

        >>> model = ResNetCIFAR(num_classes=10, blocks_per_stage=1)  # ResNet-8
        >>> x = torch.zeros(2, 3, 32, 32)
        >>> model(x).shape, model.features(x).shape
        (torch.Size([2, 10]), torch.Size([2, 64]))
    """

    stage_widths: Sequence[int] = (16, 32, 64)

    def __init__(
        self,
        num_classes: int,
        blocks_per_stage: int = 5,
        normalized_classifier: bool = False,
        shortcut: Shortcut = "A",
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
        if (
            isinstance(blocks_per_stage, bool)
            or not isinstance(blocks_per_stage, int)
            or blocks_per_stage < 1
        ):
            raise ValueError(
                f"`blocks_per_stage` must be a positive int, got {blocks_per_stage!r}."
            )
        if shortcut not in ("A", "B"):
            raise ValueError(f"`shortcut` must be 'A' or 'B', got {shortcut!r}.")
        self.num_classes = num_classes
        self.feature_dim = self.stage_widths[-1]
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages = []
        for index, planes in enumerate(self.stage_widths):
            stride = 1 if index == 0 else 2
            blocks = []
            for block in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if block == 0 else 1, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc: nn.Module = (
            NormalizedLinear(self.feature_dim, num_classes)
            if normalized_classifier
            else nn.Linear(self.feature_dim, num_classes)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    def features(self, x: Tensor) -> Tensor:
        """Globally average-pooled ``layer3`` output: ``[B, 3, H, W]`` → ``[B, 64]``.

        Example::

            >>> ResNetCIFAR(5, blocks_per_stage=1).features(torch.zeros(1, 3, 32, 32)).shape
            torch.Size([1, 64])
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` (cosines with a normalised classifier)."""
        return self.fc(self.features(x))


def resnet32(
    num_classes: int, normalized_classifier: bool = False, shortcut: Shortcut = "A"
) -> ResNetCIFAR:
    """ResNet-32 for CIFAR: 3 stages of 5 basic blocks, option-A shortcuts by default.

    With option A and 10 classes it has 464,154 parameters (463,504 in the backbone); pair
    ``normalized_classifier=True`` with :class:`~lightning_mtl.tasks.long_tail.losses.LDAMLoss`.

    Args:
        num_classes: Output classes.
        normalized_classifier: Use a cosine classifier instead of ``nn.Linear``.
        shortcut: ``"A"`` (parameter-free) or ``"B"`` (1×1 projection).

    Returns:
        The model.

    Example::

        >>> model = resnet32(10)
        >>> sum(p.numel() for p in model.parameters())
        464154
        >>> [name for name, _ in model.named_children()]
        ['conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'fc']
    """
    return ResNetCIFAR(num_classes, 5, normalized_classifier, shortcut)
