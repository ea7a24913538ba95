"""The embedded multi-task recipe's model: a shared CNN over several digits side by side, one
linear head per digit, one cross-entropy objective per task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mtl.mixin import MultiObjectiveMixin, ScopeSpec
from lightning_mtl.objectives import Objectives
from lightning_mtl.strategies.base import GradientBalancingStrategy
from lightning_mtl.strategies.linear_scalarization import LinearScalarization
from lightning_mtl.strategies.rgb import check_parameter_scope
from lightning_mtl.tasks.common.optim import sgd_with_cosine_decay
from lightning_mtl.tasks.multitask.metrics import PerTaskAccuracy, delta_m

__all__ = ["MultiDigitsEncoder", "MultiDigitsModule", "task_names"]

_IMAGE_SIDE = 8


def task_names(num_tasks: int) -> list[str]:
    """The objective names ``task0 … task{T−1}``.

    Example::

        >>> task_names(3)
        ['task0', 'task1', 'task2']
    """
    return [f"task{k}" for k in range(num_tasks)]


class MultiDigitsEncoder(nn.Sequential):
    """Two 3×3 convolutions and a linear layer: ``[B, 1, 8, 8·T]`` → ``[B, feature_dim]``.

    The convolutions are shared across positions; the linear layer sees the flattened map, so the
    features keep where each digit was, which the per-position heads need.

    Example::

        >>> MultiDigitsEncoder(num_tasks=3, feature_dim=16)(torch.zeros(2, 1, 8, 24)).shape
        torch.Size([2, 16])
    """

    def __init__(self, num_tasks: int = 3, feature_dim: int = 64, width: int = 16) -> None:
        pooled = (_IMAGE_SIDE // 2) * (_IMAGE_SIDE * num_tasks // 2)
        super().__init__(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * pooled, feature_dim),
            nn.ReLU(),
        )


def _check_baselines(baselines: Mapping[str, float], names: list[str]) -> dict[str, float]:
    """Baseline accuracies keyed by exactly the task names, each in ``(0, 1]``."""
    if set(baselines) != set(names):
        raise ValueError(
            f"baselines must give one accuracy per task, keyed {names}; got keys "
            f"{sorted(baselines)}."
        )
    checked = {name: float(baselines[name]) for name in names}
    for name, value in checked.items():
        if not 0.0 < value <= 1.0:
            raise ValueError(
                f"the baseline accuracy of {name!r} must be in (0, 1]; got {value} (Δm% "
                "divides by it)."
            )
    return checked


class MultiDigitsModule(MultiObjectiveMixin, pl.LightningModule):
    """``num_tasks`` digit classifiers on one shared trunk, balanced by a strategy.

    A :class:`MultiDigitsEncoder` turns the composite image into ``feature_dim`` features; head
    ``k`` classifies the digit at position ``k``. The objectives are ``task0 … task{T−1}``, each
    a cross-entropy. Validation and test log ``{stage}/acc_task{k}`` and ``{stage}/acc_mean``,
    and, when ``baselines`` are given, ``{stage}/delta_m``: Δm% of the per-task accuracies
    against them (see :func:`~lightning_mtl.tasks.multitask.delta_m`).

    Args:
        strategy: the balancing strategy; ``None`` is equal weighting
            (:class:`~lightning_mtl.strategies.LinearScalarization`).
        scope: ``"shared"`` (the trunk's parameters), ``"representation"`` (the features; cheaper
            for gradient-based strategies) or submodule names, see ``configure_balancing``.
        num_tasks: number of digits per image, that is tasks (≥ 2).
        num_classes: classes per task.
        feature_dim: width of the shared features.
        width: channels of the first convolution (the second has twice as many).
        lr: SGD learning rate (momentum 0.9, cosine-annealed per epoch to 1% of it).
        weight_decay: SGD weight decay.
        single_task: train only this task's head and the trunk (the single-task baseline of
            Δm%); the objectives are then that one task's, weighted by LinearScalarization. The
            other heads stay at their initialisation (chance accuracy, which ``acc_mean``
            includes) and get no gradient, so DDP needs
            ``Trainer(strategy="ddp_find_unused_parameters_true")`` in this mode.
        baselines: task name → baseline accuracy, for ``val/delta_m`` and ``test/delta_m``.

    Example::

        >>> model = MultiDigitsModule(num_tasks=2)
        >>> batch = (torch.rand(4, 1, 8, 16), torch.randint(0, 10, (4, 2)))
        >>> sorted(model.compute_objectives(batch, 0)), tuple(model(batch[0]).shape)
        (['task0', 'task1'], (4, 2, 10))
        >>> list(MultiDigitsModule(num_tasks=2, single_task=1).compute_objectives(batch, 0))
        ['task1']
    """

    def __init__(
        self,
        strategy: GradientBalancingStrategy | None = None,
        scope: ScopeSpec = "shared",
        num_tasks: int = 3,
        num_classes: int = 10,
        feature_dim: int = 64,
        width: int = 16,
        lr: float = 0.05,
        weight_decay: float = 5e-4,
        single_task: int | None = None,
        baselines: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if num_tasks < 2:
            raise ValueError(f"num_tasks must be >= 2; got {num_tasks}.")
        if single_task is not None and not 0 <= single_task < num_tasks:
            raise ValueError(f"single_task must be in 0..{num_tasks - 1}; got {single_task}.")
        if single_task is not None and not (
            strategy is None or isinstance(strategy, LinearScalarization)
        ):
            # One objective leaves nothing to balance, and a gradient-based strategy would find
            # no parameter shared by two objectives: fail here rather than at the first step.
            raise ValueError(
                f"single_task={single_task} trains one objective, which needs no balancing; "
                f"leave strategy unset or LinearScalarization, not {type(strategy).__name__}."
            )
        self.save_hyperparameters(ignore=["strategy"])
        self.task_names = task_names(num_tasks)
        self.baselines = _check_baselines(baselines, self.task_names) if baselines else None
        self.encoder = MultiDigitsEncoder(num_tasks, feature_dim, width)
        self.heads = nn.ModuleList(nn.Linear(feature_dim, num_classes) for _ in range(num_tasks))
        self.val_accuracy = PerTaskAccuracy(num_tasks, num_classes)
        self.test_accuracy = PerTaskAccuracy(num_tasks, num_classes)
        strategy = strategy if strategy is not None else LinearScalarization()
        check_parameter_scope(strategy, scope)
        self.configure_balancing(strategy, scope=scope)

    def head_logits(self, features: Tensor) -> Tensor:
        """``[B, num_tasks, num_classes]`` logits of every head."""
        return torch.stack([head(features) for head in self.heads], dim=1)

    def features(self, images: Tensor) -> Tensor:
        """``[B, feature_dim]`` shared features of ``[B, 1, 8, 8·num_tasks]`` composites."""
        expected = (1, _IMAGE_SIDE, _IMAGE_SIDE * len(self.heads))
        if tuple(images.shape[1:]) != expected:
            # Model and data module each take num_tasks; say so rather than fail in a matmul.
            raise ValueError(
                f"images must have shape [B, {', '.join(map(str, expected))}] for "
                f"num_tasks={len(self.heads)}; got {tuple(images.shape)}. Give the model and "
                "the data module the same num_tasks."
            )
        return self.encoder(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head_logits(self.features(images))

    def compute_objectives(self, batch: Any, batch_idx: int) -> dict[str, Tensor] | Objectives:
        images, labels = batch
        features = self.features(images)
        single = self.hparams.single_task
        # Only the trained heads run, so the others get no gradient (and no weight decay).
        tasks = range(len(self.heads)) if single is None else [single]
        losses = {
            self.task_names[k]: F.cross_entropy(self.heads[k](features), labels[:, k])
            for k in tasks
        }
        if self.balancing_scope == "representation":
            return Objectives(losses, representation=features)
        return losses

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = batch
        self.val_accuracy.update(self(images), labels)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = batch
        self.test_accuracy.update(self(images), labels)

    def on_validation_epoch_end(self) -> None:
        self._log_accuracies("val", self.val_accuracy)

    def on_test_epoch_end(self) -> None:
        self._log_accuracies("test", self.test_accuracy)

    def _log_accuracies(self, stage: str, metric: PerTaskAccuracy) -> None:
        values: dict[str, Tensor | float]
        # compute() syncs the counts across processes, so every rank logs the same values.
        accuracies = metric.compute()
        metric.reset()
        values = {
            f"{stage}/acc_{name}": accuracy
            for name, accuracy in zip(self.task_names, accuracies, strict=True)
        }
        values[f"{stage}/acc_mean"] = accuracies.mean()
        if self.baselines is not None:
            per_task = dict(zip(self.task_names, accuracies.tolist(), strict=True))
            values[f"{stage}/delta_m"] = delta_m(per_task, self.baselines)
        for name, value in values.items():
            # The values are already equal on every rank; sync_dist only averages equal numbers,
            # and spares the warning Lightning gives for unsynced epoch-level logs under DDP.
            self.log(name, value, prog_bar=name.endswith("acc_mean"), sync_dist=True)

    def configure_optimizers(self) -> Any:
        return sgd_with_cosine_decay(self, self.hparams.lr, self.hparams.weight_decay)
