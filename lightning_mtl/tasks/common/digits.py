"""The small CNN that the embedded digits recipes share."""

from __future__ import annotations

from torch import nn


class DigitsEncoder(nn.Sequential):
    """Two 3×3 convolutions and a linear layer: ``[B, 1, 8, 8]`` → ``[B, feature_dim]``.

    Example::

        >>> import torch
        >>> DigitsEncoder(feature_dim=16)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 16])
    """

    def __init__(self, feature_dim: int = 64, width: int = 32) -> None:
        super().__init__(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * 16, feature_dim),
            nn.ReLU(),
        )
