"""Supervised contrastive loss (Khosla et al., 2020), "L_out" formulation.

Without labels the loss reduces to SimCLR / InfoNCE (NT-Xent): the positives of a view-feature are
the other views of the same sample. With labels, every other view-feature that shares the anchor's
label is a positive. This matches the multi-view formulation used by the SupCon reference code and
by GCD / SimGCD (``contrast_mode="all"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mtl.engine.precision import full_precision

__all__ = ["SupConLoss", "supervised_contrastive_loss"]


def _check_inputs(
    features: Tensor,
    labels: Tensor | None,
    temperature: float,
    base_temperature: float,
    mask: Tensor | None,
) -> None:
    """Validate shapes, dtypes and temperatures; raise ``ValueError`` with a clear message."""
    if features.dim() != 3:
        raise ValueError(
            "`features` must be 3-D with shape [batch, views, feature_dim], "
            f"got shape {tuple(features.shape)}."
        )
    if not features.is_floating_point():
        raise ValueError(f"`features` must be a floating-point tensor, got dtype {features.dtype}.")
    batch_size, num_views, _ = features.shape
    if labels is None:
        if num_views < 2:
            raise ValueError(
                "Without `labels` at least 2 views per sample are needed (positives are the other "
                f"views of the same sample), got {num_views} view(s)."
            )
    else:
        if labels.shape != (batch_size,):
            raise ValueError(
                f"`labels` must have shape [batch] = ({batch_size},) to match `features`, "
                f"got shape {tuple(labels.shape)}."
            )
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"`labels` must be an integer tensor, got dtype {labels.dtype}.")
    if mask is not None and (mask.shape != (batch_size,) or mask.dtype != torch.bool):
        raise ValueError(
            f"`mask` must be a bool tensor of shape [batch] = ({batch_size},), got dtype "
            f"{mask.dtype} and shape {tuple(mask.shape)}."
        )
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    if not base_temperature > 0:
        raise ValueError(f"`base_temperature` must be > 0, got {base_temperature}.")


def supervised_contrastive_loss(
    features: Tensor,
    labels: Tensor | None = None,
    temperature: float = 0.07,
    base_temperature: float | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Supervised contrastive loss ("L_out" form) over all views of a batch.

    Every one of the ``B * V`` view-features is an anchor. For an anchor ``i`` with positive set
    ``P(i)`` (all other view-features with the same label, or the other views of the same sample
    when ``labels`` is ``None``) and candidate set ``A(i)`` (all view-features except ``i``)::

        l_i = -(temperature / base_temperature) / |P(i)|
              * sum_{p in P(i)} log( exp(z_i . z_p / t) / sum_{a in A(i)} exp(z_i . z_a / t) )

    and the loss is the mean of ``l_i`` over anchors with at least one positive. Anchors without a
    positive (only possible with one view and a label that occurs once) are left out of the mean;
    if no anchor has a positive the loss is ``0`` (still attached to the graph).

    ``base_temperature`` defaults to ``temperature`` so the scale factor is 1 and the loss is the
    plain log-softmax cross-entropy. The reference code scales by ``temperature / base_temperature``
    (with ``base_temperature=0.07``); pass it explicitly to reproduce that scaling when using a
    different temperature.

    Features are L2-normalised along the last dimension internally. The similarities and the
    log-sum-exp are computed with autocast disabled in at least float32, so the loss is stable
    under bfloat16 / float16 autocast; the result has dtype float32 (float64 for float64 input).
    The computation is fully vectorised and does not synchronise with the host.

    ``mask`` restricts the loss to some samples (e.g. the labeled rows of a GCD batch): the result
    equals ``supervised_contrastive_loss(features[mask], labels[mask])``, but the masked-out
    samples are excluded from every anchor, positive and denominator instead of being indexed
    away, because boolean indexing sizes its output by the data and so waits for the device.

    Args:
        features: Tensor of shape ``[B, V, F]``: ``V`` views of ``B`` samples.
        labels: Optional integer tensor of shape ``[B]``. ``None`` gives SimCLR / InfoNCE.
        temperature: Softmax temperature ``t`` (> 0).
        base_temperature: Reference temperature for the ``t / base_temperature`` scale (> 0).
            ``None`` means ``temperature``.
        mask: Optional bool tensor of shape ``[B]``: the samples that take part. ``None`` means
            all of them.

    Returns:
        Scalar loss tensor.

    Raises:
        ValueError: If ``features`` is not 3-D floating point, ``labels`` does not have shape
            ``[B]`` or is not integer, ``V < 2`` without labels, a temperature is not positive,
            or ``mask`` is not a bool tensor of shape ``[B]``.

    Example::

        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> feats = torch.randn(8, 2, 16)
        >>> labels = torch.tensor([0, 1, 0, 1, 2, 2, 3, 3])
        >>> loss = supervised_contrastive_loss(feats, labels)
        >>> loss.shape, bool(loss > 0)
        (torch.Size([]), True)
        >>> # identical views and no labels: each anchor's positive is its exact copy
        >>> same = torch.randn(4, 1, 16).expand(4, 2, 16)
        >>> bool(supervised_contrastive_loss(same) < supervised_contrastive_loss(feats))
        True
        >>> # a mask gives the loss of the selected samples, without indexing them out
        >>> keep = labels < 2
        >>> masked = supervised_contrastive_loss(feats, labels, mask=keep)
        >>> torch.allclose(masked, supervised_contrastive_loss(feats[keep], labels[keep]))
        True
    """
    if base_temperature is None:
        base_temperature = temperature
    _check_inputs(features, labels, temperature, base_temperature, mask)
    batch_size, num_views, feature_dim = features.shape
    device = features.device

    # bf16 similarities carry ~3 significant digits; divided by t=0.07 the softmax would be far off.
    compute_dtype = torch.promote_types(features.dtype, torch.float32)
    with full_precision(device):
        normed = F.normalize(features.to(compute_dtype), dim=-1)
        # View-major stacking (view 0 of all samples, then view 1, ...) as in the reference code;
        # the order does not change the loss but keeps indices easy to reason about.
        anchors = normed.transpose(0, 1).reshape(num_views * batch_size, feature_dim)
        logits = anchors @ anchors.T / temperature

        num_anchors = num_views * batch_size
        self_mask = torch.eye(num_anchors, dtype=torch.bool, device=device)
        excluded = self_mask
        if mask is not None:
            member = mask.to(device).repeat(num_views)
            excluded = self_mask | ~member[None, :]
        # Self-similarity (and masked-out samples) must not enter the denominator. A finite fill
        # (not -inf) keeps both the value and the gradient NaN-free even for a degenerate
        # single-anchor batch or a row with every candidate masked out.
        logits = logits.masked_fill(excluded, torch.finfo(compute_dtype).min)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)

        group = labels.to(device) if labels is not None else torch.arange(batch_size, device=device)
        group = group.repeat(num_views)
        pos_mask = (group[:, None] == group[None, :]) & ~excluded
        if mask is not None:
            pos_mask &= member[:, None]

        num_pos = pos_mask.sum(dim=1)
        # torch.where (not multiplication) so that masked-out entries cannot leak inf/NaN.
        pos_log_prob_sum = torch.where(pos_mask, log_prob, log_prob.new_zeros(())).sum(dim=1)
        mean_log_prob_pos = pos_log_prob_sum / num_pos.clamp(min=1).to(compute_dtype)

        has_pos = (num_pos > 0).to(compute_dtype)
        per_anchor = -(temperature / base_temperature) * mean_log_prob_pos * has_pos
        # clamp keeps the division host-sync free and yields 0 when no anchor has a positive.
        return per_anchor.sum() / has_pos.sum().clamp(min=1.0)


class SupConLoss(nn.Module):
    """Module wrapper around :func:`supervised_contrastive_loss`.

    Args:
        temperature: Softmax temperature (> 0). Default 0.07.
        base_temperature: Reference temperature for the ``temperature / base_temperature`` loss
            scale (> 0). ``None`` (default) means ``temperature``, i.e. a scale of 1.

    Raises:
        ValueError: If a temperature is not positive.

    Example::

        >>> import torch
        >>> criterion = SupConLoss(temperature=0.1)
        >>> feats = torch.randn(6, 2, 32)
        >>> criterion(feats).shape  # SimCLR / InfoNCE without labels
        torch.Size([])
        >>> criterion(feats, torch.tensor([0, 0, 1, 1, 2, 2])).dtype
        torch.float32
    """

    def __init__(self, temperature: float = 0.07, base_temperature: float | None = None) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}.")
        if base_temperature is not None and not base_temperature > 0:
            raise ValueError(f"`base_temperature` must be > 0, got {base_temperature}.")
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """Compute the loss; see :func:`supervised_contrastive_loss` for shapes.

        Args:
            features: Tensor of shape ``[B, V, F]``.
            labels: Optional integer tensor of shape ``[B]``.

        Returns:
            Scalar loss tensor.

        Example::

            >>> import torch
            >>> SupConLoss()(torch.randn(4, 2, 8)).ndim
            0
        """
        return supervised_contrastive_loss(
            features,
            labels,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
        )

    def extra_repr(self) -> str:
        """Show the temperatures in ``print(module)``."""
        return f"temperature={self.temperature}, base_temperature={self.base_temperature}"
