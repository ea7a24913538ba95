"""PLOT's variability-collapse loss: the spread of the per-sample losses within each class."""

from __future__ import annotations

from torch import Tensor

_TINY = 1e-12


def per_class_loss_std(per_sample_losses: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """``[K]`` standard deviation (unbiased, as ``torch.std``) of the per-sample losses of each
    class in the batch; 0 for classes with fewer than two samples (no spread to measure).

    Vectorised (index-add of sums and squares), no host synchronisation, no NaN.

    Example::

        >>> import torch
        >>> per_class_loss_std(torch.tensor([1.0, 3.0, 5.0, 2.0]), torch.tensor([0, 0, 2, 2]), 3)
        tensor([1.4142, 0.0000, 2.1213])
    """
    if per_sample_losses.ndim != 1 or targets.shape != per_sample_losses.shape:
        raise ValueError(
            "per_sample_losses and targets must both have shape [B]; got "
            f"{tuple(per_sample_losses.shape)} and {tuple(targets.shape)}."
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive; got {num_classes}.")
    values = per_sample_losses.float()
    zeros = values.new_zeros(num_classes)
    counts = zeros.index_add(0, targets, values.new_ones(values.shape))
    sums = zeros.index_add(0, targets, values)
    # Centre on the class means before squaring: the textbook sum-of-squares form cancels badly.
    means = sums / counts.clamp_min(1)
    squares = zeros.index_add(0, targets, (values - means[targets]) ** 2)
    variance = squares / (counts - 1).clamp_min(1)
    spread = variance.clamp_min(_TINY).sqrt()
    return spread.where(counts >= 2, zeros)


def variability_collapse_loss(
    per_sample_losses: Tensor, targets: Tensor, num_classes: int
) -> Tensor:
    """``L_vc = (1/K') Σ_k Std(losses of class k)`` (the PLOT paper's eq. 2) over the ``K'``
    classes with at least two samples in the batch (the authors' code; a class with one sample
    has no standard deviation); 0 when there is none.

    Example::

        >>> import torch
        >>> loss = variability_collapse_loss(
        ...     torch.tensor([1.0, 3.0, 5.0, 2.0, 7.0]), torch.tensor([0, 0, 2, 2, 1]), 3
        ... )
        >>> round(float(loss), 4)  # (1.4142 + 2.1213) / 2
        1.7678
    """
    spread = per_class_loss_std(per_sample_losses, targets, num_classes)
    counts = spread.new_zeros(num_classes).index_add(0, targets, spread.new_ones(targets.shape))
    measured = (counts >= 2).to(spread.dtype)
    return (spread * measured).sum() / measured.sum().clamp_min(1)
