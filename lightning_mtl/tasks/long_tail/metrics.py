"""Long-tailed accuracy: overall, Many / Medium / Few-shot groups and per-class.

The groups follow the long-tailed recognition convention (Liu et al., 2019; Kang et al., 2020):
a class is *many-shot* with more than 100 training samples, *few-shot* with fewer than 20, and
*medium-shot* otherwise (20–100 inclusive); both thresholds are configurable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["LongTailAccuracy", "shot_groups"]


def _check_thresholds(many_threshold: float, few_threshold: float) -> None:
    """ValueError unless ``few_threshold <= many_threshold``."""
    if not few_threshold <= many_threshold:
        raise ValueError(
            f"`few_threshold` ({few_threshold}) must be <= `many_threshold` ({many_threshold})."
        )


def shot_groups(
    class_counts: Sequence[int] | Tensor | np.ndarray,
    many_threshold: float = 100,
    few_threshold: float = 20,
) -> dict[str, list[int]]:
    """Split classes by training-set size: ``many`` (``n > many_threshold``), ``few``
    (``n < few_threshold``), ``medium`` (the rest).

    Args:
        class_counts: Training samples per class.
        many_threshold: Classes with strictly more samples are many-shot.
        few_threshold: Classes with strictly fewer samples are few-shot.

    Returns:
        ``{"many": [...], "medium": [...], "few": [...]}`` class indices, ascending.

    Raises:
        ValueError: If ``class_counts`` is not 1-D, a count is negative, or
            ``few_threshold > many_threshold``.

    Example::

        >>> shot_groups([5000, 101, 100, 20, 19, 5])
        {'many': [0, 1], 'medium': [2, 3], 'few': [4, 5]}
    """
    _check_thresholds(many_threshold, few_threshold)
    if isinstance(class_counts, Tensor):
        class_counts = class_counts.detach().cpu().numpy()
    counts = np.asarray(class_counts)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any():
        raise ValueError(
            f"`class_counts` must be a non-empty 1-D sequence of counts >= 0, got {counts}."
        )
    many = counts > many_threshold
    few = counts < few_threshold
    medium = ~many & ~few
    return {
        "many": np.flatnonzero(many).tolist(),
        "medium": np.flatnonzero(medium).tolist(),
        "few": np.flatnonzero(few).tolist(),
    }


class LongTailAccuracy(Metric):
    """Top-1 accuracy overall, per Many / Medium / Few group, and per class.

    ``update(preds, target)`` takes logits or probabilities ``[B, C]`` (arg-maxed) or predicted
    labels ``[B]``, and integer labels ``[B]``. The states are per-class ``correct`` and ``total``
    counts with sum reduction, so results are exact across batches and DDP processes. ``update``
    does not synchronise with the host; labels are not range-checked (an out-of-range label fails
    in ``index_add_``).

    ``compute()`` returns a dict of float32 tensors:

    * ``overall``: correct / total over all evaluated samples (on the balanced CIFAR-LT test set
      this equals the mean of the per-class accuracies);
    * ``many``, ``medium``, ``few``: the mean of the per-class accuracies of the group's classes
      (the Kang et al. convention); classes with no evaluated sample are left out;
    * ``per_class``: ``[C]`` accuracies, NaN for classes with no evaluated sample.

    A group with no class (e.g. no few-shot class at ρ = 10 on CIFAR-10), or none evaluated, is
    **NaN** rather than omitted, so the keys are always the same for logging. ``per_class`` is not a
    scalar: drop it before ``self.log_dict``.

    Args:
        class_counts: Training samples per class (defines ``C`` and the groups).
        many_threshold: Many-shot classes have more than this many training samples (100).
        few_threshold: Few-shot classes have fewer than this many (20).
        kwargs: Passed on to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: If the thresholds are inverted or ``class_counts`` is invalid.

    Example::

        >>> metric = LongTailAccuracy([500, 50, 5])  # one class per group
        >>> metric.update(torch.tensor([0, 0, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 2, 2, 2]))
        >>> {k: round(float(v), 4) for k, v in metric.compute().items() if k != "per_class"}
        {'overall': 0.6667, 'many': 1.0, 'medium': 1.0, 'few': 0.3333}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor
    group_masks: Tensor

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor | np.ndarray,
        many_threshold: float = 100,
        few_threshold: float = 20,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        groups = shot_groups(class_counts, many_threshold, few_threshold)
        num_classes = sum(len(members) for members in groups.values())
        self.num_classes = num_classes
        self.many_threshold = many_threshold
        self.few_threshold = few_threshold
        self.groups = groups
        masks = torch.zeros(3, num_classes, dtype=torch.bool)
        for row, members in enumerate(groups.values()):
            masks[row, members] = True
        # A plain buffer (not a metric state): it follows .to(device) and is never reduced.
        self.register_buffer("group_masks", masks, persistent=False)
        self.add_state("correct", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Count one batch.

        Args:
            preds: ``[B, C]`` scores or ``[B]`` integer predicted labels.
            target: ``[B]`` integer labels.

        Raises:
            ValueError: On a shape or dtype mismatch.
        """
        if target.ndim != 1 or target.is_floating_point():
            raise ValueError(
                f"`target` must be 1-D integer labels, got shape {tuple(target.shape)}, "
                f"dtype {target.dtype}."
            )
        if preds.ndim == 2:
            if preds.shape[1] != self.num_classes:
                raise ValueError(
                    f"score `preds` must have shape [B, {self.num_classes}], "
                    f"got {tuple(preds.shape)}."
                )
            preds = preds.argmax(dim=1)
        elif preds.ndim != 1 or preds.is_floating_point():
            raise ValueError(
                f"`preds` must be scores [B, {self.num_classes}] or integer labels [B], got "
                f"shape {tuple(preds.shape)}, dtype {preds.dtype}."
            )
        if preds.shape != target.shape:
            raise ValueError(
                f"`preds` and `target` disagree: {tuple(preds.shape)} vs {tuple(target.shape)}."
            )
        target = target.long()
        # index_add_ rather than bincount: bincount on CUDA reads the max label on the host.
        self.total.index_add_(0, target, torch.ones_like(target))
        self.correct.index_add_(0, target, (preds == target).long())

    def compute(self) -> dict[str, Tensor]:
        """The accuracies; see the class docstring for the keys and NaN rules."""
        correct, total = self.correct.double(), self.total.double()
        per_class = correct / total  # 0 / 0 = NaN for classes never evaluated
        evaluated = self.group_masks & (total > 0)
        group_sums = torch.where(evaluated, per_class, 0.0).sum(dim=1)
        group_means = group_sums / evaluated.sum(dim=1).double()  # NaN for an empty group
        result = {
            "overall": correct.sum() / total.sum(),
            "many": group_means[0],
            "medium": group_means[1],
            "few": group_means[2],
            "per_class": per_class,
        }
        return {key: value.float() for key, value in result.items()}
