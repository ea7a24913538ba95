"""CelebA's 40 attributes as 40 tasks: a shared trunk and one logistic head per attribute.

The RGB paper's CelebA benchmark (§3.2 and table 7) has 40 binary classification
objectives on one trunk; RGB with ``α_steps = 50`` and ``λ = 1`` is its best setting there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_mtl.extras import optional_import
from lightning_mtl.mixin import MultiObjectiveMixin, ScopeSpec
from lightning_mtl.objectives import ObjectiveGroups, Objectives
from lightning_mtl.strategies.base import GradientBalancingStrategy
from lightning_mtl.strategies.rgb import RGB
from lightning_mtl.tasks.multitask.data.celeba import CELEBA_ATTRIBUTES
from lightning_mtl.tasks.multitask.metrics import delta_m

__all__ = [
    "BinaryTaskScores",
    "CelebAMultiTask",
    "GlobalAveragePool",
    "SmallCelebATrunk",
    "celeba_trunk",
]

TrunkName = Literal["resnet18", "small"]


class GlobalAveragePool(nn.Module):
    """``[B, C, H, W]`` → ``[B, C]``, the mean over space.

    Equal to ``AdaptiveAvgPool2d(1)`` + flatten, but its backward is a plain broadcast, which
    CUDA runs deterministically (``AdaptiveAvgPool2d``'s backward raises under
    ``Trainer(deterministic=True)``).

    Example::

        >>> GlobalAveragePool()(torch.arange(8.0).view(1, 2, 2, 2))
        tensor([[1.5000, 5.5000]])
    """

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class SmallCelebATrunk(nn.Sequential):
    """Four stride-2 3×3 convolutions (``width``, 2×, 4×, 8× channels) with batch norm, then a
    global average: ``[B, 3, S, S]`` → ``[B, 8·width]``. For tests and CPU runs.

    Example::

        >>> SmallCelebATrunk(width=4)(torch.zeros(2, 3, 20, 20)).shape
        torch.Size([2, 32])
    """

    def __init__(self, width: int = 16) -> None:
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, 2 * width, 4 * width, 8 * width):
            layers += [
                nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        super().__init__(*layers, GlobalAveragePool())
        self.feature_dim = channels


def celeba_trunk(name: TrunkName, width: int = 16) -> tuple[nn.Module, int]:
    """The shared trunk and its feature width.

    ``"resnet18"``: torchvision's ResNet-18, randomly initialised (``weights=None``), without its
    ``fc`` layer, with :class:`GlobalAveragePool` in place of its adaptive pool: 512 features. Its
    ImageNet stem (7×7 stride-2 convolution and max-pool) leaves a 2×2 map at 64×64 input.
    ``"small"``: :class:`SmallCelebATrunk` with ``width`` channels: ``8·width`` features.

    Example::

        >>> trunk, dim = celeba_trunk("resnet18")
        >>> dim, tuple(trunk(torch.zeros(2, 3, 64, 64)).shape)
        (512, (2, 512))
    """
    if name == "small":
        small = SmallCelebATrunk(width)
        return small, small.feature_dim
    if name == "resnet18":
        resnet18 = optional_import("torchvision.models", "multitask").resnet18
        resnet = resnet18(weights=None)
        feature_dim = resnet.fc.in_features
        resnet.avgpool = GlobalAveragePool()  # type: ignore[assignment]
        resnet.fc = nn.Identity()  # type: ignore[assignment]
        return resnet, feature_dim
    raise ValueError(f"trunk must be 'resnet18' or 'small'; got {name!r}.")


class BinaryTaskScores(Metric):
    """Accuracy and F1 of each of ``num_tasks`` binary classifiers, accumulated over batches.

    ``update`` takes logits ``[B, T]`` (positive when ``> 0``) or boolean / {0, 1} predictions,
    and the {0, 1} targets ``[B, T]``; ``compute`` returns ``{"acc": [T], "f1": [T]}``. F1 is
    ``2·TP / (2·TP + FP + FN)``, and 0 for a task with neither a positive target nor a positive
    prediction (as FAMO's CelebA code, whose ε gives 0 there). The states are counts, summed
    across processes under DDP.

    Args:
        num_tasks: number of binary tasks (≥ 1).
        kwargs: passed on to :class:`torchmetrics.Metric`.

    Example::

        >>> scores = BinaryTaskScores(num_tasks=2)
        >>> scores.update(torch.tensor([[2.0, -1.0], [-3.0, 1.0]]), torch.tensor([[1, 1], [0, 1]]))
        >>> {name: value.tolist() for name, value in scores.compute().items()}
        {'acc': [1.0, 0.5], 'f1': [1.0, 0.6666666865348816]}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    true_positives: Tensor
    false_positives: Tensor
    false_negatives: Tensor
    total: Tensor

    def __init__(self, num_tasks: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}.")
        self.num_tasks = num_tasks
        for name in ("true_positives", "false_positives", "false_negatives"):
            self.add_state(name, torch.zeros(num_tasks, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Count one batch: ``preds`` logits or {0, 1} labels ``[B, T]``, ``target`` ``[B, T]``."""
        if target.ndim != 2 or target.shape[1] != self.num_tasks or preds.shape != target.shape:
            raise ValueError(
                f"preds and target must both have shape [B, {self.num_tasks}]; got "
                f"{tuple(preds.shape)} and {tuple(target.shape)}."
            )
        predicted = preds > 0 if preds.is_floating_point() else preds.bool()
        actual = target.bool()
        self.true_positives += (predicted & actual).sum(dim=0)
        self.false_positives += (predicted & ~actual).sum(dim=0)
        self.false_negatives += (~predicted & actual).sum(dim=0)
        self.total += target.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """``{"acc": [T], "f1": [T]}`` (accuracy NaN before any sample)."""
        wrong = self.false_positives + self.false_negatives
        accuracy = 1.0 - wrong.float() / self.total.float()
        twice_tp = 2 * self.true_positives
        f1 = twice_tp.float() / (twice_tp + wrong).clamp_min(1).float()
        return {"acc": accuracy, "f1": f1}


def _check_baselines(baselines: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """Baseline scores keyed by exactly the attribute names, each in ``(0, 1]``."""
    if set(baselines) != set(names):
        missing = sorted(set(names) - set(baselines))[:5]
        extra = sorted(set(baselines) - set(names))[:5]
        raise ValueError(
            f"baselines must give one score per attribute ({len(names)}); missing e.g. "
            f"{missing}, unknown e.g. {extra}."
        )
    checked = {name: float(baselines[name]) for name in names}
    for name, value in checked.items():
        if not 0.0 < value <= 1.0:
            raise ValueError(
                f"the baseline of {name!r} must be in (0, 1]; got {value} (Δm% divides by it)."
            )
    return checked


class CelebAMultiTask(MultiObjectiveMixin, pl.LightningModule):
    """One binary classifier per CelebA attribute on a shared trunk, balanced by a strategy.

    The trunk (:func:`celeba_trunk`) maps ``[B, 3, S, S]`` images to features; one linear head
    per attribute gives a logit; each objective is that attribute's binary cross-entropy, named by
    the attribute (``Smiling``, ``Young``, …). Validation and test log ``{stage}/acc_<attr>`` and
    ``{stage}/f1_<attr>`` for every attribute, ``{stage}/acc_mean`` and ``{stage}/f1_mean``, and,
    when ``baselines`` are given, ``{stage}/delta_m``: Δm% of the per-attribute accuracies (or
    F1, ``baseline_metric="f1"``, the metric of FAMO's CelebA code that the paper reuses) against
    them, lower is better and negative beats the baselines, as in the paper's tables
    (:func:`~lightning_mtl.tasks.multitask.delta_m`).

    The defaults follow the paper's CelebA setting (the RGB paper, table 7 and figure 3): RGB with
    ``α_steps = 50`` and ``λ = 1`` (μ = 0.9), and FAMO's optimiser, Adam at ``3e-4`` without
    weight decay or schedule (batch 256, 15 epochs in the recipe). The default scope is
    ``"shared"``: RGB balances the trunk's parameter gradients (a 40 × 11 M Jacobian through the
    whole trunk every step), as the paper defines its EMA direction in parameter space.
    ``"representation"`` (the 40 gradients with respect to the trunk's ``[B, 512]`` features,
    which only go back through the heads, then one backward pass through the trunk) is far
    cheaper and suits the memoryless strategies, but is refused with RGB, whose EMA direction
    needs parameter coordinates.

    Args:
        strategy: the balancing strategy; ``None`` is ``RGB(alpha_steps=50,
            proximity_weight=1.0)``.
        scope: ``"shared"`` (the trunk's parameters), ``"representation"`` (its features; not
            with RGB) or submodule names, see ``configure_balancing``.
        groups: group name → {objective: weight}; each group is one objective for the strategy
            (e.g. PGI's ``cls`` and ``rep``), see ``configure_balancing``. ``None``:
            each attribute is one objective.
        trunk: ``"resnet18"`` (torchvision, ``weights=None``) or ``"small"`` (4 convolutions).
        attributes: the task names, in target order; ``None`` is the 40 CelebA attributes.
        width: channels of the small trunk's first convolution (ignored by ResNet-18).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        baselines: attribute → single-task score in ``(0, 1]``, for ``{stage}/delta_m``.
        baseline_metric: which score ``baselines`` hold, ``"accuracy"`` or ``"f1"``.

    Example::

        >>> model = CelebAMultiTask(trunk="small", attributes=["Smiling", "Young"], width=4)
        >>> batch = (torch.rand(4, 3, 16, 16), torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]]))
        >>> sorted(model.compute_objectives(batch, 0)), tuple(model(batch[0]).shape)
        (['Smiling', 'Young'], (4, 2))
    """

    hp_metric = "val/acc_mean"

    def __init__(
        self,
        strategy: GradientBalancingStrategy | None = None,
        scope: ScopeSpec = "shared",
        groups: ObjectiveGroups | None = None,
        trunk: TrunkName = "resnet18",
        attributes: Sequence[str] | None = None,
        width: int = 16,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        baselines: dict[str, float] | None = None,
        baseline_metric: Literal["accuracy", "f1"] = "accuracy",
    ) -> None:
        super().__init__()
        names = list(CELEBA_ATTRIBUTES if attributes is None else attributes)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"attributes must be at least two distinct names; got {names}.")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int; got {width!r}.")
        if not lr > 0:
            raise ValueError(f"lr must be positive; got {lr}.")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative; got {weight_decay}.")
        if baseline_metric not in ("accuracy", "f1"):
            raise ValueError(
                f"baseline_metric must be 'accuracy' or 'f1'; got {baseline_metric!r}."
            )
        self.save_hyperparameters(ignore=["strategy"])
        self.attribute_names = names
        self.baselines = _check_baselines(baselines, names) if baselines else None
        self.trunk, feature_dim = celeba_trunk(trunk, width)
        # One head per attribute rather than one Linear(d, 40): a shared weight matrix would
        # count as a parameter of every objective under scope="shared".
        self.heads = nn.ModuleList(nn.Linear(feature_dim, 1) for _ in names)
        self.val_scores = BinaryTaskScores(len(names))
        self.test_scores = BinaryTaskScores(len(names))
        default = RGB(alpha_steps=50, proximity_weight=1.0)
        self.configure_balancing(
            strategy if strategy is not None else default, scope=scope, groups=groups
        )

    def features(self, images: Tensor) -> Tensor:
        """``[B, feature_dim]`` shared features of ``[B, 3, S, S]`` images."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [B, 3, S, S]; got {tuple(images.shape)}.")
        return self.trunk(images)

    def head_logits(self, features: Tensor) -> Tensor:
        """``[B, A]`` logits, one column per attribute."""
        return torch.cat([head(features) for head in self.heads], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        return self.head_logits(self.features(images))

    def _targets(self, targets: Tensor) -> Tensor:
        if targets.ndim != 2 or targets.shape[1] != len(self.heads):
            raise ValueError(
                f"targets must have shape [B, {len(self.heads)}] (one column per attribute); got "
                f"{tuple(targets.shape)}. Give the model the data module's attribute_names."
            )
        return targets

    def compute_objectives(self, batch: Any, batch_idx: int) -> dict[str, Tensor] | Objectives:
        images, targets = batch
        targets = self._targets(targets).to(torch.float32)
        features = self.features(images)
        logits = self.head_logits(features)
        losses = {
            name: F.binary_cross_entropy_with_logits(logits[:, k], targets[:, k])
            for k, name in enumerate(self.attribute_names)
        }
        if self.balancing_scope == "representation":
            return Objectives(losses, representation=features)
        return losses

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, targets = batch
        self.val_scores.update(self(images), self._targets(targets))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        images, targets = batch
        self.test_scores.update(self(images), self._targets(targets))

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val", self.val_scores)

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_scores)

    def _log_scores(self, stage: str, metric: BinaryTaskScores) -> None:
        # compute() syncs the counts across processes, so every rank logs the same values.
        scores = metric.compute()
        metric.reset()
        values: dict[str, Tensor | float] = {}
        for kind in ("acc", "f1"):
            for name, value in zip(self.attribute_names, scores[kind], strict=True):
                values[f"{stage}/{kind}_{name}"] = value
            values[f"{stage}/{kind}_mean"] = scores[kind].mean()
        if self.baselines is not None:
            kind = "acc" if self.hparams.baseline_metric == "accuracy" else "f1"
            per_task = dict(zip(self.attribute_names, scores[kind].tolist(), strict=True))
            values[f"{stage}/delta_m"] = delta_m(per_task, self.baselines)
        for name, value in values.items():
            # Equal on every rank already; sync_dist spares Lightning's DDP warning.
            self.log(name, value, prog_bar=name.endswith("acc_mean"), sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
