"""The optimisers the recipes share: cosine decay (embedded recipes) and warm-up + multi-step
(CIFAR-LT)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn


class WarmupCosine:
    """Learning-rate factor of epoch ``e`` (0-based) for a parameter group: a linear warm-up
    ``(e + 1) / warmup_epochs`` for the first ``warmup_epochs`` epochs, then a cosine from 1 down
    to ``final_ratio`` over the remaining ``total_epochs − warmup_epochs`` (``final_ratio +
    (1 − final_ratio)(1 + cos(π (e − W) / (T − W))) / 2``, the closed form of PyTorch's
    ``CosineAnnealingLR``, so without warm-up it is that schedule).

    Args:
        warmup_epochs: epochs of linear warm-up ``W`` (0: none).
        total_epochs: the schedule's length ``T`` (> ``warmup_epochs``).
        final_ratio: the factor the cosine ends at, ``≥ 0``.

    Example::

        >>> schedule = WarmupCosine(warmup_epochs=2, total_epochs=6, final_ratio=0.0)
        >>> [round(schedule(e), 4) for e in range(6)]
        [0.5, 1.0, 1.0, 0.8536, 0.5, 0.1464]
    """

    def __init__(self, warmup_epochs: int, total_epochs: int, final_ratio: float) -> None:
        if (
            isinstance(warmup_epochs, bool)
            or not isinstance(warmup_epochs, int)
            or warmup_epochs < 0
        ):
            raise ValueError(f"warmup_epochs must be a non-negative int; got {warmup_epochs!r}.")
        if total_epochs <= warmup_epochs:
            raise ValueError(
                f"total_epochs ({total_epochs}) must exceed warmup_epochs ({warmup_epochs})."
            )
        if not (math.isfinite(final_ratio) and final_ratio >= 0):
            raise ValueError(f"final_ratio must be finite and non-negative; got {final_ratio}.")
        self.warmup_epochs = warmup_epochs
        self.total_epochs = total_epochs
        self.final_ratio = float(final_ratio)

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / self.warmup_epochs
        progress = (epoch - self.warmup_epochs) / (self.total_epochs - self.warmup_epochs)
        cosine = (1.0 + math.cos(math.pi * progress)) / 2
        return self.final_ratio + (1.0 - self.final_ratio) * cosine


def groups_without_decay_on_biases_and_norms(
    named_parameters: Iterable[tuple[str, nn.Parameter]], **options: Any
) -> list[dict[str, Any]]:
    """Parameter groups that exempt biases and one-dimensional parameters (normalisation scales
    and shifts) from weight decay, the rule of DINO's ``get_params_groups``, which SimGCD's
    ``train.py`` and EAGC's ``methods/SimGCD.py`` apply to the backbone and the heads.

    Returns the decayed parameters (the optimizer's ``weight_decay``) and the exempt ones
    (``weight_decay`` 0), each with ``options`` (e.g. ``lr``); an empty group is left out.

    Example::

        >>> layer = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
        >>> groups = groups_without_decay_on_biases_and_norms(layer.named_parameters(), lr=0.1)
        >>> [(len(g["params"]), g.get("weight_decay"), g["lr"]) for g in groups]
        [(1, None, 0.1), (3, 0.0, 0.1)]
    """
    decayed: list[nn.Parameter] = []
    exempt: list[nn.Parameter] = []
    for name, parameter in named_parameters:
        (exempt if name.endswith(".bias") or parameter.ndim == 1 else decayed).append(parameter)
    groups = [{"params": decayed, **options}, {"params": exempt, "weight_decay": 0.0, **options}]
    return [group for group in groups if group["params"]]


def sgd_with_cosine_decay(
    module: pl.LightningModule,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    final_lr_ratio: float = 0.01,
    warmup_epochs: int = 0,
    parameters: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """SGD with momentum, the learning rate cosine-annealed per epoch to ``final_lr_ratio · lr``
    (1% by default; SimGCD uses 1e-3) over the Trainer's ``max_epochs`` (100 when unbounded),
    after ``warmup_epochs`` of linear warm-up (:class:`WarmupCosine`), as a
    ``configure_optimizers`` return value.

    ``parameters`` gives parameter groups (``{"params": ..., "lr": ...}``; a group without
    ``"lr"`` gets ``lr``) instead of all of ``module``'s parameters. Every group ends at the same
    ``final_lr_ratio · lr``, as ``CosineAnnealingLR``'s single ``eta_min`` does in the authors'
    code of SimGCD and EAGC.

    Example::

        >>> model = pl.LightningModule()
        >>> model.layer = torch.nn.Linear(2, 1)
        >>> model.trainer = pl.Trainer(max_epochs=10, logger=False, enable_checkpointing=False,
        ...                            enable_progress_bar=False, enable_model_summary=False)
        >>> config = sgd_with_cosine_decay(model, lr=0.1, weight_decay=5e-4, final_lr_ratio=1e-3)
        >>> schedule = config["lr_scheduler"]["scheduler"]
        >>> [round(f(10), 6) for f in schedule.lr_lambdas], config["lr_scheduler"]["interval"]
        ([0.001], 'epoch')
    """
    if not 0.0 <= final_lr_ratio <= 1.0:
        raise ValueError(f"final_lr_ratio must lie in [0, 1]; got {final_lr_ratio}.")
    groups = module.parameters() if parameters is None else parameters
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    epochs = module.trainer.max_epochs if module.trainer.max_epochs not in (None, -1) else 100
    final_lr = lr * final_lr_ratio
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [
            WarmupCosine(warmup_epochs, max(epochs, warmup_epochs + 1), final_lr / group["lr"])
            for group in optimizer.param_groups
        ],
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


class WarmupMultiStep:
    """Learning-rate factor of epoch ``e`` (0-based): linear warm-up ``(e + 1) / warmup_epochs``
    for the first ``warmup_epochs`` epochs, then ``gamma`` to the power of the number of
    ``milestones`` at or below ``e`` — the CIFAR-LT schedule (LDAM-DRW's warm-up; PLOT's ×0.1 at
    epochs 160 and 180).

    A callable object rather than a lambda, so that ``LambdaLR`` keeps it in its state dict.

    Args:
        warmup_epochs: epochs of linear warm-up (0: none).
        milestones: epochs from which the factor is multiplied by ``gamma`` once more.
        gamma: the decay per milestone.

    Example::

        >>> schedule = WarmupMultiStep(warmup_epochs=5, milestones=(160, 180), gamma=0.1)
        >>> [round(schedule(e), 6) for e in (0, 4, 5, 159, 160, 179, 180, 199)]
        [0.2, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    """

    def __init__(
        self, warmup_epochs: int = 5, milestones: Sequence[int] = (160, 180), gamma: float = 0.1
    ) -> None:
        if (
            isinstance(warmup_epochs, bool)
            or not isinstance(warmup_epochs, int)
            or warmup_epochs < 0
        ):
            raise ValueError(f"warmup_epochs must be a non-negative int; got {warmup_epochs!r}.")
        steps = [int(milestone) for milestone in milestones]
        if steps != sorted(steps) or any(milestone < 0 for milestone in steps):
            raise ValueError(f"milestones must be non-negative and increasing; got {milestones!r}.")
        if not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be positive; got {gamma}.")
        self.warmup_epochs = warmup_epochs
        self.milestones = steps
        self.gamma = float(gamma)

    def __call__(self, epoch: int) -> float:
        decay = self.gamma ** sum(1 for milestone in self.milestones if epoch >= milestone)
        if epoch < self.warmup_epochs:
            return decay * (epoch + 1) / self.warmup_epochs
        return decay


def sgd_with_warmup_multistep(
    module: pl.LightningModule,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    warmup_epochs: int = 5,
    milestones: Sequence[int] = (160, 180),
    gamma: float = 0.1,
) -> dict[str, Any]:
    """SGD with momentum and the :class:`WarmupMultiStep` schedule stepped per epoch, as a
    ``configure_optimizers`` return value: the CIFAR-LT recipes' optimiser (PLOT: lr 0.1,
    momentum 0.9, weight decay 2e-4, 5 warm-up epochs, ×0.1 at epochs 160 and 180).

    Example::

        >>> model = pl.LightningModule()
        >>> model.layer = torch.nn.Linear(2, 1)
        >>> config = sgd_with_warmup_multistep(model, lr=0.1, weight_decay=2e-4)
        >>> round(config["optimizer"].param_groups[0]["lr"], 6)  # epoch 0: 1/5 of the rate
        0.02
        >>> config["lr_scheduler"]["interval"]
        'epoch'
    """
    optimizer = torch.optim.SGD(
        module.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupMultiStep(warmup_epochs, milestones, gamma)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
