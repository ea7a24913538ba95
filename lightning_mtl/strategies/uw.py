"""UW: uncertainty weighting, loss weights exp(−s) with learned log-variances s."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies.base import LossBatch, LossWeighting


class UW(LossWeighting):
    """Uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to
    Weigh Losses for Scene Geometry and Semantics", CVPR 2018).

    The model minimises ``Σ_t exp(−s_t) L_t + s_t`` jointly over its parameters and one learned
    log-variance ``s_t = log σ_t²`` per objective, the form in which the paper's eq. 7 is usually
    trained (the paper's ½ factors for regression objectives scale a term's weight and its
    ``s``-gradient by ½ and leave the optimum ``s_t = log L_t`` unchanged). The parameters' update
    is the weighted sum with weights ``exp(−s_t)``: one backward pass per step.

    ``s`` is not a parameter of the model, so the strategy keeps it as state and takes its own
    plain SGD step (no momentum, no weight decay) per call, from the closed-form gradient
    ``∂/∂s_t = 1 − exp(−s_t) L_t``. With ``lr`` equal to the model's SGD learning rate this is
    exactly the joint SGD training of the paper's objective: the weights returned at a step are
    those before that step's update of ``s``, as the gradients of the model and of ``s`` are both
    taken at the current point. Near its optimum ``s_t`` follows ``log L_t`` like an exponential
    moving average with rate ``lr``; a step larger than about ``1 / (exp(−s_t) L_t)`` overshoots,
    so keep ``lr`` small when losses start far above ``exp(s_t)``.

    The paper gives no initial value; ``s = 0`` (unit weights, the plain sum) by default. The
    default ``lr = 0.01`` is our choice (a typical SGD learning rate; the paper trains ``s`` with
    the model's optimiser).

    Args:
        lr: the SGD learning rate of the log-variances.
        initial_log_variance: the starting value of every ``s_t``.

    Example::

        >>> import torch
        >>> uw = UW(lr=0.5)
        >>> uw.aggregate(torch.eye(2), losses=torch.tensor([1.0, 3.0]))
        tensor([1., 1.])
        >>> uw.log_variances  # s − 0.5 · (1 − e^{−s} L) with s = 0
        tensor([0., 1.])
        >>> uw.aggregate(torch.eye(2), losses=torch.tensor([1.0, 3.0]))
        tensor([1.0000, 0.3679])
    """

    state_fields = ("log_variances",)

    def __init__(self, lr: float = 0.01, initial_log_variance: float = 0.0) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number; got {lr}.")
        if not math.isfinite(initial_log_variance):
            raise ValueError(f"initial_log_variance must be finite; got {initial_log_variance}.")
        self.lr = float(lr)
        self.initial_log_variance = float(initial_log_variance)
        self.log_variances: Tensor | None = None

    @override
    def weights(self, batch: LossBatch) -> Tensor:
        losses = batch.losses
        if self.log_variances is None:
            log_variances = torch.full_like(losses, self.initial_log_variance)
        else:
            log_variances = self.log_variances.to(losses.device)
        weights = torch.exp(-log_variances)
        self.log_variances = log_variances - self.lr * (1.0 - weights * losses)
        return weights
