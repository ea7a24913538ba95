"""Fixed-weight linear scalarisation: the plain weighted sum of the objectives."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies.base import LossBatch, LossWeighting, device_vector


class LinearScalarization(LossWeighting):
    """Update along ``Σ_t w_t ∇L_t`` with fixed weights; one backward pass per step.

    Args:
        weights: weight per objective name; objectives not named get ``default_weight``.
            ``None`` weighs every objective equally.
        default_weight: the weight of objectives that ``weights`` does not name.

    Example::

        >>> import torch
        >>> strategy = LinearScalarization({"cls": 2.0})
        >>> strategy.aggregate(torch.eye(2), names=["cls", "rep"])
        tensor([2., 1.])
    """

    reads_loss_values = False

    def __init__(
        self, weights: Mapping[str, float] | None = None, default_weight: float = 1.0
    ) -> None:
        weights = dict(weights or {})
        for name, value in {**weights, "default_weight": default_weight}.items():
            if not math.isfinite(value):
                raise ValueError(f"weight of {name!r} must be finite; got {value}.")
        self.named_weights = weights
        self.default_weight = float(default_weight)
        self._cached: dict[tuple[tuple[str, ...], torch.device], Tensor] = {}

    @override
    def setup(self, names: Sequence[str]) -> None:
        unknown = sorted(set(self.named_weights) - set(names))
        if unknown:
            raise ValueError(
                f"LinearScalarization weights name unknown objectives {unknown}; "
                f"the objectives are {list(names)}."
            )

    @override
    def weights(self, batch: LossBatch) -> Tensor:
        key = (batch.names, batch.losses.device)
        if key not in self._cached:
            values = [self.named_weights.get(name, self.default_weight) for name in batch.names]
            self._cached[key] = device_vector(values, batch.losses)
        return self._cached[key]
