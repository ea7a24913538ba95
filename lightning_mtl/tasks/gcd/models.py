"""Generalized category discovery (GCD) models: SimGCD's parametric classifier, with PGI's
classification / representation objectives, optional EAGC, on the embedded digits CNN or any timm
backbone (DINO ViT-B/16 for the papers' benchmarks); and the embedded default recipe's model, the
two objective groups of a GCD model in miniature on fully labelled digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from rich.progress import Progress
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_mtl.extras import optional_import
from lightning_mtl.mixin import MultiObjectiveMixin, ScopeSpec
from lightning_mtl.objectives import ObjectiveGroups
from lightning_mtl.strategies.base import GradientBalancingStrategy
from lightning_mtl.strategies.pgi import PGI
from lightning_mtl.tasks.common.digits import DigitsEncoder
from lightning_mtl.tasks.common.optim import (
    WarmupCosine,
    groups_without_decay_on_biases_and_norms,
    sgd_with_cosine_decay,
)
from lightning_mtl.tasks.gcd.data.digits import digits_two_view_augment
from lightning_mtl.tasks.gcd.eagc import EAGC, ReferenceAnchor
from lightning_mtl.tasks.gcd.losses.distillation import self_distillation_loss, teacher_temperature
from lightning_mtl.tasks.gcd.losses.supcon import supervised_contrastive_loss
from lightning_mtl.tasks.gcd.losses.swav import swav_loss
from lightning_mtl.tasks.gcd.metrics import ClusterAccuracy

__all__ = [
    "DigitsMultiObjective",
    "GCDModule",
    "ProjectionHead",
    "digits_gcd_backbone",
    "gcd_objective_groups",
    "timm_backbone",
]

_LOGIT_SCALE = 10.0  # SimGCD's cosine logits / 0.1


def digits_gcd_backbone(feature_dim: int = 64) -> nn.Sequential:
    """The embedded GCD backbone: :class:`~lightning_mtl.tasks.common.DigitsEncoder` with its final
    ReLU replaced by a ``BatchNorm1d``.

    Why not the encoder as it is: a cosine classifier divides by the feature norm, and the small
    CNN's features start with a norm of about 0.3 and a common direction (mean pairwise cosine
    0.91 at initialisation), so the gradients through the normalisation were ten times the
    weights and SGD at lr 0.05 never left chance (measured: cross-entropy alone stayed at
    ``log 5`` for five epochs, with or without the ReLU). Batch-normalising the feature centres
    and scales it; the same run then reaches 96% on the old classes in five epochs.

    Example::

        >>> digits_gcd_backbone(16)(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 16])
    """
    encoder = list(DigitsEncoder(feature_dim))[:-1]
    return nn.Sequential(*encoder, nn.BatchNorm1d(feature_dim))


def timm_backbone(
    name: str, weights: str | Path | None = None, trainable_blocks: int | None = 1
) -> nn.Module:
    """A timm feature extractor (``num_classes=0``: pooled features), offline.

    ``weights`` is a local checkpoint file loaded through timm's own pretrained-weights path
    (``pretrained_cfg_overlay={"file": weights}``), so timm's key conversion for the model applies
    (e.g. the original DINO release's ``dino_vitbase16_pretrain.pth`` for
    ``vit_base_patch16_224.dino``); nothing is fetched from the hub. ``None`` gives random
    weights (tests, or training from scratch).

    ``trainable_blocks`` freezes a ViT-style backbone (one with ``.blocks``) except its last
    ``trainable_blocks`` transformer blocks, as SimGCD does (``grad_from_block = 11`` on
    ViT-B/16: only the last block trains; the final norm stays frozen, as there). ``None`` leaves
    everything trainable.

    Args:
        name: timm model name, e.g. ``"vit_base_patch16_224.dino"``.
        weights: local weights file, or ``None``.
        trainable_blocks: number of last blocks left trainable, or ``None`` for all parameters.

    Raises:
        FileNotFoundError: If ``weights`` does not exist.
        ValueError: If ``trainable_blocks`` is set for a model without ``.blocks`` or exceeds
            their number.

    Example::

        >>> vit = timm_backbone("vit_tiny_patch16_224", trainable_blocks=1)
        >>> sorted({n.split(".")[1] for n, p in vit.named_parameters() if p.requires_grad})
        ['11']
        >>> vit.num_features
        192
    """
    timm = optional_import("timm", "gcd")
    options: dict[str, Any] = {"num_classes": 0}
    if weights is not None:
        if not Path(weights).is_file():
            raise FileNotFoundError(
                f"Backbone weights {str(weights)!r} not found; give a local checkpoint file "
                "(no hub download happens here) or None for random weights."
            )
        options.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    model = timm.create_model(name, **options)
    if trainable_blocks is None:
        return model
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList):
        raise ValueError(f"{name} has no `.blocks`; use trainable_blocks=None to train it all.")
    if not 0 <= trainable_blocks <= len(blocks):
        raise ValueError(
            f"trainable_blocks must be in [0, {len(blocks)}] for {name}; got {trainable_blocks}."
        )
    model.requires_grad_(False)
    for block in list(blocks)[len(blocks) - trainable_blocks :]:
        block.requires_grad_(True)
    return model


class ProjectionHead(nn.Sequential):
    """SimGCD's projection MLP for the contrastive losses: ``Linear → GELU → Linear → GELU →
    Linear`` (hidden 2048, output 256 on ViT-B/16).

    Example::

        >>> ProjectionHead(8, hidden_dim=16, output_dim=4)(torch.zeros(3, 8)).shape
        torch.Size([3, 4])
    """

    def __init__(self, input_dim: int, hidden_dim: int = 2048, output_dim: int = 256) -> None:
        super().__init__(
            nn.Linear(input_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, output_dim),
        )


def gcd_objective_groups(
    cls_weight: float = 0.35, sup_weight: float = 0.35, use_swav: bool = True
) -> ObjectiveGroups:
    """The two objectives PGI balances, as groups of the five GCD losses.

    ``cls = λ_cls·ce`` and ``rep = λ·supcon (+ λ·swav) + (1 − λ)·con + (1 − λ)·cluster``. Under
    :class:`~lightning_mtl.strategies.LinearScalarization` their sum is SimGCD's loss
    (``(1 − λ)·cluster + λ·ce + (1 − λ)·con + λ·supcon`` with ``λ = 0.35``) plus PGI's SwAV term.

    Example::

        >>> gcd_objective_groups(use_swav=False)["rep"]
        {'supcon': 0.35, 'con': 0.65, 'cluster': 0.65}
    """
    rep = {"supcon": sup_weight, "swav": sup_weight, "con": 1.0 - sup_weight}
    rep["cluster"] = 1.0 - sup_weight
    if not use_swav:
        del rep["swav"]
    return {"cls": {"ce": cls_weight}, "rep": rep}


class GCDModule(MultiObjectiveMixin, pl.LightningModule):
    """SimGCD-style GCD model whose classification and representation objectives are balanced
    by a strategy (PGI by default; ``LinearScalarization`` gives the SimGCD baseline), with
    EAGC's feature-gradient edit as an option.

    Architecture: a backbone (``"digits"``: :func:`digits_gcd_backbone`; any other string: a timm
    model through :func:`timm_backbone` with local ``backbone_weights`` and ``trainable_blocks``;
    or any ``nn.Module`` returning ``[B, feature_dim]``); a :class:`ProjectionHead` for the
    contrastive losses; a cosine classifier over all ``num_classes`` classes — a bias-free linear
    layer whose rows are L2-normalised (weight normalisation with the gain fixed to 1, as in
    SimGCD) applied to the L2-normalised feature; its logits are the cosines divided by 0.1.

    **Prototypes.** By default (``swav_prototypes="classifier"``) the SwAV prototypes are the
    classifier's rows: the SwAV scores are the same cosines the classifier and the
    self-distillation use (the PGI paper's eq. 5–8 build SwAV on the network's logits; sharing adds
    no parameter and makes SwAV's balanced assignment act on the clusters that are evaluated).
    ``"separate"`` gives SwAV its own ``num_classes`` normalised prototypes on the same features,
    so Sinkhorn's equipartition does not act on the classifier (on the digits it recovers most
    of what the shared prototypes lose; see ``benchmarks/RESULTS.md``).

    Losses per training step, on two augmented views of every image (a batch shaped
    ``[B, 2, C, H, W]``, as the image data modules give, is used as the two views; a
    ``[B, 1, 8, 8]`` digits batch is augmented here with
    :func:`~lightning_mtl.tasks.gcd.digits_two_view_augment` and a generator seeded from ``seed``
    and the global step, so a resumed run sees the same views):

    * ``ce``: cross-entropy of the logits on the labeled rows of both views (masked by
      multiplication and averaged over the labeled rows, clamped at 1: no host sync);
    * ``cluster``: SimGCD's self-distillation between the views (student temperature 0.1,
      teacher temperature warmed up by epoch with
      :func:`~lightning_mtl.tasks.gcd.teacher_temperature`,
      mean-entropy regulariser weight ``memax_weight``);
    * ``con``: unsupervised InfoNCE (:func:`~lightning_mtl.tasks.gcd.supervised_contrastive_loss`
      without labels) on all rows, temperature ``con_temperature`` (SimGCD: 1.0);
    * ``supcon``: supervised contrastive loss on the labeled rows (temperature
      ``supcon_temperature``, SimGCD: 0.07). The rows are selected by boolean indexing, which is
      one host synchronisation per step (the size of the selection);
    * ``swav``: :func:`~lightning_mtl.tasks.gcd.swav_loss` with codes over the whole batch, its
      terms on the rows chosen by ``swav_mask`` (``"labeled"``, the paper's ``Mask_lbl``;
      ``"unlabeled"`` or ``"all"``, the other two rows of the PGI paper's table 6), only with
      ``use_swav``. Under DDP the Sinkhorn sums are all-reduced, so the codes are balanced
      over the global batch, as in SwAV.

    The groups (:func:`gcd_objective_groups`) are ``cls = {ce: cls_weight}`` and ``rep = {supcon:
    λ, swav: λ, con: 1 − λ, cluster: 1 − λ}``; ``λ = 0.35`` is SimGCD's ``sup_weight`` (the PGI
    paper gives no separate value for the representation mix). With ``cls_weight = 0.35`` the
    plain sum of the groups is SimGCD's loss (the SimGCD recipes).

    **PGI, our reading of the paper.** Its eq. 13, ``L_overall = λ_cls·L_s + L_u`` with
    ``λ_cls = 0.35``, is the loss of "standard gradient-based optimization" during the warm-up,
    and eq. 2, ``α ∇L_s + (1 − α) ∇L_u``, replaces that weighting after it: ``L_s`` in eq. 2 is the
    cross-entropy itself, not ``λ_cls·L_s`` (which would weigh it ``α·λ_cls ≈ 0.12``, a third of
    SimGCD's 0.35, where the paper's table 5 reports PGI raising Base accuracy). The PGI recipes
    therefore set ``cls_weight = 1`` and warm up on
    ``LinearScalarization({"cls": 0.35})``. The warm-up of the paper's appendix A.2 also
    "gradually increas[es] the learning rate": ``warmup_epochs`` ramps it linearly before the
    cosine decay (the PGI recipes use the warm-up length of their
    :class:`~lightning_mtl.callbacks.WarmupThenSwitch`).

    **EAGC** (the EAGC paper). With ``eagc`` set, the backbone features pass through
    :class:`~lightning_mtl.tasks.gcd.EAGC` (identity forward, edited feature gradient) against the
    anchor features of a frozen reference backbone
    (:class:`~lightning_mtl.tasks.gcd.ReferenceAnchor`, ``self.anchor``). The reference phase runs
    at the start of ``fit`` when the EAGC state is not initialised (a resumed run restores it from
    the checkpoint and skips the phase), as in the authors' ``methods/SimGCD.py``: the backbone
    and a cosine classifier over the ``num_old`` labeled classes (logits = cosines / 0.1, the
    last layer of SimGCD's head) are trained with cross-entropy on the labeled training samples
    (both views, batches of ``reference_batch_size``) for ``reference_epochs`` epochs with SGD
    (``reference_lr`` cosine-annealed to 1e-3 of it, momentum 0.9, ``reference_weight_decay``),
    in float32, from the data module's ``labeled_dataloader``; the anchor then takes a frozen
    copy of that backbone, the main backbone goes on from the same weights, and ``C`` and ``μ``
    are computed from the anchor features of all labeled images under the evaluation transform
    (``labeled_dataloader(augment=False)``). The authors' main phase also puts a
    ``Linear(D, D) + ReLU`` between the backbone and the heads and trains the heads at ten times
    the backbone's rate: ``feature_adapter`` and ``head_lr`` (the EAGC recipes set both; EAGC
    edits the gradient of the backbone's output, before the adapter).
    Under DDP every process trains the reference on the whole labeled set from the same seed and
    rank 0's backbone is then broadcast, so all processes start equal.

    Validation and test score :class:`~lightning_mtl.tasks.gcd.ClusterAccuracy` (All / Old / New)
    over the data module's evaluation loader (the unlabeled training images), logged as
    ``val/all``, ``val/old``, ``val/new`` and ``test/...``.

    Args:
        strategy: the balancing strategy; default :class:`~lightning_mtl.strategies.PGI` with
            its defaults (α cosine-annealed 0.5 → 0.35 over the run).
        scope: what the strategy balances (see ``configure_balancing``).
        groups: group name → {loss: weight}, each group one objective for the strategy;
            ``None``: :func:`gcd_objective_groups` of ``cls_weight``, ``sup_weight`` and
            ``use_swav`` (PGI's ``cls`` and ``rep``). E.g. one group per loss lets MGDA or UPGrad
            balance the five losses.
        backbone: ``"digits"``, a timm model name, or a module mapping images to
            ``[B, feature_dim]`` features.
        backbone_weights: local weights file for a timm backbone (``None``: random weights).
        trainable_blocks: last blocks of a timm ViT left trainable (SimGCD: 1); ``None`` trains
            every parameter.
        num_classes: number of classes (old and new).
        num_old: number of old classes ``K_old`` (classes ``0 … K_old − 1``).
        feature_dim: width of the backbone's output (read from a timm backbone's
            ``num_features``; ignored then).
        projection_hidden_dim: hidden width of the projection head (SimGCD: 2048).
        projection_dim: output width of the projection head (SimGCD: 256).
        cls_weight: the weight of ``ce`` in ``cls`` (SimGCD: 0.35; 1 under PGI, see above).
        sup_weight: ``λ``, the supervised share of ``rep``.
        use_swav: include the SwAV loss in ``rep``.
        swav_mask: the rows whose SwAV terms count: ``"labeled"``, ``"unlabeled"`` or ``"all"``.
        swav_prototypes: ``"classifier"`` (SwAV on the classifier's rows) or ``"separate"``.
        con_temperature: temperature of the unsupervised InfoNCE.
        supcon_temperature: temperature of the supervised contrastive loss.
        swav_temperature: prediction temperature of SwAV.
        teacher_temp_start: teacher temperature at epoch 0.
        teacher_temp_end: teacher temperature after the warm-up.
        teacher_warmup_epochs: epochs of the teacher-temperature warm-up.
        memax_weight: weight of the mean-entropy regulariser of ``cluster``.
        eagc: an :class:`~lightning_mtl.tasks.gcd.EAGC` (its ``feature_dim`` must match), or
            ``None``.
        reference_epochs: epochs of EAGC's reference phase (>= 1 when ``eagc`` is set).
        reference_lr: SGD learning rate of the reference phase (EAGC's scripts: 0.02).
        reference_batch_size: batch size of the reference phase (EAGC's scripts: 32); ``None``:
            the data module's.
        reference_weight_decay: SGD weight decay of the reference phase (EAGC's code: 1e-4).
        feature_adapter: a ``Linear(D, D) + ReLU`` between the backbone and the heads (EAGC's
            code, ``projection_head_nlayers 1``).
        lr: SGD learning rate (momentum 0.9, cosine-decayed per epoch).
        head_lr: learning rate of the heads (classifier, projection head, adapter); ``None``:
            ``lr`` (EAGC's scripts: 1.0 against the backbone's 0.1). The cosine decay ends at
            ``final_lr_ratio · head_lr`` for every parameter, as the authors' single ``eta_min``.
        weight_decay: SGD weight decay.
        decay_biases_and_norms: ``False`` (the authors' rule, SimGCD's and EAGC's
            ``get_params_groups``): biases and one-dimensional parameters (normalisation scales
            and shifts) are not weight-decayed, in the main phase and EAGC's reference phase;
            ``True`` decays every parameter.
        final_lr_ratio: the learning rate at the end of the cosine decay, as a fraction of
            ``lr`` (SimGCD: 1e-3; the embedded recipes keep 1%).
        warmup_epochs: epochs of linear learning-rate warm-up before the cosine decay (the PGI
            paper's appendix A.2; 0: none).
        seed: seed of the per-step digits augmentation.

    Example::

        >>> model = GCDModule()
        >>> batch = (torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 5, 6, 7]),
        ...          torch.tensor([True, True, True, False, False, False]))
        >>> sorted(model.compute_objectives(batch, 0))
        ['ce', 'cluster', 'con', 'supcon', 'swav']
        >>> model(torch.rand(3, 1, 8, 8)).shape
        torch.Size([3, 10])
    """

    hp_metric = "val/all"

    def __init__(
        self,
        strategy: GradientBalancingStrategy | None = None,
        scope: ScopeSpec = "shared",
        groups: ObjectiveGroups | None = None,
        backbone: str | nn.Module = "digits",
        backbone_weights: str | None = None,
        trainable_blocks: int | None = 1,
        num_classes: int = 10,
        num_old: int = 5,
        feature_dim: int = 64,
        projection_hidden_dim: int = 64,
        projection_dim: int = 32,
        cls_weight: float = 0.35,
        sup_weight: float = 0.35,
        use_swav: bool = True,
        swav_mask: Literal["labeled", "unlabeled", "all"] = "labeled",
        swav_prototypes: Literal["classifier", "separate"] = "classifier",
        con_temperature: float = 1.0,
        supcon_temperature: float = 0.07,
        swav_temperature: float = 0.1,
        teacher_temp_start: float = 0.07,
        teacher_temp_end: float = 0.04,
        teacher_warmup_epochs: int = 30,
        memax_weight: float = 2.0,
        eagc: EAGC | None = None,
        reference_epochs: int = 10,
        reference_lr: float = 0.05,
        reference_batch_size: int | None = None,
        reference_weight_decay: float = 1e-4,
        feature_adapter: bool = False,
        lr: float = 0.05,
        head_lr: float | None = None,
        weight_decay: float = 5e-5,
        decay_biases_and_norms: bool = False,
        final_lr_ratio: float = 0.01,
        warmup_epochs: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["strategy", "backbone", "eagc"])
        if not 0 <= num_old <= num_classes:
            raise ValueError(f"num_old must be in [0, num_classes]; got {num_old}.")
        if swav_mask not in ("labeled", "unlabeled", "all"):
            raise ValueError(
                f"swav_mask must be 'labeled', 'unlabeled' or 'all'; got {swav_mask!r}."
            )
        if head_lr is not None and not head_lr > 0:
            raise ValueError(f"head_lr must be positive or None; got {head_lr}.")
        if reference_batch_size is not None and reference_batch_size < 1:
            raise ValueError(
                f"reference_batch_size must be >= 1 or None; got {reference_batch_size}."
            )
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0; got {warmup_epochs}.")
        if swav_prototypes not in ("classifier", "separate"):
            raise ValueError(
                f"swav_prototypes must be 'classifier' or 'separate'; got {swav_prototypes!r}."
            )
        if isinstance(backbone, str):
            if backbone == "digits":
                backbone = digits_gcd_backbone(feature_dim)
            else:
                backbone = timm_backbone(backbone, backbone_weights, trainable_blocks)
                feature_dim = int(backbone.num_features)
        self.backbone = backbone
        self.adapter: nn.Module = (
            nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU())
            if feature_adapter
            else nn.Identity()
        )
        self.projector = ProjectionHead(feature_dim, projection_hidden_dim, projection_dim)
        self.prototypes = nn.Linear(feature_dim, num_classes, bias=False)
        self.swav_prototypes: nn.Linear | None = None
        if swav_prototypes == "separate":
            self.swav_prototypes = nn.Linear(feature_dim, num_classes, bias=False)
        self.eagc = eagc
        self.anchor: ReferenceAnchor | None = None
        if eagc is not None:
            if eagc.feature_dim != feature_dim:
                raise ValueError(
                    f"eagc.feature_dim is {eagc.feature_dim} but the backbone gives {feature_dim}."
                )
            if reference_epochs < 1:
                raise ValueError(
                    f"reference_epochs must be >= 1 with EAGC; got {reference_epochs}."
                )
            # Built now so that a checkpoint's anchor weights load into it on resume.
            self.anchor = ReferenceAnchor.from_backbone(backbone)
        self.val_accuracy = ClusterAccuracy(num_old)
        self.test_accuracy = ClusterAccuracy(num_old)
        self.configure_balancing(
            strategy if strategy is not None else PGI(),
            scope=scope,
            groups=groups or gcd_objective_groups(cls_weight, sup_weight, use_swav),
        )

    def cosine_scores(self, features: Tensor) -> Tensor:
        """Cosines between the normalised features and the normalised prototypes, ``[B, K]``."""
        return F.linear(F.normalize(features, dim=-1), F.normalize(self.prototypes.weight, dim=-1))

    def forward(self, images: Tensor) -> Tensor:
        """Classifier logits (cosines / 0.1) of ``images``, ``[B, num_classes]``."""
        return self.cosine_scores(self.adapter(self.backbone(images))) * _LOGIT_SCALE

    def two_views(self, images: Tensor) -> Tensor:
        """``[2·B, …]``: view 1 of every image, then view 2 (see the class docstring)."""
        if images.dim() == 5:  # already [B, 2, C, H, W]
            return images.transpose(0, 1).flatten(0, 1)
        generator = torch.Generator(device=images.device)
        generator.manual_seed(self.hparams.seed * 1_000_003 + self.global_step)
        return torch.cat(
            [digits_two_view_augment(images, generator), digits_two_view_augment(images, generator)]
        )

    def compute_objectives(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        images, labels, is_labeled = batch
        is_labeled = is_labeled.bool()
        hp = self.hparams
        size = len(labels)
        views = self.two_views(images)
        labels2, mask2 = labels.repeat(2), is_labeled.repeat(2)
        features = self.backbone(views)
        if self.eagc is not None and self.anchor is not None:
            features = self.eagc(features, self.anchor(views), mask2)
        features = self.adapter(features)
        scores = self.cosine_scores(features)  # [2B, K], view-major
        weight = mask2.to(scores.dtype)

        row_ce = F.cross_entropy(scores * _LOGIT_SCALE, labels2, reduction="none")
        ce = (row_ce * weight).sum() / weight.sum().clamp(min=1.0)

        tau = teacher_temperature(
            self.current_epoch, hp.teacher_warmup_epochs, hp.teacher_temp_start, hp.teacher_temp_end
        )
        cluster = self_distillation_loss(
            scores, teacher_temp=tau, mean_entropy_weight=hp.memax_weight
        ).total

        projected = F.normalize(self.projector(features), dim=-1)
        projected = projected.view(2, size, -1).transpose(0, 1)  # [B, 2, P]
        con = supervised_contrastive_loss(projected, temperature=hp.con_temperature)
        supcon = supervised_contrastive_loss(
            projected, labels, temperature=hp.supcon_temperature, mask=is_labeled
        )
        losses = {"ce": ce, "cluster": cluster, "con": con, "supcon": supcon}
        if hp.use_swav:
            swav_scores = scores
            if self.swav_prototypes is not None:
                swav_scores = F.linear(
                    F.normalize(features, dim=-1),
                    F.normalize(self.swav_prototypes.weight, dim=-1),
                )
            view1, view2 = swav_scores[:size], swav_scores[size:]
            rows = {"labeled": is_labeled, "unlabeled": ~is_labeled, "all": None}[hp.swav_mask]
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            losses["swav"] = swav_loss(
                view1,
                view2,
                mask=rows,
                temperature=hp.swav_temperature,
                all_reduce=torch.distributed.all_reduce if distributed else None,
            )
        return losses

    # --- EAGC reference phase --------------------------------------------------------------

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.eagc is not None and not self.eagc.initialised:
            loader = getattr(self.trainer.datamodule, "labeled_dataloader", None)
            if loader is None:
                raise ValueError(
                    "EAGC's reference phase needs a GCD data module with labeled_dataloader()."
                )
            hp = self.hparams
            self.train_reference(
                loader(batch_size=hp.reference_batch_size, shuffle=True), hp.reference_epochs
            )
            self.initialise_eagc(loader(shuffle=False, augment=False))

    def train_reference(self, labeled: Any, epochs: int) -> None:
        """Train the backbone and a cosine classifier over the old classes with cross-entropy on
        the labeled batches ``labeled`` (``(images, labels, is_labeled)``, both views) under a
        cosine-annealed learning rate (see the class docstring), then freeze a copy of the
        backbone into ``self.anchor``. A progress bar shows the phase when the
        Trainer has one; otherwise each epoch's mean cross-entropy is logged.

        Args:
            labeled: an iterable of labeled training batches (re-iterated every epoch).
            epochs: passes over ``labeled``.
        """
        if self.anchor is None:
            raise RuntimeError("train_reference needs a model built with `eagc`.")
        hp = self.hparams
        head = nn.Linear(self.prototypes.in_features, max(hp.num_old, 1), bias=False)
        head = head.to(self.device)
        trained = [
            (name, parameter)
            for module in (self.backbone, head)
            for name, parameter in module.named_parameters()
            if parameter.requires_grad
        ]
        optimizer = torch.optim.SGD(
            self._weight_decay_groups(trained),
            lr=hp.reference_lr,
            momentum=0.9,
            weight_decay=hp.reference_weight_decay,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupCosine(0, max(epochs, 1), final_ratio=1e-3)
        )
        self.backbone.train()
        show = self.trainer.is_global_zero and self.trainer.progress_bar_callback is not None
        per_epoch = len(labeled) if hasattr(labeled, "__len__") else None
        with Progress(disable=not show) as progress:
            bar = progress.add_task(
                "EAGC reference phase", total=None if per_epoch is None else epochs * per_epoch
            )
            for epoch in range(epochs):
                total, batches = torch.zeros((), device=self.device), 0
                for batch in labeled:
                    images, labels, _ = self.transfer_batch_to_device(batch, self.device, 0)
                    features = F.normalize(self.backbone(self.two_views(images)), dim=-1)
                    logits = F.linear(features, F.normalize(head.weight, dim=-1)) * _LOGIT_SCALE
                    loss = F.cross_entropy(logits, labels.repeat(2))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total, batches = total + loss.detach(), batches + 1
                    progress.advance(bar)
                schedule.step()
                # Once per reference epoch, outside the training loop: the user's read-out.
                mean = float(total) / max(batches, 1)
                report = f"EAGC reference phase: epoch {epoch + 1}/{epochs}, ce {mean:.4f}"
                progress.update(bar, description=report)
                if not show:
                    rank_zero_info(report)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # In place: the state dict's tensors share storage with the backbone's.
            for tensor in self.backbone.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
        self.anchor.backbone.load_state_dict(self.backbone.state_dict())

    @torch.no_grad()
    def initialise_eagc(self, labeled: Any) -> None:
        """Compute EAGC's ``C`` and ``μ`` from the anchor features of the labeled batches
        (``[B, C, H, W]`` images, as ``labeled_dataloader(augment=False)`` gives them)."""
        if self.eagc is None or self.anchor is None:
            raise RuntimeError("initialise_eagc needs a model built with `eagc`.")
        features = []
        for batch in labeled:
            images, _, _ = self.transfer_batch_to_device(batch, self.device, 0)
            features.append(self.anchor(images).float())
        self.eagc.initialise(torch.cat(features))

    # --- evaluation ------------------------------------------------------------------------

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels, _ = batch
        self.val_accuracy.update(self(images), labels)

    def on_validation_epoch_end(self) -> None:
        result = self.val_accuracy.compute()
        self.val_accuracy.reset()
        self.log("val/all", result["all"], prog_bar=True)
        self.log("val/old", result["old"])
        self.log("val/new", result["new"])

    def test_step(self, batch: Any, batch_idx: int) -> None:
        images, labels, _ = batch
        self.test_accuracy.update(self(images), labels)

    def on_test_epoch_end(self) -> None:
        result = self.test_accuracy.compute()
        self.test_accuracy.reset()
        self.log_dict({f"test/{name}": value for name, value in result.items()})

    def _weight_decay_groups(
        self, named: list[tuple[str, nn.Parameter]], lr: float | None = None
    ) -> list[dict[str, Any]]:
        """``named`` as parameter groups at ``lr`` (``None``: the optimizer's), its biases and norm
        parameters exempt from weight decay unless ``decay_biases_and_norms``."""
        options = {} if lr is None else {"lr": lr}
        if self.hparams.decay_biases_and_norms:
            return [{"params": [parameter for _, parameter in named], **options}]
        return groups_without_decay_on_biases_and_norms(named, **options)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        head_lr = hp.lr if hp.head_lr is None else hp.head_lr
        heads = [self.adapter, self.projector, self.prototypes, self.swav_prototypes]
        head_ids = {id(p) for head in heads if head is not None for p in head.parameters()}
        named = list(self.named_parameters())
        groups = [
            *self._weight_decay_groups([(n, p) for n, p in named if id(p) not in head_ids], hp.lr),
            *self._weight_decay_groups([(n, p) for n, p in named if id(p) in head_ids], head_lr),
        ]
        return sgd_with_cosine_decay(
            self,
            head_lr,
            hp.weight_decay,
            final_lr_ratio=hp.final_lr_ratio,
            warmup_epochs=hp.warmup_epochs,
            parameters=groups,
        )


class DigitsMultiObjective(MultiObjectiveMixin, pl.LightningModule):
    """Digits classifier trained on two objectives, the shape of a GCD model in miniature.

    ``cls`` is the cross-entropy of a linear classifier on both augmented views; ``rep`` is the
    supervised contrastive loss of a projection of the two views. The strategy (PGI by default)
    balances them; with a gradient-based strategy the heads get their own losses' gradients.

    Args:
        strategy: the balancing strategy.
        scope: what the strategy balances (see ``configure_balancing``).
        groups: group name → {objective: weight}; each group is one objective for the strategy
            (e.g. PGI's ``cls`` and ``rep``), see ``configure_balancing``. ``None``:
            ``cls`` and ``rep`` are the objectives.
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

    hp_metric = "val/acc"

    def __init__(
        self,
        strategy: GradientBalancingStrategy | None = None,
        scope: ScopeSpec = "shared",
        groups: ObjectiveGroups | None = None,
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
        self.configure_balancing(
            strategy if strategy is not None else PGI(), scope=scope, groups=groups
        )

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
