"""A long-tailed classifier trained class-as-task: the module of the PLOT recipes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mtl.mixin import MultiObjectiveMixin
from lightning_mtl.objectives import per_class_objectives
from lightning_mtl.strategies.base import GradientBalancingStrategy
from lightning_mtl.strategies.linear_scalarization import LinearScalarization
from lightning_mtl.strategies.plot import PLOT, class_preference
from lightning_mtl.tasks.common.digits import DigitsEncoder
from lightning_mtl.tasks.common.optim import sgd_with_cosine_decay, sgd_with_warmup_multistep
from lightning_mtl.tasks.long_tail.losses import (
    BalancedSoftmaxLoss,
    DeferredReweighting,
    LDAMLoss,
    LogitAdjustedLoss,
    mixup_pairs,
)
from lightning_mtl.tasks.long_tail.metrics import LongTailAccuracy
from lightning_mtl.tasks.long_tail.resnet_cifar import resnet32
from lightning_mtl.tasks.long_tail.variability import variability_collapse_loss


class _DigitsNet(nn.Module):
    """The digits encoder as ``layer3`` (PLOT's scope) and a linear ``fc``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.layer3 = DigitsEncoder(feature_dim=64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.layer3(images))


LossName = Literal["ce", "balanced_softmax", "logit_adjusted", "ldam"]
_LOSSES = ("ce", "balanced_softmax", "logit_adjusted", "ldam")


class LongTailClassifier(MultiObjectiveMixin, pl.LightningModule):
    """Each class present in the batch is an objective, ``L_c = Σ_{i∈c} ℓ_i / B`` (PLOT §4.1),
    so the plain sum of the objectives is the base method's loss and any strategy can balance
    the classes.

    Base methods (``loss``): cross-entropy, Balanced Softmax, logit adjustment, and LDAM with
    its deferred re-weighting (LDAM-DRW: margins up to ``ldam_max_m``, scale ``ldam_s``, a cosine
    classifier on ResNet-32, class-balanced weights with ``drw_beta`` from epoch
    ``drw_start_epoch``); with ``mixup_alpha > 0`` any of them is mixed up. Every one yields
    per-sample losses ``ℓ_i``, split by class: with DRW weights ``w``, ``ℓ_i = w_{y_i} l_i · B /
    Σ_j w_{y_j}``, so that their mean is the reference's weighted mean; with mixup, ``λ ℓ(z_i,
    y_i)`` counts for class ``y_i`` and ``(1 − λ) ℓ(z_i, y_{π(i)})`` for class ``y_{π(i)}``.

    With :class:`~lightning_mtl.strategies.PLOT`, the perturbing pass uses the base loss (with
    mixup when ``mixup_alpha > 0``) plus ``variability_weight · L_vc``, and the balancing pass the
    per-class losses ``L_c`` on the un-mixed batch; other strategies train on the base loss alone
    (so after :class:`~lightning_mtl.callbacks.TemporalMOO`'s switch, plain training on the base
    method). PLOT without ``class_counts`` takes the data module's. Listing the present classes
    costs one host synchronisation per step (PLOT's reference code does the same).

    **Variability collapse: the authors' code, not the paper.** The PLOT paper (eq. 2 and
    Algorithm 1) back-propagates ``L_moo = L_SAM + L_vc`` into every class gradient, with weight 1.
    The authors' ``train_cifar.py`` instead weighs ``L_vc`` by ``bal_ratio`` (0.01 on CIFAR-10-LT
    at imbalance 50 and 100; 0.02 at 200 and on CIFAR-100-LT), keeps it out of the per-class
    gradients that CAGrad balances, and lets ``L_SAM + bal_ratio · L_vc`` train the layers
    outside the balanced stage. We follow the code (it produced the published numbers):
    ``variability_weight · L_vc`` joins the perturbing pass, whose gradient is what trains the
    parameters outside the scope (see :class:`~lightning_mtl.strategies.SharpnessAware`), and
    the class objectives are ``L_c`` alone. ``L_vc`` (:func:`~lightning_mtl.tasks.long_tail.
    variability_collapse_loss`) is the mean over the classes with two or more samples of the
    standard deviation of their per-sample losses ``ℓ(f(x_i), y_i)`` (on the mixed images with
    the un-permuted labels under mixup, as the code's ``loss_sam``). Two small departures
    remain, both from the mixin's single perturbing pass: ``L_vc`` is taken at ``θ`` instead of
    ``θ + ε`` (``‖ε‖ = ρ = 1e-4``), and its gradient also enters the direction of ``ε`` (the
    code perturbs along the base loss alone), with a share of order ``variability_weight``.

    There is no ``groups`` argument, unlike the other bundled modules: the objectives are the
    classes present in each batch, so a fixed grouping would name classes that a batch lacks
    (an error in ``configure_balancing``'s grouping, which needs every named loss every step).
    ``max_moo_classes`` is the way to fewer, pooled objectives.

    Args:
        strategy: the balancing strategy; default the plain sum (vanilla training).
        backbone: ``"digits"`` (small CNN, for the embedded recipe) or ``"resnet32"`` (CIFAR).
        num_classes: number of classes.
        loss: ``"ce"``, ``"balanced_softmax"``, ``"logit_adjusted"`` or ``"ldam"`` (all but
            ``"ce"`` need the data module's ``class_counts``).
        mixup_alpha: Beta parameter of mixup; 0 turns it off. :attr:`mixup_enabled` turns it off
            at run time (cRT's second stage does).
        lr: SGD learning rate (momentum ``momentum``).
        weight_decay: SGD weight decay.
        many_threshold: classes with more training samples are "many-shot".
        few_threshold: classes with fewer training samples are "few-shot".
        logit_adjust_tau: the strength ``τ`` of ``loss="logit_adjusted"``.
        ldam_max_m: LDAM's largest margin (0.5 in LDAM-DRW).
        ldam_s: LDAM's logit scale (30 in LDAM-DRW).
        drw_start_epoch: first (0-based) epoch of LDAM's deferred re-weighting (160 of 200 in
            LDAM-DRW); ``None`` for LDAM without DRW.
        drw_beta: the ``β`` of the class-balanced DRW weights.
        normalized_classifier: a cosine classifier on ResNet-32; ``None`` means exactly when
            ``loss="ldam"`` (as LDAM-DRW). The digits backbone always has a linear ``fc``, where
            LDAM scales the raw logits by ``ldam_s`` (lower it there).
        lr_schedule: ``"cosine"`` (per epoch to 1% of ``lr``, the embedded recipes) or
            ``"warmup_multistep"`` (linear warm-up, then ×``lr_decay`` at each milestone: the
            CIFAR-LT recipes).
        warmup_epochs: warm-up epochs of ``"warmup_multistep"``.
        milestones: epochs of the decays of ``"warmup_multistep"``.
        lr_decay: the decay factor of ``"warmup_multistep"``.
        momentum: SGD momentum.
        variability_weight: the weight of PLOT's variability-collapse loss ``L_vc`` in the
            perturbing pass (the authors' ``bal_ratio``: 0.01 on CIFAR-10-LT at imbalance 50
            and 100, 0.02 at 200 and on CIFAR-100-LT); 0 turns it off. Only under PLOT.
        max_moo_classes: under PLOT, at most this many of the batch's classes are separate
            objectives (PLOT's class sampling for many-class data, appendix §5–6); ``None``:
            all of them. When more classes are present, ``max_moo_classes`` of them are drawn
            uniformly at random (seeded by the global step, so a resumed run draws the same) and
            the others are pooled into one objective named ``class_a+b+…`` (the sum of their
            objectives; :class:`~lightning_mtl.strategies.PLOT` gives it the sum of their
            preferences). The paper only says that a random subset of the classes
            "participates in MOO"; pooling the rest into one task, rather than dropping them,
            is our choice, so that every sample still trains the model and the objectives
            still sum to the base loss.

    Example::

        >>> model = LongTailClassifier(num_classes=10)
        >>> batch = (torch.rand(4, 1, 8, 8), torch.tensor([0, 0, 3, 7]))
        >>> sorted(model.compute_objectives(batch, 0))
        ['class_0', 'class_3', 'class_7']
    """

    hp_metric = "val/acc"

    mixup_enabled: bool = True
    """Whether ``mixup_alpha > 0`` mixes batches now (cRT's second stage turns it off)."""

    def __init__(
        self,
        strategy: GradientBalancingStrategy | None = None,
        backbone: Literal["digits", "resnet32"] = "digits",
        num_classes: int = 10,
        loss: LossName = "ce",
        mixup_alpha: float = 0.0,
        lr: float = 0.05,
        weight_decay: float = 5e-4,
        many_threshold: float = 100,
        few_threshold: float = 20,
        logit_adjust_tau: float = 1.0,
        ldam_max_m: float = 0.5,
        ldam_s: float = 30.0,
        drw_start_epoch: int | None = 160,
        drw_beta: float = 0.9999,
        normalized_classifier: bool | None = None,
        lr_schedule: Literal["cosine", "warmup_multistep"] = "cosine",
        warmup_epochs: int = 5,
        milestones: Sequence[int] = (160, 180),
        lr_decay: float = 0.1,
        momentum: float = 0.9,
        max_moo_classes: int | None = None,
        variability_weight: float = 0.01,
    ) -> None:
        super().__init__()
        if backbone not in ("digits", "resnet32"):
            raise ValueError(f"backbone must be 'digits' or 'resnet32'; got {backbone!r}.")
        if max_moo_classes is not None and max_moo_classes < 1:
            raise ValueError(f"max_moo_classes must be >= 1 or None; got {max_moo_classes}.")
        if loss not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES}; got {loss!r}.")
        if not (math.isfinite(variability_weight) and variability_weight >= 0):
            raise ValueError(
                f"variability_weight must be finite and non-negative; got {variability_weight}."
            )
        if mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be non-negative; got {mixup_alpha}.")
        if lr_schedule not in ("cosine", "warmup_multistep"):
            raise ValueError(
                f"lr_schedule must be 'cosine' or 'warmup_multistep'; got {lr_schedule!r}."
            )
        if drw_start_epoch is not None and drw_start_epoch < 0:
            raise ValueError(f"drw_start_epoch must be >= 0 or None; got {drw_start_epoch}.")
        self.save_hyperparameters(ignore=["strategy"])
        if normalized_classifier is None:
            normalized_classifier = loss == "ldam"
        if backbone == "digits":
            self.net: nn.Module = _DigitsNet(num_classes)
        else:
            self.net = resnet32(num_classes, normalized_classifier=normalized_classifier)
        self.criterion: nn.Module | None = None
        self.drw: DeferredReweighting | None = None
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
        loss = self.hparams.loss
        if loss == "ce" or self.criterion is not None:
            return
        if counts is None:
            raise ValueError(f"loss={loss!r} needs a data module with class_counts.")
        self.criterion = self.build_criterion(counts)
        if loss == "ldam" and self.hparams.drw_start_epoch is not None:
            self.drw = DeferredReweighting(
                counts, self.hparams.drw_start_epoch, self.hparams.drw_beta
            )

    def build_criterion(self, class_counts: Sequence[int]) -> nn.Module:
        """The per-sample (``reduction="none"``) loss of ``hparams.loss`` for these counts.

        Example::

            >>> LongTailClassifier(loss="ldam").build_criterion([100, 10])
            LDAMLoss(num_classes=2, max_m=0.5, s=30.0)
        """
        loss = self.hparams.loss
        if loss == "balanced_softmax":
            return BalancedSoftmaxLoss(class_counts, reduction="none")
        if loss == "logit_adjusted":
            return LogitAdjustedLoss(
                class_counts, tau=self.hparams.logit_adjust_tau, reduction="none"
            )
        if loss == "ldam":
            return LDAMLoss(
                class_counts, self.hparams.ldam_max_m, self.hparams.ldam_s, reduction="none"
            )
        raise ValueError(f"loss={loss!r} has no class-count criterion.")

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def compute_perturbation_objectives(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """PLOT's perturbing pass: the base method's loss (mixed up when ``mixup_alpha > 0``)
        and, under PLOT, ``variability_weight · L_vc`` (see the class docstring)."""
        images, labels = batch
        base, per_sample = self._base_loss(images, labels)
        objectives = {"base": base}
        weight = self.hparams.variability_weight
        if weight > 0 and isinstance(self.active_balancing_strategy, PLOT):
            spread = variability_collapse_loss(per_sample, labels, self.hparams.num_classes)
            objectives["variability"] = weight * spread
        return objectives

    def compute_objectives(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        images, labels = batch
        num_classes = self.hparams.num_classes
        # The step's one host synchronisation: which classes are present (counted with
        # index_add_: bincount would first read the largest label on the host).
        counts = (
            torch.zeros(num_classes, dtype=torch.long, device=labels.device)
            .index_add_(0, labels, torch.ones_like(labels))
            .tolist()
        )
        present = [c for c, count in enumerate(counts) if count]
        plot = isinstance(self.active_balancing_strategy, PLOT)
        if self._mixing and not plot:
            split = self._mixed_class_losses(images, labels)
            return {f"class_{c}": split[f"class_{c}"] for c in present}
        per_sample = self.per_sample_loss(self(images), labels)
        split = per_class_objectives(per_sample, labels, num_classes)
        if not plot:
            return {f"class_{c}": split[f"class_{c}"] for c in present}
        chosen, pooled = self._sample_moo_classes(present)
        objectives = {f"class_{c}": split[f"class_{c}"] for c in chosen}
        if pooled:
            pooled_name = "class_" + "+".join(map(str, pooled))
            objectives[pooled_name] = sum(split[f"class_{c}"] for c in pooled)
        return objectives

    def _sample_moo_classes(self, present: list[int]) -> tuple[list[int], list[int]]:
        """``(classes that are objectives, classes pooled into one)`` (see ``max_moo_classes``)."""
        limit = self.hparams.max_moo_classes
        if limit is None or len(present) <= limit:
            return present, []
        generator = torch.Generator().manual_seed(int(self.global_step))
        picked = set(torch.randperm(len(present), generator=generator)[:limit].tolist())
        chosen = [c for i, c in enumerate(present) if i in picked]
        return chosen, [c for i, c in enumerate(present) if i not in picked]

    def per_sample_loss(
        self, logits: Tensor, labels: Tensor, weights_of: Tensor | None = None
    ) -> Tensor:
        """``[B]`` losses of the base method whose mean is its batch loss (DRW included).

        Args:
            logits: ``[B, C]`` raw logits.
            labels: ``[B]`` the labels each sample's loss is taken against.
            weights_of: ``[B]`` the labels whose DRW weights normalise the batch (default
                ``labels``; mixup passes the un-permuted labels for both terms).
        """
        if self.criterion is None:
            return F.cross_entropy(logits, labels, reduction="none")
        if self.drw is None:
            return self.criterion(logits, labels)
        weight = self.drw(int(self.current_epoch))
        if weight is None:
            return self.criterion(logits, labels)
        reference = labels if weights_of is None else weights_of
        # The reference's weighted mean Σ w_i l_i / Σ w_i, kept as per-sample terms.
        scale = labels.shape[0] / weight[reference].sum()
        return self.criterion(logits, labels, weight=weight) * scale

    @property
    def _mixing(self) -> bool:
        return self.hparams.mixup_alpha > 0 and self.mixup_enabled

    def _mix(self, images: Tensor) -> tuple[Tensor, Tensor, float]:
        # Seeded by the step, so a resumed run mixes the same way.
        generator = torch.Generator().manual_seed(int(self.global_step))
        return mixup_pairs(images, self.hparams.mixup_alpha, generator)

    def _mixed_class_losses(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        mixed, perm, lam = self._mix(images)
        logits = self(mixed)
        partners = labels[perm]
        num_classes = self.hparams.num_classes
        own = per_class_objectives(lam * self.per_sample_loss(logits, labels), labels, num_classes)
        other = per_class_objectives(
            (1.0 - lam) * self.per_sample_loss(logits, partners, weights_of=labels),
            partners,
            num_classes,
        )
        return {name: own[name] + other[name] for name in own}

    def _base_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The base method's batch loss and the ``[B]`` losses ``ℓ(f(x_i), y_i)`` against the
        un-permuted labels (on the mixed images under mixup)."""
        if not self._mixing:
            own = self.per_sample_loss(self(images), labels)
            return own.mean(), own
        mixed, perm, lam = self._mix(images)
        logits = self(mixed)
        own = self.per_sample_loss(logits, labels)
        other = self.per_sample_loss(logits, labels[perm], weights_of=labels).mean()
        return lam * own.mean() + (1.0 - lam) * other, own

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
        hparams = self.hparams
        if hparams.lr_schedule == "warmup_multistep":
            return sgd_with_warmup_multistep(
                self,
                hparams.lr,
                hparams.weight_decay,
                hparams.momentum,
                hparams.warmup_epochs,
                hparams.milestones,
                hparams.lr_decay,
            )
        return sgd_with_cosine_decay(self, hparams.lr, hparams.weight_decay, hparams.momentum)
