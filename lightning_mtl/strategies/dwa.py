"""DWA: dynamic weight average, loss weights from the rate of change of epoch-averaged losses."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies.base import LossBatch, LossWeighting


class DWA(LossWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
    Attention", CVPR 2019).

    In epoch ``k`` objective ``t`` gets ``λ_t(k) = T · softmax_t(r(k) / temperature)`` with
    ``r_t(k) = L̄_t(k−1) / L̄_t(k−2)``, ``L̄_t`` the epoch-averaged loss and ``T`` the number of
    objectives, so the weights sum to ``T``; an objective whose loss fell more slowly gets more
    weight. Weights are 1 in the first two epochs, before two averages exist. The paper's
    temperature is 2. One backward pass per step.

    Choices where the paper is silent:

    * The epoch average is the mean of the losses that this strategy saw in that epoch, i.e. of
      the training steps' losses (not a separate pass over the data); under DDP these are the
      losses averaged over processes. An epoch in which it was not used contributes no average.
    * Epochs count from the first step on which the strategy is used, so behind a warm-up
      callback the two epochs of unit weights start after the warm-up.

    Losses should be positive, as the ratios assume.

    Args:
        temperature: the softmax temperature; larger values give more uniform weights.

    Example::

        >>> import torch
        >>> from lightning_mtl.strategies.base import TrainingProgress
        >>> dwa = DWA()
        >>> for epoch, losses in enumerate([[2.0, 4.0], [1.0, 4.0], [1.0, 4.0]]):
        ...     losses, progress = torch.tensor(losses), TrainingProgress(epoch=epoch)
        ...     direction = dwa.aggregate(torch.eye(2), losses=losses, progress=progress)
        >>> direction  # r = (0.5, 1.0): the objective that stalled gets the larger weight
        tensor([0.8756, 1.1244])
    """

    state_fields = ("epoch", "count", "sums", "history")

    def __init__(self, temperature: float = 2.0) -> None:
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number; got {temperature}.")
        self.temperature = float(temperature)
        self.epoch: int | None = None
        self.count = 0
        self.sums: Tensor | None = None
        # Averages of the last (at most two) epochs, oldest first: [≤2, T].
        self.history: Tensor | None = None

    @override
    def weights(self, batch: LossBatch) -> Tensor:
        losses = batch.losses
        if batch.progress.epoch != self.epoch:
            self._close_epoch()
            self.epoch = batch.progress.epoch
        self.sums = losses.clone() if self.sums is None else self.sums.to(losses.device) + losses
        self.count += 1
        if self.history is None or len(self.history) < 2:
            weights = torch.ones_like(losses)
        else:
            self.history = self.history.to(losses.device)
            ratios = self.history[1] / self.history[0]
            weights = len(losses) * torch.softmax(ratios / self.temperature, dim=0)
        return weights

    def _close_epoch(self) -> None:
        if self.sums is None:
            return
        average = (self.sums / self.count)[None]
        previous = self.history.to(average.device) if self.history is not None else average[:0]
        self.history = torch.cat([previous, average])[-2:]
        self.sums, self.count = None, 0
