"""Losses of the long-tailed recognition baselines that PLOT augments.

* :class:`LDAMLoss` — label-distribution-aware margin loss (Cao et al., 2019), with
  :func:`drw_weights` / :class:`DeferredReweighting` for its deferred re-weighting (DRW) schedule;
* :class:`BalancedSoftmaxLoss` — Balanced Softmax (Ren et al., 2020);
* :class:`LogitAdjustedLoss` — logit-adjusted cross-entropy (Menon et al., 2021);
* :func:`mixup` — Mixup (Zhang et al., 2018), used by cRT + Mixup.

All losses take raw logits ``[B, C]`` and integer labels ``[B]``, compute in at least float32 with
autocast disabled (so bf16 / fp16 logits are safe), never synchronise with the host, and accept
``reduction="none"`` so that per-sample losses can be split into class-as-task objectives
(:func:`lightning_mtl.objectives.per_class_objectives`). Labels are not range-checked, since that
would need a host synchronisation; an out-of-range label fails inside ``cross_entropy``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mtl.engine.precision import full_precision

__all__ = [
    "BalancedSoftmaxLoss",
    "DeferredReweighting",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "drw_weights",
    "ldam_margins",
    "mixup",
    "mixup_pairs",
]

Reduction = Literal["mean", "sum", "none"]
ClassCounts = Sequence[int] | Tensor | np.ndarray
"""Training samples per class, class ``c`` at position ``c``."""

_REDUCTIONS = ("mean", "sum", "none")


def _counts_tensor(class_counts: ClassCounts) -> Tensor:
    """``class_counts`` as a float64 CPU vector; ValueError unless 1-D, non-empty and positive.

    Every loss here divides by or takes the log of ``n_c``, so a class without training samples
    has no defined margin, weight or prior.
    """
    if isinstance(class_counts, Tensor):
        counts = class_counts.detach().to("cpu", torch.float64)
    else:
        counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(
            f"`class_counts` must be a non-empty 1-D sequence, got shape {tuple(counts.shape)}."
        )
    if not bool(torch.isfinite(counts).all()) or not bool((counts > 0).all()):
        raise ValueError(
            "`class_counts` must be finite and > 0 for every class (a class with no training "
            f"sample has no margin, weight or prior), got {counts.tolist()}."
        )
    return counts


def _check_reduction(reduction: str) -> None:
    """ValueError unless ``reduction`` is one of ``mean``, ``sum``, ``none``."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}.")


def _check_logits(logits: Tensor, targets: Tensor, num_classes: int) -> None:
    """Shape/dtype checks that need no host synchronisation."""
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(
            f"`logits` must have shape [batch, {num_classes}], got {tuple(logits.shape)}."
        )
    if not logits.is_floating_point():
        raise ValueError(f"`logits` must be a floating-point tensor, got dtype {logits.dtype}.")
    if targets.shape != (logits.shape[0],):
        raise ValueError(
            f"`targets` must have shape [batch] = ({logits.shape[0]},), got {tuple(targets.shape)}."
        )
    if targets.is_floating_point() or targets.is_complex():
        raise ValueError(f"`targets` must be integer class labels, got dtype {targets.dtype}.")


def _compute_dtype(logits: Tensor) -> torch.dtype:
    """float32 for half-precision logits (float64 stays float64): bf16 has ~3 significant digits,
    too few for a margin of 0.05 on a logit scaled by 30."""
    return torch.promote_types(logits.dtype, torch.float32)


def ldam_margins(class_counts: ClassCounts, max_m: float = 0.5) -> Tensor:
    """LDAM's per-class margins ``Δ_c ∝ n_c^{-1/4}``, scaled so that the largest is ``max_m``.

    Args:
        class_counts: Training samples per class (all > 0).
        max_m: Margin of the rarest class (> 0).

    Returns:
        Float32 tensor ``[C]`` of margins.

    Raises:
        ValueError: If a count is not positive or ``max_m`` is not positive.

    Example::

        >>> ldam_margins([10000, 625, 1], max_m=0.5)  # n^{-1/4} = 0.1, 0.2, 1.0
        tensor([0.0500, 0.1000, 0.5000])
    """
    counts = _counts_tensor(class_counts)
    if not max_m > 0:
        raise ValueError(f"`max_m` must be > 0, got {max_m}.")
    margins = counts.pow(-0.25)
    return (margins * (max_m / margins.max())).to(torch.float32)


def drw_weights(class_counts: ClassCounts, beta: float = 0.9999) -> Tensor:
    """Class-balanced ("effective number") weights ``(1 − β) / (1 − β^{n_c})`` summing to ``C``.

    These are the weights that LDAM-DRW switches on in its deferred re-weighting stage (Cui et al.,
    2019; Cao et al., 2019). They are normalised so that they sum to the number of classes, i.e.
    average 1, which keeps the loss scale comparable to the unweighted loss. ``beta = 0`` gives
    all-ones weights; ``beta → 1`` tends to inverse-frequency weights.

    Args:
        class_counts: Training samples per class (all > 0).
        beta: Hyper-parameter in ``[0, 1)``; 0.9999 in LDAM-DRW.

    Returns:
        Float32 tensor ``[C]``.

    Raises:
        ValueError: If a count is not positive or ``beta`` is outside ``[0, 1)``.

    Example::

        >>> w = drw_weights([5000, 500, 50])
        >>> round(float(w.sum()), 4), bool(w[0] < w[1] < w[2])
        (3.0, True)
        >>> drw_weights([5000, 50], beta=0.0)
        tensor([1., 1.])
    """
    counts = _counts_tensor(class_counts)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"`beta` must be in [0, 1), got {beta}.")
    # float64: with β = 0.9999, 1 − β^n is small for small n and loses digits in float32.
    effective_num = 1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts)
    weights = (1.0 - beta) / effective_num
    return (weights * (counts.numel() / weights.sum())).to(torch.float32)


class DeferredReweighting(nn.Module):
    """DRW schedule: no class weights before ``start_epoch``, :func:`drw_weights` from then on.

    Calling it with the (0-based) current epoch returns ``None`` for ``epoch < start_epoch`` and
    the ``[C]`` weights otherwise; pass the result as the ``weight`` of :class:`LDAMLoss` (or of
    ``F.cross_entropy``). LDAM-DRW trains 200 epochs and re-weights from epoch 160 on. The weights
    are a non-persistent buffer: assigned as an attribute of a LightningModule they follow the
    module to its device (no host-to-device copy per step) and stay out of checkpoints, since they
    are a function of the hyper-parameters.

    Args:
        class_counts: Training samples per class (all > 0).
        start_epoch: First 0-based epoch with re-weighting (>= 0).
        beta: See :func:`drw_weights`.

    Raises:
        ValueError: If an argument is out of range.

    Example::

        >>> drw = DeferredReweighting([5000, 50], start_epoch=160)
        >>> drw(159) is None
        True
        >>> drw(160)
        tensor([0.0250, 1.9750])
    """

    weights: Tensor

    def __init__(
        self, class_counts: ClassCounts, start_epoch: int = 160, beta: float = 0.9999
    ) -> None:
        super().__init__()
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"`start_epoch` must be a non-negative int, got {start_epoch!r}.")
        self.start_epoch = start_epoch
        self.beta = beta
        self.register_buffer("weights", drw_weights(class_counts, beta), persistent=False)

    def forward(self, epoch: int) -> Tensor | None:
        """Class weights for ``epoch`` (0-based, e.g. ``trainer.current_epoch``), or ``None``.

        Args:
            epoch: Current 0-based epoch.

        Returns:
            ``None`` before ``start_epoch``, the weight buffer from then on.

        Example::

            >>> DeferredReweighting([10, 10], start_epoch=0)(0)
            tensor([1., 1.])
        """
        return None if epoch < self.start_epoch else self.weights

    def extra_repr(self) -> str:
        """Show the schedule in ``print(module)``."""
        return f"start_epoch={self.start_epoch}, beta={self.beta}"


def _reduce(losses: Tensor, targets: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    """Apply ``reduction`` to already-weighted per-sample losses, like ``F.cross_entropy``.

    With class weights the mean divides by the summed weights of the batch's labels (PyTorch's
    convention, also used by the LDAM-DRW reference), not by the batch size.
    """
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if weight is None:
        return losses.mean()
    return losses.sum() / weight[targets].sum()


class _PriorShiftLoss(nn.Module):
    """Cross-entropy of ``logits + shift`` for a fixed per-class ``shift`` buffer."""

    shift: Tensor

    def __init__(self, shift: Tensor, reduction: str) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.reduction = reduction
        self.register_buffer("shift", shift.to(torch.float32), persistent=False)

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return self.shift.numel()

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Loss of raw ``logits [B, C]`` against integer ``targets [B]``.

        Args:
            logits: Raw (unadjusted) logits; the adjustment is applied here, only for the loss,
                so predictions at test time use the raw logits.
            targets: Integer labels.

        Returns:
            Scalar loss, or ``[B]`` per-sample losses with ``reduction="none"``.
        """
        _check_logits(logits, targets, self.num_classes)
        dtype = _compute_dtype(logits)
        with full_precision(logits.device):
            adjusted = logits.to(dtype) + self.shift.to(device=logits.device, dtype=dtype)
            return F.cross_entropy(adjusted, targets, reduction=self.reduction)


class BalancedSoftmaxLoss(_PriorShiftLoss):
    """Balanced Softmax (Ren et al., 2020): cross-entropy of ``logits + log n_c``.

    Adding ``log n_c`` during training lets the raw logits estimate the balanced (test)
    posterior; predictions use the raw logits. Shifting by ``log n_c`` or by ``log(n_c / N)`` gives
    the same softmax, so this equals :class:`LogitAdjustedLoss` with ``tau = 1``.

    Args:
        class_counts: Training samples per class (all > 0).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample ``[B]``).

    Raises:
        ValueError: If a count is not positive or ``reduction`` is unknown.

    Example::

        >>> import torch
        >>> loss = BalancedSoftmaxLoss([90, 10])
        >>> logits = torch.zeros(1, 2)  # softmax over log-counts: p = (0.9, 0.1)
        >>> round(float(loss(logits, torch.tensor([1]))), 4)  # -log(0.1)
        2.3026
    """

    def __init__(self, class_counts: ClassCounts, reduction: Reduction = "mean") -> None:
        super().__init__(_counts_tensor(class_counts).log(), reduction)


class LogitAdjustedLoss(_PriorShiftLoss):
    """Logit-adjusted cross-entropy (Menon et al., 2021): CE of ``logits + τ · log π_c``.

    ``π_c = n_c / Σ n`` is the training prior. ``tau = 1`` is Balanced Softmax; ``tau = 0`` is
    plain cross-entropy.

    Args:
        class_counts: Training samples per class (all > 0).
        tau: Adjustment strength (>= 0, finite); 1 in Menon et al.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample ``[B]``).

    Raises:
        ValueError: If a count is not positive, ``tau`` is negative or ``reduction`` is unknown.

    Example::

        >>> import torch
        >>> logits, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 1])
        >>> la = LogitAdjustedLoss([50, 30, 20], tau=1.0)(logits, targets)
        >>> torch.allclose(la, BalancedSoftmaxLoss([50, 30, 20])(logits, targets))
        True
        >>> plain = torch.nn.functional.cross_entropy(logits, targets)
        >>> torch.allclose(LogitAdjustedLoss([50, 30, 20], tau=0.0)(logits, targets), plain)
        True
    """

    def __init__(
        self, class_counts: ClassCounts, tau: float = 1.0, reduction: Reduction = "mean"
    ) -> None:
        if not (math.isfinite(tau) and tau >= 0):
            raise ValueError(f"`tau` must be finite and >= 0, got {tau}.")
        counts = _counts_tensor(class_counts)
        super().__init__(tau * (counts / counts.sum()).log(), reduction)
        self.tau = tau


class LDAMLoss(nn.Module):
    """Label-distribution-aware margin loss (Cao et al., 2019).

    The true-class logit is lowered by the class margin ``Δ_y`` (:func:`ldam_margins`, largest
    ``max_m``), all logits are multiplied by ``s`` and cross-entropy is taken::

        loss_i = CE(s · (z_i − Δ_{y_i} e_{y_i}), y_i)           (weighted by weight[y_i])

    ``s`` matters because the LDAM reference pairs this loss with a normalised (cosine)
    classifier whose logits lie in ``[-1, 1]``; see ``resnet32(normalized_classifier=True)``.

    Class weights (DRW) come from the constructor's ``weight`` or, per call, from the ``weight``
    argument of :meth:`forward`, which takes precedence when it is not ``None``; this lets a
    :class:`DeferredReweighting` schedule switch them on during training.

    Args:
        class_counts: Training samples per class (all > 0).
        max_m: Largest margin (> 0); 0.5 in the reference.
        s: Logit scale (> 0); 30 in the reference.
        weight: Optional ``[C]`` class weights, e.g. :func:`drw_weights`.
        reduction: ``"mean"`` (default; weighted mean as in ``F.cross_entropy``), ``"sum"`` or
            ``"none"`` (per-sample ``[B]`` losses, each multiplied by its class weight).

    Raises:
        ValueError: If an argument is out of range or ``weight`` does not have shape ``[C]``.

    Example::

        >>> import torch
        >>> loss = LDAMLoss([100, 10], max_m=0.5, s=30.0)
        >>> loss.margins
        tensor([0.2812, 0.5000])
        >>> logits = torch.tensor([[0.2, 0.1]])
        >>> margin_0 = 0.5 * (10 / 100) ** 0.25  # Δ ∝ n^{-1/4}, rarest class gets max_m
        >>> reference = torch.nn.functional.cross_entropy(
        ...     30.0 * torch.tensor([[0.2 - margin_0, 0.1]]), torch.tensor([0]))
        >>> torch.allclose(loss(logits, torch.tensor([0])), reference)
        True
    """

    margins: Tensor
    weight: Tensor | None

    def __init__(
        self,
        class_counts: ClassCounts,
        max_m: float = 0.5,
        s: float = 30.0,
        weight: Tensor | None = None,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"`s` must be finite and > 0, got {s}.")
        _check_reduction(reduction)
        margins = ldam_margins(class_counts, max_m)
        self.max_m = max_m
        self.s = s
        self.reduction = reduction
        self.register_buffer("margins", margins, persistent=False)
        if weight is not None:
            weight = self._check_weight(weight)
        self.register_buffer("weight", weight, persistent=False)

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return self.margins.numel()

    def _check_weight(self, weight: Tensor) -> Tensor:
        """``weight`` as a float tensor; ValueError unless it has shape ``[C]``."""
        weight = torch.as_tensor(weight)
        if weight.shape != (self.num_classes,):
            raise ValueError(
                f"`weight` must have shape [{self.num_classes}], got {tuple(weight.shape)}."
            )
        return weight if weight.is_floating_point() else weight.to(torch.float32)

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        """Loss of ``logits [B, C]`` against integer ``targets [B]``.

        Args:
            logits: Raw logits (cosines with a normalised classifier).
            targets: Integer labels.
            weight: Optional ``[C]`` class weights for this call; ``None`` uses the constructor's.

        Returns:
            Scalar loss, or ``[B]`` per-sample losses with ``reduction="none"``.

        Raises:
            ValueError: On a shape or dtype mismatch.

        Example::

            >>> import torch
            >>> loss = LDAMLoss([100, 10], reduction="none")  # class 1: margin 0.5, s = 30
            >>> # sample 1: CE of (0, -15) for class 1 = log(1 + e^15) ≈ 15; sample 0: weight 0
            >>> loss(torch.zeros(2, 2), torch.tensor([0, 1]), weight=torch.tensor([0.0, 1.0]))
            tensor([ 0., 15.])
        """
        _check_logits(logits, targets, self.num_classes)
        weight = self.weight if weight is None else self._check_weight(weight)
        dtype = _compute_dtype(logits)
        with full_precision(logits.device):
            z = logits.to(dtype)
            # Subtract Δ_y at the true class only. The margins are scattered into a constant
            # (off the autograd graph); F.one_hot would check the label range on the host.
            margins = self.margins.to(device=z.device, dtype=dtype)
            shift = torch.zeros_like(z).scatter_(1, targets[:, None], margins[targets][:, None])
            z = z - shift
            if weight is not None:
                weight = weight.to(device=z.device, dtype=dtype)
            losses = F.cross_entropy(self.s * z, targets, weight=weight, reduction="none")
            return _reduce(losses, targets, weight, self.reduction)

    def extra_repr(self) -> str:
        """Show the hyper-parameters in ``print(module)``."""
        return f"num_classes={self.num_classes}, max_m={self.max_m}, s={self.s}"


def mixup(
    inputs: Tensor,
    targets_onehot: Tensor,
    alpha: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, float]:
    """Mixup (Zhang et al., 2018): convex combinations of a batch with a shuffled copy of itself.

    With ``λ ~ Beta(α, α)`` and a random permutation ``π`` of the batch::

        x̃_i = λ x_i + (1 − λ) x_{π(i)},    ỹ_i = λ y_i + (1 − λ) y_{π(i)}

    One ``λ`` per batch, as in the reference implementation. ``alpha = 0`` means no mixing
    (``λ = 1``). Train with the soft targets, e.g. ``F.cross_entropy(logits, ỹ)`` (which accepts
    class probabilities), equal to ``λ CE(y) + (1 − λ) CE(y_π)``.

    Randomness comes only from ``generator``, a CPU generator (the global CPU generator when
    ``None``): it seeds a NumPy Beta draw, so ``λ`` is a host float and no device synchronisation
    happens, and it draws the permutation, which is copied to the inputs' device. The same amount
    of randomness is used whatever ``alpha``, so a seeded run is reproducible.

    Args:
        inputs: Batch ``[B, ...]`` (floating point; any device and dtype, e.g. bf16).
        targets_onehot: ``[B, C]`` one-hot or soft float targets.
        alpha: Beta concentration (>= 0).
        generator: Optional CPU ``torch.Generator``.

    Returns:
        ``(mixed_inputs, mixed_targets, lam)``: tensors with the inputs' and targets' shapes and
        dtypes, and ``λ`` in ``[0, 1]``.

    Raises:
        ValueError: On a shape or dtype mismatch, a negative ``alpha``, or a non-CPU generator.

    Example::

        >>> import torch
        >>> x, y = torch.arange(4.0).view(4, 1), torch.eye(4)
        >>> mx, my, lam = mixup(x, y, alpha=1.0, generator=torch.Generator().manual_seed(0))
        >>> 0.0 <= lam <= 1.0, bool(torch.allclose(my.sum(1), torch.ones(4)))
        (True, True)
        >>> torch.allclose(mx, my @ x)  # inputs and targets are mixed with the same λ and π
        True
        >>> mixup(x, y, alpha=0.0)[2]
        1.0
    """
    _check_mixup_inputs(inputs, alpha, generator)
    if targets_onehot.ndim != 2 or targets_onehot.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"`targets_onehot` must have shape [batch={inputs.shape[0]}, classes], "
            f"got {tuple(targets_onehot.shape)}."
        )
    if not targets_onehot.is_floating_point():
        raise ValueError(
            "`targets_onehot` must be floating point (one-hot or soft targets, e.g. "
            f"F.one_hot(y, C).float()), got dtype {targets_onehot.dtype}."
        )
    mixed_inputs, perm, lam = mixup_pairs(inputs, alpha, generator)
    mixed_targets = targets_onehot * lam + targets_onehot[perm.to(targets_onehot.device)] * (
        1.0 - lam
    )
    return mixed_inputs, mixed_targets, lam


def mixup_pairs(
    inputs: Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, float]:
    """The input side of :func:`mixup`: ``x̃_i = λ x_i + (1 − λ) x_{π(i)}``, with ``π`` returned so
    that a loss can be mixed per label pair, ``λ ℓ(z_i, y_i) + (1 − λ) ℓ(z_i, y_{π(i)})`` (the
    mixup criterion of the reference code, needed when the loss depends on the label beyond a
    soft target, e.g. LDAM's margins or a class-wise split of the loss).

    It draws exactly what :func:`mixup` draws, so with the same generator state both give the same
    ``λ``, ``π`` and mixed inputs.

    Args:
        inputs: Batch ``[B, ...]`` (floating point; any device and dtype).
        alpha: Beta concentration (>= 0); 0 means ``λ = 1``.
        generator: Optional CPU ``torch.Generator``.

    Returns:
        ``(mixed_inputs, perm, lam)``: the mixed batch, the permutation ``π`` (int64 on the
        inputs' device) and ``λ`` in ``[0, 1]``.

    Raises:
        ValueError: On a non-floating or 0-d input, a negative ``alpha``, or a non-CPU generator.

    Example::

        >>> import torch
        >>> x, y = torch.arange(4.0).view(4, 1), torch.eye(4)
        >>> mixed, perm, lam = mixup_pairs(x, 1.0, torch.Generator().manual_seed(0))
        >>> torch.allclose(mixed, lam * x + (1 - lam) * x[perm])
        True
        >>> again = mixup(x, y, 1.0, torch.Generator().manual_seed(0))
        >>> torch.equal(again[0], mixed), again[2] == lam
        (True, True)
    """
    _check_mixup_inputs(inputs, alpha, generator)
    # Draw on the CPU: `.item()` of a CPU tensor does not wait for the accelerator.
    seed = int(torch.randint(2**62, (1,), generator=generator).item())
    perm = torch.randperm(inputs.shape[0], generator=generator).to(inputs.device)
    lam = float(np.random.default_rng(seed).beta(alpha, alpha)) if alpha > 0 else 1.0
    mixed_inputs = inputs * lam + inputs[perm] * (1.0 - lam)
    return mixed_inputs, perm, lam


def _check_mixup_inputs(inputs: Tensor, alpha: float, generator: torch.Generator | None) -> None:
    """ValueError unless mixup's inputs, ``alpha`` and generator are usable."""
    if not inputs.is_floating_point():
        raise ValueError(f"`inputs` must be a floating-point tensor, got dtype {inputs.dtype}.")
    if inputs.ndim < 1:
        raise ValueError("`inputs` must have a batch dimension.")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"`alpha` must be finite and >= 0, got {alpha}.")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"`generator` must be a CPU generator (λ is drawn on the host), got one on "
            f"{generator.device}."
        )
