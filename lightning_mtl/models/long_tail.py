"""A long-tailed classifier trained class-as-task: the module of the PLOT recipes."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mtl.losses.long_tail import BalancedSoftmaxLoss, mixup
from lightning_mtl.losses.variability import per_class_loss_std
from lightning_mtl.metrics.long_tail import LongTailAccuracy
from lightning_mtl.mixin import MultiObjectiveMixin
from lightning_mtl.models.digits import DigitsEncoder
from lightning_mtl.models.optim import sgd_with_cosine_decay
from lightning_mtl.models.resnet_cifar import resnet32
from lightning_mtl.objectives import per_class_objectives
from lightning_mtl.strategies.base import GradientBalancingStrategy
from lightning_mtl.strategies.linear_scalarization import LinearScalarization
from lightning_mtl.strategies.plot import PLOT, class_preference


class _DigitsNet(nn.Module):
    """The digits encoder as ``layer3`` (PLOT's scope) and a linear ``fc``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.layer3 = DigitsEncoder(feature_dim=64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.layer3(images))


class LongTailClassifier(MultiObjectiveMixin, pl.LightningModule):
    """Each class present in the batch is an objective, ``L_c = Σ_{i∈c} ℓ_i / B`` (PLOT §4.1),
    so the plain sum of the objectives is the base method's loss and any strategy can balance
    the classes.

    With :class:`~lightning_mtl.strategies.PLOT`, the perturbing pass uses the base loss (with
    mixup when ``mixup_alpha > 0``) and the balancing pass adds the variability-collapse part
    ``Std_c / K'`` to each class's objective (``L_moo = L_SAM + L_vc``, eq. 2); other strategies
    train on the base loss alone (so after :class:`~lightning_mtl.callbacks.TemporalMOO`'s switch,
    plain training). PLOT without ``class_counts`` takes the data module's. Listing the present
    classes costs one host synchronisation per step (PLOT's reference code does the same).

    Args:
        strategy: the balancing strategy; default the plain sum (vanilla training).
        backbone: ``"digits"`` (small CNN, for the embedded recipe) or ``"resnet32"`` (CIFAR).
        num_classes: number of classes.
        loss: ``"ce"`` or ``"balanced_softmax"`` (needs the data module's ``class_counts``).
        mixup_alpha: Beta parameter of mixup in the perturbing pass (with ``loss="ce"``); 0
            turns it off.
        lr: SGD learning rate (momentum 0.9, cosine decay per epoch).
        weight_decay: SGD weight decay.
        many_threshold: classes with more training samples are "many-shot".
        few_threshold: classes with fewer training samples are "few-shot".

    Example::

        >>> model = LongTailClassifier(num_classes=10)
        >>> batch = (torch.rand(4, 1, 8, 8), torch.tensor([0, 0, 3, 7]))
        >>> sorted(model.compute_objectives(batch, 0))
        ['class_0', 'class_3', 'class_7']
    """

    def __init__(
        self,
        strategy: GradientBalancingStrategy | None = None,
        backbone: Literal["digits", "resnet32"] = "digits",
        num_classes: int = 10,
        loss: Literal["ce", "balanced_softmax"] = "ce",
        mixup_alpha: float = 0.0,
        lr: float = 0.05,
        weight_decay: float = 5e-4,
        many_threshold: float = 100,
        few_threshold: float = 20,
    ) -> None:
        super().__init__()
        if backbone not in ("digits", "resnet32"):
            raise ValueError(f"backbone must be 'digits' or 'resnet32'; got {backbone!r}.")
        if loss not in ("ce", "balanced_softmax"):
            raise ValueError(f"loss must be 'ce' or 'balanced_softmax'; got {loss!r}.")
        if mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be non-negative; got {mixup_alpha}.")
        if mixup_alpha > 0 and loss != "ce":
            raise ValueError("mixup is supported with loss='ce' (soft-target cross-entropy).")
        self.save_hyperparameters(ignore=["strategy"])
        self.net = _DigitsNet(num_classes) if backbone == "digits" else resnet32(num_classes)
        self.criterion: nn.Module | None = None
        self.val_accuracy: LongTailAccuracy | None = None
        self.configure_balancing(strategy or LinearScalarization(), scope=["net.layer3"])

    def setup(self, stage: str) -> None:
        counts = getattr(self.trainer.datamodule, "class_counts", None) if self.trainer else None
        if counts is not None:
            self.val_accuracy = LongTailAccuracy(
                counts, self.hparams.many_threshold, self.hparams.few_threshold
            )
            strategy = self.balancing_strategy
            if isinstance(strategy, PLOT) and strategy.class_weights is None:
                strategy.class_weights = class_preference(counts)
        if self.hparams.loss == "balanced_softmax":
            if counts is None:
                raise ValueError("loss='balanced_softmax' needs a data module with class_counts.")
            self.criterion = BalancedSoftmaxLoss(counts, reduction="none")

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def compute_objectives(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        images, labels = batch
        if self.objective_pass == "perturb":
            return {"base": self._mixup_loss(images, labels)}
        per_sample = self._per_sample_loss(self(images), labels)
        present = sorted(set(labels.tolist()))
        split = per_class_objectives(per_sample, labels, self.hparams.num_classes)
        objectives = {f"class_{c}": split[f"class_{c}"] for c in present}
        if isinstance(self.active_balancing_strategy, PLOT):
            spread = per_class_loss_std(per_sample, labels, self.hparams.num_classes)
            measured = max(sum(1 for c in present if int((labels == c).sum()) >= 2), 1)
            objectives = {
                name: value + spread[int(name.removeprefix("class_"))] / measured
                for name, value in objectives.items()
            }
        return objectives

    def _per_sample_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.criterion is not None:
            return self.criterion(logits, labels)
        return F.cross_entropy(logits, labels, reduction="none")

    def _mixup_loss(self, images: Tensor, labels: Tensor) -> Tensor:
        if self.hparams.mixup_alpha == 0:
            return self._per_sample_loss(self(images), labels).mean()
        # Seeded by the step, so a resumed run mixes the same way.
        generator = torch.Generator().manual_seed(int(self.global_step))
        onehot = F.one_hot(labels, self.hparams.num_classes).float()
        mixed, soft_targets, _ = mixup(images, onehot, self.hparams.mixup_alpha, generator)
        return F.cross_entropy(self(mixed), soft_targets)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_groups("val")

    def on_test_epoch_end(self) -> None:
        self._log_groups("test")

    def _evaluate(self, batch: Any, stage: str) -> None:
        images, labels = batch
        logits = self(images)
        self.log(f"{stage}/acc", (logits.argmax(1) == labels).float().mean(), prog_bar=True)
        if self.val_accuracy is not None:
            self.val_accuracy.update(logits, labels)

    def _log_groups(self, stage: str) -> None:
        if self.val_accuracy is None:
            return
        result = self.val_accuracy.compute()
        for group in ("many", "medium", "few"):
            self.log(f"{stage}/acc_{group}", result[group])
        self.val_accuracy.reset()

    def configure_optimizers(self) -> Any:
        return sgd_with_cosine_decay(self, self.hparams.lr, self.hparams.weight_decay)
