"""NYUv2's three dense tasks on one encoder: segmentation, depth and surface normals.

The losses and metrics follow MTAN (Liu et al., 2019) and LibMTL, which the NYUv2 results of the
RGB paper (table 1) build on: 13-class cross-entropy ignoring label −1; L1 depth error
on pixels with a depth; ``1 − cos`` between predicted and true normals on pixels with a normal;
mIoU and pixel accuracy, absolute and relative depth error, and the mean and median angle of
the normals with the fraction of pixels within 11.25°, 22.5° and 30°. The metrics accumulate
counts over the whole split (as LibMTL does), not per-batch averages as MTAN's script.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_mtl.extras import optional_import
from lightning_mtl.mixin import MultiObjectiveMixin, ScopeSpec
from lightning_mtl.objectives import Objectives
from lightning_mtl.strategies.base import GradientBalancingStrategy
from lightning_mtl.strategies.rgb import RGB, check_parameter_scope
from lightning_mtl.tasks.multitask.data.nyuv2 import NYUV2_NUM_CLASSES
from lightning_mtl.tasks.multitask.metrics import delta_m

__all__ = [
    "NYUV2_METRICS",
    "DenseHead",
    "DepthErrors",
    "DilatedResNet50Encoder",
    "NYUv2MultiTask",
    "NormalAngleErrors",
    "SegmentationScores",
    "SmallDenseEncoder",
    "depth_loss",
    "normal_loss",
    "nyuv2_delta_m",
    "segmentation_loss",
]

TASKS = ("segmentation", "depth", "normal")
IGNORE_INDEX = -1
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)

NYUV2_METRICS: dict[str, tuple[str, bool]] = {
    "segmentation_miou": ("segmentation", True),
    "segmentation_pixel_acc": ("segmentation", True),
    "depth_abs_err": ("depth", False),
    "depth_rel_err": ("depth", False),
    "normal_mean_angle": ("normal", False),
    "normal_median_angle": ("normal", False),
    "normal_within_11_25": ("normal", True),
    "normal_within_22_5": ("normal", True),
    "normal_within_30": ("normal", True),
}
"""Metric name → (task, whether higher is better); the names logged as ``{stage}/<name>``."""

BackboneName = Literal["resnet50", "small"]


# --- losses -----------------------------------------------------------------------------------


def _valid_depth(target: Tensor) -> Tensor:
    """Pixels with a depth measurement (MTAN marks missing depth with 0)."""
    return target != 0


def _valid_normal(target: Tensor) -> Tensor:
    """``[B, H, W]`` pixels with a normal (missing normals are all-zero vectors)."""
    return (target != 0).any(dim=1)


def segmentation_loss(logits: Tensor, label: Tensor) -> Tensor:
    """Cross-entropy over labelled pixels (label −1 is ignored); 0 when none is labelled.

    Example::

        >>> logits = torch.zeros(1, 2, 1, 2)  # uniform over two classes
        >>> round(segmentation_loss(logits, torch.tensor([[[1, -1]]])).item(), 4)  # log 2
        0.6931
    """
    total = F.cross_entropy(logits, label, ignore_index=IGNORE_INDEX, reduction="sum")
    # Dividing by a clamped count, rather than reduction="mean", keeps an all-ignored batch at 0
    # instead of NaN, without a host synchronisation.
    return total / (label != IGNORE_INDEX).sum().clamp_min(1)


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over pixels with a depth (target ≠ 0).

    Example::

        >>> depth_loss(torch.tensor([[[[1.0, 5.0, 2.0]]]]), torch.tensor([[[[2.0, 0.0, 2.5]]]]))
        tensor(0.7500)
    """
    valid = _valid_depth(target)
    return ((pred - target).abs() * valid).sum() / valid.sum().clamp_min(1)


def normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``1 − cos(pred, target)`` averaged over pixels with a normal (target ≠ 0).

    Both are normalised first, so the loss is a true cosine distance whatever their lengths.

    Example::

        >>> pred = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 3)
        >>> target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
        >>> normal_loss(pred, target.T.reshape(1, 3, 1, 3))  # (0 + 1) / 2: the third is missing
        tensor(0.5000)
    """
    valid = _valid_normal(target)
    cosine = (F.normalize(pred, dim=1) * F.normalize(target, dim=1)).sum(dim=1)
    return ((1 - cosine) * valid).sum() / valid.sum().clamp_min(1)


# --- metrics ----------------------------------------------------------------------------------


class SegmentationScores(Metric):
    """mIoU and pixel accuracy from a confusion matrix accumulated over batches.

    Pixels labelled −1 are left out entirely. IoU of class ``c`` is ``TP / (TP + FP + FN)``;
    mIoU averages it over the classes that occur in the targets or the predictions (a class
    absent from both has no IoU). Pixel accuracy is the fraction of labelled pixels predicted
    right. ``update`` takes logits ``[B, C, H, W]`` or labels ``[B, H, W]``, and labels
    ``[B, H, W]``.

    Example::

        >>> scores = SegmentationScores(num_classes=3)
        >>> scores.update(torch.tensor([[[0, 1, 1, 2]]]), torch.tensor([[[0, 1, 2, -1]]]))
        >>> {name: round(value.item(), 4) for name, value in scores.compute().items()}
        {'miou': 0.5, 'pixel_acc': 0.6667}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    confusion: Tensor

    def __init__(self, num_classes: int = NYUV2_NUM_CLASSES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}.")
        self.num_classes = num_classes
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long), "sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch to the confusion matrix (rows: true class, columns: predicted)."""
        if preds.ndim == 4:
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape or target.ndim != 3:
            raise ValueError(
                f"preds must be logits [B, C, H, W] or labels [B, H, W] matching target "
                f"[B, H, W]; got {tuple(preds.shape)} and {tuple(target.shape)}."
            )
        valid = target != IGNORE_INDEX
        # Masks and index_add_, not boolean indexing or bincount: both would size their output
        # from the data and so wait for the device on every batch.
        pairs = (target * self.num_classes + preds).clamp(0, self.num_classes**2 - 1)
        self.confusion.view(-1).index_add_(0, pairs.flatten(), valid.flatten().long())

    def compute(self) -> dict[str, Tensor]:
        """``{"miou": …, "pixel_acc": …}`` (NaN before any labelled pixel)."""
        # float32 (not float64, which MPS lacks): ratios of counts to ~1e-7 relative error.
        confusion = self.confusion.float()
        hits = confusion.diagonal()
        union = confusion.sum(0) + confusion.sum(1) - hits
        iou = hits[union > 0] / union[union > 0]
        miou = iou.mean() if iou.numel() else confusion.new_tensor(float("nan"))
        return {"miou": miou, "pixel_acc": hits.sum() / confusion.sum()}


class DepthErrors(Metric):
    """Absolute and relative depth error over the pixels that have a depth (target ≠ 0).

    ``abs_err`` is the mean of ``|pred − target|``, ``rel_err`` the mean of
    ``|pred − target| / target``, both over every valid pixel of every batch seen.

    Example::

        >>> errors = DepthErrors()
        >>> errors.update(torch.tensor([[[[1.0, 3.0, 9.0]]]]), torch.tensor([[[[2.0, 2.0, 0.0]]]]))
        >>> {name: value.item() for name, value in errors.compute().items()}
        {'abs_err': 1.0, 'rel_err': 0.5}
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    absolute: Tensor
    relative: Tensor
    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("absolute", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("relative", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch: ``pred`` and ``target`` of the same shape (``[B, 1, H, W]``)."""
        if pred.shape != target.shape:
            raise ValueError(
                f"pred and target must have the same shape; got {tuple(pred.shape)} and "
                f"{tuple(target.shape)}."
            )
        valid = _valid_depth(target)
        error = torch.where(valid, (pred.detach().float() - target.float()).abs(), 0.0)
        self.absolute += error.sum()
        self.relative += (error / torch.where(valid, target.float().abs(), 1.0)).sum()
        self.count += valid.sum()

    def compute(self) -> dict[str, Tensor]:
        """``{"abs_err": …, "rel_err": …}`` (NaN before any valid pixel)."""
        count = self.count.float()
        return {"abs_err": self.absolute / count, "rel_err": self.relative / count}


class NormalAngleErrors(Metric):
    """Angles between predicted and true normals over pixels with a normal (target ≠ 0).

    ``compute`` gives ``mean_angle`` and ``median_angle`` in degrees, and ``within_11_25``,
    ``within_22_5``, ``within_30``: the fractions of pixels with an angle below 11.25°, 22.5° and
    30°. Both vectors are normalised first. The mean and the fractions are exact; the median is
    read from a histogram of the angles in ``bin_width``-degree bins, interpolated linearly
    within its bin, so it is within ``bin_width`` (0.01° by default) of the exact median while
    the state stays a fixed ``180 / bin_width`` counts however many pixels are seen (a validation
    epoch of NYUv2 has 72 M).

    Args:
        bin_width: histogram bin width for the median, in degrees.
        kwargs: passed on to :class:`torchmetrics.Metric`.

    Example::

        >>> errors = NormalAngleErrors()
        >>> target = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 3)
        >>> angles = torch.tensor([10.0, 20.0, 40.0]).deg2rad()
        >>> pred = torch.stack([angles.sin(), torch.zeros(3), angles.cos()]).view(1, 3, 1, 3)
        >>> values = {name: round(value.item(), 1) for name, value in errors(pred, target).items()}
        >>> values["mean_angle"], values["median_angle"]
        (23.3, 20.0)
        >>> values["within_11_25"], values["within_22_5"], values["within_30"]
        (0.3, 0.7, 0.7)
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    angle_sum: Tensor
    count: Tensor
    within: Tensor
    histogram: Tensor

    def __init__(self, bin_width: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 < bin_width <= 1:
            raise ValueError(f"bin_width must be in (0, 1] degrees; got {bin_width}.")
        self.bin_width = bin_width
        self.bins = math.ceil(180.0 / bin_width)
        self.add_state("angle_sum", torch.zeros(()), "sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), "sum")
        self.add_state("within", torch.zeros(len(ANGLE_THRESHOLDS), dtype=torch.long), "sum")
        self.add_state("histogram", torch.zeros(self.bins, dtype=torch.long), "sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch: ``pred`` and ``target`` normals ``[B, 3, H, W]``."""
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"pred and target must both have shape [B, 3, H, W]; got {tuple(pred.shape)} "
                f"and {tuple(target.shape)}."
            )
        valid = _valid_normal(target).flatten()
        cosine = F.normalize(pred.detach().float(), dim=1) * F.normalize(target.float(), dim=1)
        angles = torch.rad2deg(torch.acos(cosine.sum(dim=1).clamp(-1.0, 1.0))).flatten()
        weight = valid.long()
        self.angle_sum += torch.where(valid, angles, 0.0).sum()
        self.count += weight.sum()
        thresholds = angles.new_tensor(ANGLE_THRESHOLDS)
        self.within += ((angles[:, None] < thresholds) & valid[:, None]).sum(dim=0)
        index = (angles / self.bin_width).long().clamp(0, self.bins - 1)
        self.histogram.index_add_(0, index, weight)

    def compute(self) -> dict[str, Tensor]:
        """Mean and median angle in degrees and the three fractions (NaN before any pixel)."""
        count = self.count.float()
        fractions = self.within.float() / count
        return {
            "mean_angle": self.angle_sum / count,
            "median_angle": self._median(),
            **{f"within_{_threshold_key(t)}": fractions[i] for i, t in enumerate(ANGLE_THRESHOLDS)},
        }

    def _median(self) -> Tensor:
        cumulative = self.histogram.cumsum(0)
        # The first bin whose cumulative count reaches half the total (in integers: exact),
        # then where in that bin half falls, taking its angles as evenly spread.
        index = torch.searchsorted(2 * cumulative, self.count.view(1)).clamp_max(self.bins - 1)
        before = torch.where(index > 0, cumulative[(index - 1).clamp_min(0)], 0)
        inside = self.histogram[index].clamp_min(1)
        fraction = (self.count / 2 - before) / inside
        median = (index + fraction) * self.bin_width
        return torch.where(self.count > 0, median[0], float("nan")).float()


def _threshold_key(threshold: float) -> str:
    """``11.25`` → ``"11_25"``, ``30.0`` → ``"30"`` (dots are awkward in logged names)."""
    return f"{threshold:g}".replace(".", "_")


def nyuv2_delta_m(
    metrics: Mapping[str, float], baselines: Mapping[str, float], average: str = "task"
) -> float:
    """Δm% of the nine NYUv2 metrics (:data:`NYUV2_METRICS`) against single-task baselines.

    ``average="task"``: the RGB paper's definition (§3.1): Δm% of each task's metrics,
    then the mean over the three tasks. ``average="metric"``: the mean over the nine metrics, as
    in Nash-MTL, FAMO and LibMTL. Lower is better: negative beats the baselines, as in the
    paper's tables (:func:`~lightning_mtl.tasks.multitask.delta_m`).

    Example::

        >>> base = dict.fromkeys(NYUV2_METRICS, 1.0)
        >>> better = {**base, "segmentation_miou": 1.2}  # +20% on one of two segmentation metrics
        >>> round(nyuv2_delta_m(better, base), 4), round(nyuv2_delta_m(better, base, "metric"), 4)
        (-3.3333, -2.2222)
    """
    for name, given in (("metrics", metrics), ("baselines", baselines)):
        if set(given) != set(NYUV2_METRICS):
            raise ValueError(
                f"{name} must name exactly {sorted(NYUV2_METRICS)}; got {sorted(given)}."
            )
    directions = {name: higher for name, (_, higher) in NYUV2_METRICS.items()}
    if average == "metric":
        return delta_m(metrics, baselines, directions)
    if average != "task":
        raise ValueError(f"average must be 'task' or 'metric'; got {average!r}.")
    per_task = []
    for task in TASKS:
        names = [name for name, (owner, _) in NYUV2_METRICS.items() if owner == task]
        per_task.append(
            delta_m(
                {name: metrics[name] for name in names},
                {name: baselines[name] for name in names},
                {name: directions[name] for name in names},
            )
        )
    return sum(per_task) / len(per_task)


# --- networks ---------------------------------------------------------------------------------


def _conv_bn_relu(inputs: int, outputs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


class SmallDenseEncoder(nn.Sequential):
    """Two stride-2 and one dilated 3×3 convolution: ``[B, 3, H, W]`` → ``[B, 2·width, H/4, W/4]``.

    For tests and CPU runs.

    Example::

        >>> SmallDenseEncoder(width=4)(torch.zeros(1, 3, 16, 24)).shape
        torch.Size([1, 8, 4, 6])
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__(
            _conv_bn_relu(3, width, stride=2),
            _conv_bn_relu(width, 2 * width, stride=2),
            _conv_bn_relu(2 * width, 2 * width, dilation=2),
        )
        self.out_channels = 2 * width


class DilatedResNet50Encoder(nn.Module):
    """torchvision's ResNet-50 (``weights=None``) with dilated last two stages: output stride 8.

    ``replace_stride_with_dilation=[False, True, True]`` turns the strides of ``layer3`` and
    ``layer4`` into dilations, so a 288×384 image gives a ``[B, 2048, 36, 48]`` map, as in the
    dilated-ResNet backbone of MTAN's ResNet variant and LibMTL's NYUv2 setup; the pooling and
    ``fc`` layers are dropped.

    Example::

        >>> DilatedResNet50Encoder()(torch.zeros(1, 3, 32, 48)).shape
        torch.Size([1, 2048, 4, 6])
    """

    def __init__(self) -> None:
        super().__init__()
        resnet50 = optional_import("torchvision.models", "multitask").resnet50
        resnet = resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layers = nn.Sequential(resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
        self.out_channels = 2048

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(self.stem(images))


class DenseHead(nn.Sequential):
    """A task decoder: 3×3 convolution, batch norm, ReLU, then a 1×1 convolution to the outputs.

    It predicts at the encoder's resolution; the model upsamples bilinearly to the input's.

    Example::

        >>> DenseHead(8, 13, hidden=4)(torch.zeros(1, 8, 4, 6)).shape
        torch.Size([1, 13, 4, 6])
    """

    def __init__(self, inputs: int, outputs: int, hidden: int = 256) -> None:
        super().__init__(_conv_bn_relu(inputs, hidden), nn.Conv2d(hidden, outputs, 1))


# --- the module -------------------------------------------------------------------------------


def _check_baselines(baselines: Mapping[str, float]) -> dict[str, float]:
    if set(baselines) != set(NYUV2_METRICS):
        raise ValueError(
            f"baselines must give the nine metrics {sorted(NYUV2_METRICS)}; got "
            f"{sorted(baselines)}."
        )
    checked = {name: float(baselines[name]) for name in NYUV2_METRICS}
    for name, value in checked.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"the baseline of {name!r} must be positive; got {value}.")
    return checked


class NYUv2MultiTask(MultiObjectiveMixin, pl.LightningModule):
    """NYUv2 segmentation, depth and surface normals on one encoder, balanced by a strategy.

    The encoder is :class:`DilatedResNet50Encoder` (``backbone="resnet50"``; not MTAN's SegNet:
    a dilated ResNet-50 with one :class:`DenseHead` per task is the common, simpler alternative
    of LibMTL and MTAN's ResNet variant) or :class:`SmallDenseEncoder` (``"small"``, for tests
    and CPU). Each head predicts at the encoder's resolution and is upsampled bilinearly to the
    input's; normals are normalised to unit length. The objectives are ``segmentation``
    (:func:`segmentation_loss`), ``depth`` (:func:`depth_loss`) and ``normal``
    (:func:`normal_loss`); batches are ``(image, label, depth, normal)`` as from
    :class:`~lightning_mtl.tasks.multitask.NYUv2DataModule`.

    Validation and test log ``{stage}/<name>`` for every metric of :data:`NYUV2_METRICS`
    (fractions, not percent) and, when ``baselines`` are given, ``{stage}/delta_m`` (the paper's
    per-task average) and ``{stage}/delta_m_metrics`` (the mean over the nine metrics), see
    :func:`nyuv2_delta_m`.

    The defaults follow the paper's NYUv2 setting (the RGB paper, table 1 and figure 4): RGB with
    ``λ = 0`` and ``α_steps = 5`` (μ = 0.9), balancing the encoder's parameters
    (``scope="shared"``); and the optimiser of MTAN and LibMTL: Adam at ``1e-4`` with weight
    decay ``1e-5``, halved every 100 epochs (200 epochs, batch 8, in the recipe).

    Args:
        strategy: the balancing strategy; ``None`` is ``RGB(proximity_weight=0.0,
            alpha_steps=5)``.
        scope: ``"shared"`` (the encoder's parameters), ``"representation"`` (its output map)
            or submodule names, see ``configure_balancing``.
        backbone: ``"resnet50"`` or ``"small"``.
        num_classes: segmentation classes.
        width: channels of the small encoder's first convolution (ignored by ResNet-50).
        head_channels: hidden channels of each head; ``None`` is 256 for ResNet-50 and
            ``2·width`` for the small encoder.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        lr_step_epochs: halve the learning rate every this many epochs; ``None``: constant.
        baselines: metric name (:data:`NYUV2_METRICS`) → single-task value, for Δm%.

    Example::

        >>> model = NYUv2MultiTask(backbone="small", width=4)
        >>> image = torch.rand(2, 3, 16, 24)
        >>> label = torch.randint(-1, 13, (2, 16, 24))
        >>> depth, normal = torch.rand(2, 1, 16, 24), F.normalize(torch.randn(2, 3, 16, 24), dim=1)
        >>> losses = model.compute_objectives((image, label, depth, normal), 0)
        >>> sorted(losses), [tuple(out.shape) for out in model(image)]
        (['depth', 'normal', 'segmentation'], [(2, 13, 16, 24), (2, 1, 16, 24), (2, 3, 16, 24)])
    """

    def __init__(
        self,
        strategy: GradientBalancingStrategy | None = None,
        scope: ScopeSpec = "shared",
        backbone: BackboneName = "resnet50",
        num_classes: int = NYUV2_NUM_CLASSES,
        width: int = 16,
        head_channels: int | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        lr_step_epochs: int | None = 100,
        baselines: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        for name, value, low in (("num_classes", num_classes, 2), ("width", width, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")
        if head_channels is not None and head_channels < 1:
            raise ValueError(f"head_channels must be positive; got {head_channels}.")
        if lr_step_epochs is not None and lr_step_epochs < 1:
            raise ValueError(f"lr_step_epochs must be positive or None; got {lr_step_epochs}.")
        if not lr > 0:
            raise ValueError(f"lr must be positive; got {lr}.")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative; got {weight_decay}.")
        self.save_hyperparameters(ignore=["strategy"])
        self.baselines = _check_baselines(baselines) if baselines else None
        self.encoder: nn.Module
        if backbone == "resnet50":
            self.encoder = DilatedResNet50Encoder()
            hidden = head_channels or 256
        elif backbone == "small":
            self.encoder = SmallDenseEncoder(width)
            hidden = head_channels or 2 * width
        else:
            raise ValueError(f"backbone must be 'resnet50' or 'small'; got {backbone!r}.")
        channels = self.encoder.out_channels
        self.heads = nn.ModuleDict(
            {
                "segmentation": DenseHead(channels, num_classes, hidden),
                "depth": DenseHead(channels, 1, hidden),
                "normal": DenseHead(channels, 3, hidden),
            }
        )
        self.val_metrics = self._metrics(num_classes)
        self.test_metrics = self._metrics(num_classes)
        strategy = strategy if strategy is not None else RGB(proximity_weight=0.0, alpha_steps=5)
        check_parameter_scope(strategy, scope)
        self.configure_balancing(strategy, scope=scope)

    @staticmethod
    def _metrics(num_classes: int) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                "segmentation": SegmentationScores(num_classes),
                "depth": DepthErrors(),
                "normal": NormalAngleErrors(),
            }
        )

    def features(self, images: Tensor) -> Tensor:
        """The encoder's ``[B, C, h, w]`` map of ``[B, 3, H, W]`` images."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [B, 3, H, W]; got {tuple(images.shape)}.")
        return self.encoder(images)

    def decode(self, features: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """Segmentation logits, depth and unit normals at ``size`` from the encoder's map."""
        outputs = [
            F.interpolate(self.heads[task](features), size=size, mode="bilinear") for task in TASKS
        ]
        segmentation, depth, normal = outputs
        return segmentation, depth, F.normalize(normal, dim=1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.decode(self.features(images), (images.shape[-2], images.shape[-1]))

    def compute_objectives(self, batch: Any, batch_idx: int) -> dict[str, Tensor] | Objectives:
        images, label, depth, normal = batch
        features = self.features(images)
        segmentation, depth_pred, normal_pred = self.decode(features, images.shape[-2:])
        losses = {
            "segmentation": segmentation_loss(segmentation, label),
            "depth": depth_loss(depth_pred, depth),
            "normal": normal_loss(normal_pred, normal),
        }
        if self.balancing_scope == "representation":
            return Objectives(losses, representation=features)
        return losses

    def _update(self, metrics: nn.ModuleDict, batch: Any) -> None:
        images, label, depth, normal = batch
        segmentation, depth_pred, normal_pred = self(images)
        metrics["segmentation"].update(segmentation, label)
        metrics["depth"].update(depth_pred, depth)
        metrics["normal"].update(normal_pred, normal)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._update(self.val_metrics, batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._update(self.test_metrics, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

    def _log_metrics(self, stage: str, metrics: nn.ModuleDict) -> None:
        # compute() syncs the states across processes, so every rank logs the same values.
        values: dict[str, float] = {}
        for task in TASKS:
            metric = metrics[task]
            for name, value in metric.compute().items():
                values[f"{task}_{name}"] = float(value)
            metric.reset()
        logged: dict[str, float] = {f"{stage}/{name}": value for name, value in values.items()}
        if self.baselines is not None:
            logged[f"{stage}/delta_m"] = nyuv2_delta_m(values, self.baselines, "task")
            logged[f"{stage}/delta_m_metrics"] = nyuv2_delta_m(values, self.baselines, "metric")
        for name, value in logged.items():
            self.log(name, value, prog_bar=name.endswith("miou"), sync_dist=True)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        if self.hparams.lr_step_epochs is None:
            return optimizer
        schedule = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=self.hparams.lr_step_epochs, gamma=0.5
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "epoch"},
        }
