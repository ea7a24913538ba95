"""Clustering accuracy for generalized category discovery (GCD): All / Old / New.

GCD models predict cluster indices for the unlabeled training samples, which belong to the
known ("old") classes and to classes never seen with a label ("new"). Cluster indices carry no
class identity, so they are first matched to the ground-truth classes by one Hungarian matching
over all classes (the "v2" protocol of GCD, used by SimGCD and PGI), maximising the number of
matched samples; the accuracy under that single matching is then reported on all samples and
separately on the samples of old and of new classes.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

__all__ = ["ClusterAccuracy", "cluster_accuracy"]

Labels = Tensor | np.ndarray | Sequence[int]
"""Integer labels: a tensor, a NumPy array or a sequence of ints."""

OldClasses = int | Sequence[int]
"""The old (labeled) classes: their number ``K_old`` (classes ``0 … K_old − 1``) or their ids."""


def _as_labels(values: Labels, name: str) -> np.ndarray:
    """``values`` as a 1-D int64 array of non-negative labels, or a ``ValueError``."""
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {array.shape}.")
    if array.size == 0:  # np.asarray([]) is float64; emptiness is reported by the caller
        return array.astype(np.int64)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integer labels, got dtype {array.dtype}.")
    if array.size and array.min() < 0:
        raise ValueError(f"`{name}` must be non-negative, got minimum {array.min()}.")
    return array.astype(np.int64, copy=False)


def _old_class_ids(old_classes: OldClasses) -> np.ndarray:
    """The old class ids as a 1-D int64 array, or a ``ValueError``."""
    if isinstance(old_classes, bool):
        raise ValueError(f"`old_classes` must be a count or a sequence of ints, got {old_classes}.")
    if isinstance(old_classes, int | np.integer):
        if old_classes < 0:
            raise ValueError(f"The number of old classes must be ≥ 0, got {old_classes}.")
        return np.arange(int(old_classes), dtype=np.int64)
    try:
        ids = [operator.index(c) for c in old_classes]
    except TypeError:
        raise ValueError(
            f"`old_classes` must be a count or a sequence of ints, got {old_classes!r}."
        ) from None
    if any(c < 0 for c in ids):
        raise ValueError(f"Old class ids must be non-negative, got {ids}.")
    return np.asarray(ids, dtype=np.int64)


def cluster_accuracy(
    predictions: Labels, targets: Labels, old_classes: OldClasses
) -> dict[str, float]:
    """GCD clustering accuracy with one Hungarian matching over all classes.

    With ``w[c, y]`` the number of samples predicted in cluster ``c`` with class ``y`` (a square
    matrix over ``max(label) + 1`` ids, as in the reference code), the one-to-one matching
    ``m: class → cluster`` maximising ``Σ_y w[m(y), y]`` is found with SciPy's
    ``linear_sum_assignment``. A sample is correct when its prediction is the cluster matched to
    its class. Then

    * ``all`` = correct samples / all samples,
    * ``old`` = correct samples of old classes / samples of old classes,
    * ``new`` = correct samples of the other classes / samples of the other classes.

    Old and New use the matching found on all classes (GCD's "v2" protocol, as in SimGCD and
    PGI), not a matching per group. A group without samples gives ``nan``. When several matchings
    are optimal, which one is used follows SciPy's tie-breaking on ``w.max() − w``, as the
    reference code does; ``all`` does not depend on it.

    This is an evaluation metric for the end of an epoch: it runs on the CPU with NumPy / SciPy.

    Args:
        predictions: Predicted cluster ids ``[N]`` (e.g. the argmax of the logits on the
            unlabeled training samples); non-negative ints.
        targets: Ground-truth class ids ``[N]``; non-negative ints.
        old_classes: The number of old classes ``K_old`` (ids ``0 … K_old − 1``) or the old ids.

    Returns:
        ``{"all": float, "old": float, "new": float}``, accuracies in ``[0, 1]`` (or ``nan``).

    Raises:
        ValueError: If the labels are not non-empty 1-D non-negative integer arrays of the same
            length, or ``old_classes`` is not a non-negative count or sequence of ints.

    Example::

        >>> # clusters are a permutation of the classes: raw accuracy 0, clustering accuracy 1
        >>> cluster_accuracy([1, 1, 2, 2, 0, 0], [0, 0, 1, 1, 2, 2], old_classes=2)
        {'all': 1.0, 'old': 1.0, 'new': 1.0}
        >>> # one sample of old class 0 and one of new class 2 land in the wrong cluster
        >>> cluster_accuracy([1, 1, 0, 2, 2, 0, 0, 2], [0, 0, 0, 1, 1, 2, 2, 2], old_classes=[0, 1])
        {'all': 0.75, 'old': 0.8, 'new': 0.6666666666666666}
    """
    preds = _as_labels(predictions, "predictions")
    labels = _as_labels(targets, "targets")
    if preds.shape != labels.shape:
        raise ValueError(
            f"`predictions` and `targets` must have the same length, got {preds.size} and "
            f"{labels.size}."
        )
    if preds.size == 0:
        raise ValueError("`predictions` and `targets` must not be empty.")
    old_ids = _old_class_ids(old_classes)

    num_ids = int(max(preds.max(), labels.max())) + 1
    counts = np.bincount(preds * num_ids + labels, minlength=num_ids * num_ids)
    counts = counts.reshape(num_ids, num_ids)  # [cluster, class]
    # Minimising w.max() − w (not maximize=True) keeps the reference code's tie-breaking.
    clusters, classes = linear_sum_assignment(counts.max() - counts)
    cluster_of_class = np.empty(num_ids, dtype=np.int64)
    cluster_of_class[classes] = clusters
    correct = preds == cluster_of_class[labels]

    is_old = np.isin(labels, old_ids)
    return {
        "all": float(correct.mean()),
        "old": float(correct[is_old].mean()) if is_old.any() else math.nan,
        "new": float(correct[~is_old].mean()) if (~is_old).any() else math.nan,
    }


class ClusterAccuracy(Metric):
    """GCD clustering accuracy (All / Old / New) accumulated over batches and processes.

    ``update`` stores the predicted cluster ids (or logits ``[N, K]``, reduced by argmax) and the
    ground-truth classes; ``compute`` runs :func:`cluster_accuracy` once on everything seen, since
    the Hungarian matching needs all predictions at once. The states are concatenated across
    processes under DDP. Feed it the unlabeled training samples, as in the GCD protocol.

    Args:
        old_classes: The number of old classes ``K_old`` (ids ``0 … K_old − 1``) or the old ids.
        kwargs: Passed on to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: If ``old_classes`` is invalid, or ``update`` gets mismatched shapes.

    Example::

        >>> import torch
        >>> metric = ClusterAccuracy(old_classes=2)
        >>> metric.update(torch.tensor([1, 1, 0, 2]), torch.tensor([0, 0, 0, 1]))
        >>> logits = torch.tensor([[0.0, 0, 5], [0, 0, 5], [5, 0, 0], [5, 0, 0]])  # argmax 2 2 0 0
        >>> metric.update(logits, torch.tensor([1, 2, 2, 2]))
        >>> {name: round(value.item(), 4) for name, value in metric.compute().items()}
        {'all': 0.75, 'old': 0.8, 'new': 0.6667}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    preds: list[Tensor]
    target: list[Tensor]

    def __init__(self, old_classes: OldClasses, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.old_classes: tuple[int, ...] = tuple(int(c) for c in _old_class_ids(old_classes))
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Store a batch: predicted cluster ids ``[N]`` or logits ``[N, K]``, and classes ``[N]``.

        Args:
            preds: Predicted cluster ids ``[N]`` or cluster logits / probabilities ``[N, K]``.
            target: Ground-truth class ids ``[N]``.

        Raises:
            ValueError: If the shapes do not match or the ids are not integers.
        """
        if preds.dim() == 2:
            preds = preds.argmax(dim=1)
        if preds.dim() != 1 or target.shape != preds.shape:
            raise ValueError(
                "`preds` must be cluster ids [N] or logits [N, K] and `target` class ids [N]; "
                f"got shapes {tuple(preds.shape)} and {tuple(target.shape)}."
            )
        if preds.is_floating_point() or target.is_floating_point():
            raise ValueError(
                f"Cluster and class ids must be integers, got dtypes {preds.dtype} and "
                f"{target.dtype}."
            )
        self.preds.append(preds.detach().long())
        self.target.append(target.detach().long())

    def compute(self) -> dict[str, Tensor]:
        """All / Old / New clustering accuracy of everything seen, as float32 scalars.

        Returns:
            ``{"all": Tensor, "old": Tensor, "new": Tensor}``.
        """
        result = cluster_accuracy(
            dim_zero_cat(self.preds), dim_zero_cat(self.target), self.old_classes
        )
        return {
            name: torch.tensor(value, dtype=torch.float32, device=self.device)
            for name, value in result.items()
        }
