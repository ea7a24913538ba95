"""The embedded default recipe's model: a small CNN on 8×8 digits with a classification and a
supervised-contrastive representation objective, balanced by PGI."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_mtl.data.digits import digits_two_view_augment
from lightning_mtl.losses.supcon import supervised_contrastive_loss
from lightning_mtl.mixin import MultiObjectiveMixin, ScopeSpec
from lightning_mtl.models.optim import sgd_with_cosine_decay
from lightning_mtl.strategies.base import GradientBalancingStrategy
from lightning_mtl.strategies.pgi import PGI


class DigitsEncoder(nn.Sequential):
    """Two 3×3 convolutions and a linear layer: ``[B, 1, 8, 8]`` → ``[B, feature_dim]``.

    Example::

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


class DigitsMultiObjective(MultiObjectiveMixin, pl.LightningModule):
    """Digits classifier trained on two objectives, the shape of a GCD model in miniature.

    ``cls`` is the cross-entropy of a linear classifier on both augmented views; ``rep`` is the
    supervised contrastive loss of a projection of the two views. The strategy (PGI by default)
    balances them; with a gradient-based strategy the heads get their own losses' gradients.

    Args:
        strategy: the balancing strategy.
        scope: what the strategy balances (see ``configure_balancing``).
        num_classes: number of classes.
        feature_dim: width of the encoder's output.
        projection_dim: width of the contrastive projection.
        temperature: temperature of the supervised contrastive loss.
        lr: SGD learning rate (momentum 0.9, cosine-annealed per epoch to 1% of it).
        weight_decay: SGD weight decay.
        seed: seed of the per-step augmentation, drawn from ``seed`` and the step so that a
            resumed run sees the same views.

    Example::

        >>> model = DigitsMultiObjective()
        >>> sorted(model.compute_objectives((torch.rand(4, 1, 8, 8), torch.arange(4)), 0))
        ['cls', 'rep']
    """

    def __init__(
        self,
        strategy: GradientBalancingStrategy | None = None,
        scope: ScopeSpec = "shared",
        num_classes: int = 10,
        feature_dim: int = 64,
        projection_dim: int = 32,
        temperature: float = 0.1,
        lr: float = 0.05,
        weight_decay: float = 5e-4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["strategy"])
        self.encoder = DigitsEncoder(feature_dim)
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, projection_dim)
        )
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.configure_balancing(strategy if strategy is not None else PGI(), scope=scope)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.encoder(images))

    def compute_objectives(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        images, labels = batch
        generator = torch.Generator(device=images.device)
        generator.manual_seed(self.hparams.seed * 1_000_003 + self.global_step)
        views = torch.cat(
            [digits_two_view_augment(images, generator), digits_two_view_augment(images, generator)]
        )
        features = self.encoder(views)
        cls = F.cross_entropy(self.classifier(features), labels.repeat(2))
        projected = self.projector(features).view(2, len(images), -1).transpose(0, 1)
        rep = supervised_contrastive_loss(projected, labels, temperature=self.hparams.temperature)
        return {"cls": cls, "rep": rep}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.val_accuracy(logits, labels)
        self.log("val/acc", self.val_accuracy, prog_bar=True)
        self.log("val/ce", F.cross_entropy(logits, labels))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = batch
        self.test_accuracy(self(images), labels)
        self.log("test/acc", self.test_accuracy)

    def configure_optimizers(self) -> Any:
        return sgd_with_cosine_decay(self, self.hparams.lr, self.hparams.weight_decay)
