"""FAMO: fast adaptive multitask optimisation, loss weights that balance the log-loss decrease."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies.base import LossBatch, LossWeighting, device_vector

# The authors' constants: Adam's default moments and the offset that keeps log(L − L*) finite.
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
GAP_EPS = 1e-8


class FAMO(LossWeighting):
    """Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive
    Multitask Optimization", NeurIPS 2023, Algorithm 1).

    Task logits ``ξ`` give ``z = softmax(ξ)``; the update descends on ``Σ_t z_t log(L_t − L_t*)``,
    i.e. it is the weighted sum with ``w_t = c · z_t / (L_t − L_t*)``, ``c = 1 / Σ_s z_s /
    (L_s − L_s*)``, so the weights sum to 1. One backward pass per step.

    ``ξ`` learns to equalise the decrease of the log losses: with ``δ_t`` the decrease of
    ``log(L_t − L_t*)`` over one step, it takes an Adam step (moments 0.9 and 0.999, as in the
    authors' code) on the gradient ``J_softmax(ξ)ᵀ δ + γ ξ``, ``γ`` being the paper's
    regularisation (Adam's L2 weight decay in the authors' code).

    Timing (our choice): the authors evaluate the batch again after the optimizer step to get
    ``δ``, an extra forward pass. Here, at the start of each call, ``δ`` compares the previous
    call's losses with this call's (the next batch, after the previous step); the update of ``ξ``
    is then applied before this call's weights. Batch-to-batch noise enters ``δ`` in exchange,
    and the first call makes no update. Under DDP the losses are averaged over processes, so ``ξ``
    is the same everywhere.

    Defaults: ``lr = 0.025`` (the authors' ``w_lr``); ``γ = 0.001``, the value of the authors'
    published QM9 run script (the paper tunes ``γ`` per benchmark, and the defaults in the
    authors' code vary between 1e-5 and 0.01). ``L* = 0`` unless ``min_losses`` says otherwise;
    ``1e-8`` is added to ``L − L*`` as in the authors' code. Losses must exceed their ``L*``.

    Args:
        lr: Adam's learning rate for the logits ``ξ``.
        gamma: the L2 regularisation ``γ`` of the logits.
        min_losses: lower bounds ``L*`` per objective name; others get 0.

    Example::

        >>> import torch
        >>> famo = FAMO()
        >>> famo.aggregate(torch.eye(2), losses=torch.tensor([1.0, 3.0]))  # z uniform: w ∝ 1/L
        tensor([0.7500, 0.2500])
    """

    state_fields = ("logits", "exp_avg", "exp_avg_sq", "steps", "previous")

    def __init__(
        self, lr: float = 0.025, gamma: float = 1e-3, min_losses: Mapping[str, float] | None = None
    ) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number; got {lr}.")
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma must be a non-negative number; got {gamma}.")
        self.min_losses = dict(min_losses or {})
        for name, value in self.min_losses.items():
            if not math.isfinite(value):
                raise ValueError(f"min_losses[{name!r}] must be finite; got {value}.")
        self.lr = float(lr)
        self.gamma = float(gamma)
        self.logits: Tensor | None = None
        self.exp_avg: Tensor | None = None
        self.exp_avg_sq: Tensor | None = None
        self.steps = 0
        self.previous: Tensor | None = None
        self._offsets: dict[tuple[tuple[str, ...], torch.device], Tensor] = {}

    @override
    def setup(self, names: Sequence[str]) -> None:
        unknown = sorted(set(self.min_losses) - set(names))
        if unknown:
            raise ValueError(
                f"FAMO min_losses name unknown objectives {unknown}; the objectives are "
                f"{list(names)}."
            )

    @override
    def weights(self, batch: LossBatch) -> Tensor:
        losses = batch.losses
        gaps = self._gaps(losses, batch.names)
        if self.previous is not None:
            previous = self._gaps(self.previous.to(losses.device), batch.names)
            self._update_logits(previous.log() - gaps.log())
        logits = (
            self.logits.to(losses.device) if self.logits is not None else torch.zeros_like(gaps)
        )
        inverse = torch.softmax(logits, dim=0) / gaps
        weights = inverse / inverse.sum()
        self.previous = losses.clone()
        return weights

    def _gaps(self, losses: Tensor, names: tuple[str, ...]) -> Tensor:
        """``L − L* + ε``, the quantities whose logarithms FAMO balances."""
        if not self.min_losses:
            return losses + GAP_EPS
        key = (names, losses.device)
        if key not in self._offsets:
            self._offsets[key] = device_vector(
                [self.min_losses.get(name, 0.0) for name in names], losses
            )
        return losses - self._offsets[key] + GAP_EPS

    def _update_logits(self, decrease: Tensor) -> None:
        """One Adam step on ``ξ`` along ``J_softmax(ξ)ᵀ δ + γ ξ``, as torch.optim.Adam takes it."""
        device = decrease.device
        logits = self.logits.to(device) if self.logits is not None else torch.zeros_like(decrease)
        z = torch.softmax(logits, dim=0)
        gradient = z * (decrease - (z * decrease).sum()) + self.gamma * logits
        exp_avg = self.exp_avg.to(device) if self.exp_avg is not None else torch.zeros_like(logits)
        exp_avg_sq = (
            self.exp_avg_sq.to(device) if self.exp_avg_sq is not None else torch.zeros_like(logits)
        )
        self.steps += 1
        self.exp_avg = exp_avg.lerp(gradient, 1 - BETAS[0])
        self.exp_avg_sq = exp_avg_sq * BETAS[1] + (1 - BETAS[1]) * gradient * gradient
        step_size = self.lr / (1 - BETAS[0] ** self.steps)
        denominator = self.exp_avg_sq.sqrt() / math.sqrt(1 - BETAS[1] ** self.steps) + ADAM_EPS
        self.logits = logits - step_size * self.exp_avg / denominator
