"""Self-distillation cluster loss with a mean-entropy regulariser (SimGCD, Wen et al., 2023).

Each view's cluster prediction (the student, ``softmax(logits / 0.1)``) is trained towards the
sharpened prediction of the *other* view (the teacher, ``softmax(logits / τ_t)``, detached), and
the entropy of the batch-mean prediction is maximised so that the samples do not all collapse into
one cluster. The teacher temperature ``τ_t`` is warmed up from 0.07 to 0.04 over the first epochs.
PGI uses this loss as ``L_cluster`` in its representation objective (eq. 12).
"""

from __future__ import annotations

import math
import operator
from typing import Literal, NamedTuple, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mtl.engine.precision import full_precision

__all__ = [
    "SelfDistillationLoss",
    "SelfDistillationOutput",
    "self_distillation_loss",
    "teacher_temperature",
]


def _as_int(value: object, name: str) -> int:
    """``value`` as a Python int (numpy ints accepted), or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be an int, got {value!r}.")
    try:
        return operator.index(value)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"`{name}` must be an int, got {value!r}.") from None


def teacher_temperature(
    epoch: int, warmup_epochs: int = 30, start: float = 0.07, end: float = 0.04
) -> float:
    """Teacher temperature at ``epoch``: linear from ``start`` to ``end``, then constant.

    The schedule is SimGCD's ``np.linspace(start, end, warmup_epochs)`` for the first
    ``warmup_epochs`` epochs followed by ``end``: epoch 0 uses ``start`` and ``end`` is reached
    at epoch ``warmup_epochs − 1``. A lower temperature sharpens the teacher; starting softer
    keeps the targets of the barely trained head from being over-confident.

    Args:
        epoch: Current epoch, counted from 0 (≥ 0).
        warmup_epochs: Length of the linear warm-up (≥ 0; 0 means ``end`` throughout).
        start: Temperature at epoch 0 (> 0). Default 0.07.
        end: Temperature after the warm-up (> 0). Default 0.04.

    Returns:
        The temperature as a Python float.

    Raises:
        ValueError: If ``epoch`` or ``warmup_epochs`` is not a non-negative int, or a
            temperature is not positive.

    Example::

        >>> [round(teacher_temperature(e), 5) for e in (0, 15, 29, 30, 100)]
        [0.07, 0.05448, 0.04, 0.04, 0.04]
    """
    epoch = _as_int(epoch, "epoch")
    warmup_epochs = _as_int(warmup_epochs, "warmup_epochs")
    if epoch < 0:
        raise ValueError(f"`epoch` must be ≥ 0, got {epoch}.")
    if warmup_epochs < 0:
        raise ValueError(f"`warmup_epochs` must be ≥ 0, got {warmup_epochs}.")
    if not (start > 0 and end > 0):
        raise ValueError(f"Temperatures must be > 0, got start={start} and end={end}.")
    if epoch >= warmup_epochs:
        return float(end)
    if warmup_epochs == 1:
        return float(start)
    return start + (end - start) * epoch / (warmup_epochs - 1)


class SelfDistillationOutput(NamedTuple):
    """The loss and its parts: ``total = cross_entropy − w · mean_entropy``."""

    total: Tensor
    """Scalar loss to minimise."""
    cross_entropy: Tensor
    """Mean cross-entropy between each teacher view and the student's other views."""
    mean_entropy: Tensor
    """Entropy ``H(p̄)`` of the student's mean prediction ``p̄`` over all samples and views."""


def self_distillation_loss(
    student_logits: Tensor,
    teacher_temp: float,
    student_temp: float = 0.1,
    mean_entropy_weight: float = 2.0,
    num_views: int = 2,
) -> SelfDistillationOutput:
    """SimGCD's self-distillation cluster loss with the mean-entropy regulariser.

    ``student_logits`` stacks the ``V`` views view-major: rows ``v·B … (v+1)·B − 1`` are view
    ``v`` of the ``B`` samples. With student log-probabilities ``log s_v = log softmax(x_v / 0.1)``
    and teacher probabilities ``t_v = softmax(x_v / τ_t)`` computed from the *detached* logits::

        cross_entropy = mean over ordered pairs (i ≠ v) of  mean_b  −Σ_k t_i[b, k] log s_v[b, k]
        p̄             = mean of s over all V·B rows
        total         = cross_entropy − w · H(p̄),      H(p̄) = −Σ_k p̄_k log p̄_k

    Maximising the entropy of the mean prediction spreads the samples over the clusters and
    prevents the trivial solution where every sample falls into one cluster, hence the minus.
    SimGCD reports ``w · (log K − H(p̄))`` for the regulariser, which is this term plus the
    constant ``w · log K`` (same gradient). Its ``w`` (``memax_weight``) is 2 by default and on
    CUB, 1 on most other data sets.

    Computed with autocast disabled in at least float32 (``log p̄`` via log-sum-exp, so no
    ``log 0``); vectorised, no host synchronisation.

    Args:
        student_logits: Cluster logits ``[V·B, K]`` of all views, view-major.
        teacher_temp: Teacher temperature ``τ_t`` (> 0), see :func:`teacher_temperature`.
        student_temp: Student temperature (> 0). Default 0.1.
        mean_entropy_weight: Weight ``w`` of the mean-entropy term (≥ 0). Default 2.0.
        num_views: Number of stacked views ``V`` (≥ 2). Default 2.

    Returns:
        :class:`SelfDistillationOutput` ``(total, cross_entropy, mean_entropy)`` of scalars
        (float32; float64 for float64 input).

    Raises:
        ValueError: If ``student_logits`` is not 2-D floating point with a positive multiple of
            ``num_views`` rows, or a temperature, the weight or ``num_views`` is invalid.

    Example::

        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(8, 5, requires_grad=True)  # 2 views of 4 samples, 5 clusters
        >>> out = self_distillation_loss(logits, teacher_temp=0.07)
        >>> torch.allclose(out.total, out.cross_entropy - 2.0 * out.mean_entropy)
        True
        >>> bool(out.mean_entropy <= torch.log(torch.tensor(5.0)))
        True
        >>> out.total.backward()
        >>> logits.grad.shape
        torch.Size([8, 5])
    """
    _check_distillation_args(
        student_logits, teacher_temp, student_temp, mean_entropy_weight, num_views
    )
    num_rows, num_clusters = student_logits.shape
    batch_size = num_rows // num_views
    compute_dtype = torch.promote_types(student_logits.dtype, torch.float32)
    with full_precision(student_logits.device):
        logits = student_logits.to(compute_dtype)
        log_student = F.log_softmax(logits / student_temp, dim=1)
        # The teacher is a target: no gradient flows through it.
        teacher = F.softmax(logits.detach() / teacher_temp, dim=1)

        views_log_student = log_student.view(num_views, batch_size, num_clusters)
        views_teacher = teacher.view(num_views, batch_size, num_clusters)
        # [teacher view, student view] mean cross-entropies; the diagonal (same view) is dropped.
        pair_ce = -torch.einsum("ibk,vbk->iv", views_teacher, views_log_student) / batch_size
        other_view = 1.0 - torch.eye(num_views, dtype=compute_dtype, device=logits.device)
        cross_entropy = (pair_ce * other_view).sum() / (num_views * (num_views - 1))

        log_mean = torch.logsumexp(log_student, dim=0) - math.log(num_rows)
        mean_entropy = -(log_mean.exp() * log_mean).sum()
        total = cross_entropy - mean_entropy_weight * mean_entropy
    return SelfDistillationOutput(total, cross_entropy, mean_entropy)


def _check_distillation_args(
    student_logits: Tensor,
    teacher_temp: float,
    student_temp: float,
    mean_entropy_weight: float,
    num_views: int,
) -> None:
    """Validate the self-distillation inputs; raise ``ValueError`` with a clear message."""
    num_views = _as_int(num_views, "num_views")
    if num_views < 2:
        raise ValueError(f"`num_views` must be ≥ 2 (the teacher is another view), got {num_views}.")
    if student_logits.dim() != 2:
        raise ValueError(
            "`student_logits` must be 2-D with shape [views * batch, clusters], "
            f"got shape {tuple(student_logits.shape)}."
        )
    if not student_logits.is_floating_point():
        raise ValueError(
            f"`student_logits` must be a floating-point tensor, got dtype {student_logits.dtype}."
        )
    num_rows, num_clusters = student_logits.shape
    if num_rows == 0 or num_rows % num_views != 0 or num_clusters == 0:
        raise ValueError(
            f"`student_logits` must stack {num_views} views of a non-empty batch (rows a positive "
            f"multiple of {num_views}) over ≥ 1 cluster, got shape {tuple(student_logits.shape)}."
        )
    if not (teacher_temp > 0 and student_temp > 0):
        raise ValueError(
            f"Temperatures must be > 0, got teacher_temp={teacher_temp} and "
            f"student_temp={student_temp}."
        )
    if not mean_entropy_weight >= 0:
        raise ValueError(f"`mean_entropy_weight` must be ≥ 0, got {mean_entropy_weight}.")


class SelfDistillationLoss(nn.Module):
    """SimGCD's self-distillation cluster loss with the teacher-temperature warm-up.

    See :func:`self_distillation_loss` for the formula and :func:`teacher_temperature` for the
    schedule. The defaults are SimGCD's: teacher temperature 0.07 → 0.04 over 30 epochs, student
    temperature 0.1, mean-entropy weight 2 (CUB; 1 on most other data sets).

    Args:
        warmup_epochs: Epochs of the teacher-temperature warm-up (≥ 0). Default 30.
        start_teacher_temp: Teacher temperature at epoch 0 (> 0). Default 0.07.
        end_teacher_temp: Teacher temperature after the warm-up (> 0). Default 0.04.
        student_temp: Student temperature (> 0). Default 0.1.
        mean_entropy_weight: Default weight ``w`` of the mean-entropy term (≥ 0). Default 2.0.
        num_views: Number of stacked views (≥ 2). Default 2.

    Raises:
        ValueError: If an argument is out of range.

    Example::

        >>> import torch
        >>> criterion = SelfDistillationLoss()
        >>> logits = torch.randn(8, 5)  # 2 views of 4 samples
        >>> criterion(logits, epoch=0).shape
        torch.Size([])
        >>> total, ce, entropy = criterion(logits, epoch=40, return_parts=True)
        >>> torch.allclose(total, ce - 2.0 * entropy)
        True
    """

    def __init__(
        self,
        warmup_epochs: int = 30,
        start_teacher_temp: float = 0.07,
        end_teacher_temp: float = 0.04,
        student_temp: float = 0.1,
        mean_entropy_weight: float = 2.0,
        num_views: int = 2,
    ) -> None:
        super().__init__()
        # Validates the schedule arguments once, up front.
        teacher_temperature(0, warmup_epochs, start_teacher_temp, end_teacher_temp)
        if not student_temp > 0:
            raise ValueError(f"`student_temp` must be > 0, got {student_temp}.")
        if not mean_entropy_weight >= 0:
            raise ValueError(f"`mean_entropy_weight` must be ≥ 0, got {mean_entropy_weight}.")
        num_views = _as_int(num_views, "num_views")
        if num_views < 2:
            raise ValueError(f"`num_views` must be ≥ 2, got {num_views}.")
        self.warmup_epochs = warmup_epochs
        self.start_teacher_temp = start_teacher_temp
        self.end_teacher_temp = end_teacher_temp
        self.student_temp = student_temp
        self.mean_entropy_weight = mean_entropy_weight
        self.num_views = num_views

    def teacher_temperature(self, epoch: int) -> float:
        """The teacher temperature at ``epoch`` under this module's schedule.

        Example::

            >>> round(SelfDistillationLoss(warmup_epochs=3).teacher_temperature(1), 6)
            0.055
        """
        return teacher_temperature(
            epoch, self.warmup_epochs, self.start_teacher_temp, self.end_teacher_temp
        )

    @overload
    def forward(
        self,
        student_logits: Tensor,
        epoch: int,
        mean_entropy_weight: float | None = ...,
        return_parts: Literal[False] = ...,
    ) -> Tensor: ...

    @overload
    def forward(
        self,
        student_logits: Tensor,
        epoch: int,
        mean_entropy_weight: float | None = ...,
        *,
        return_parts: Literal[True],
    ) -> SelfDistillationOutput: ...

    def forward(
        self,
        student_logits: Tensor,
        epoch: int,
        mean_entropy_weight: float | None = None,
        return_parts: bool = False,
    ) -> Tensor | SelfDistillationOutput:
        """Compute the loss at ``epoch``.

        Args:
            student_logits: Cluster logits ``[V·B, K]`` of all views, view-major.
            epoch: Current epoch from 0; selects the teacher temperature.
            mean_entropy_weight: Override of the mean-entropy weight for this call (≥ 0);
                ``None`` uses the module's.
            return_parts: Return :class:`SelfDistillationOutput` ``(total, cross_entropy,
                mean_entropy)`` instead of the total alone.

        Returns:
            The scalar total loss, or the three parts.

        Example::

            >>> import torch
            >>> SelfDistillationLoss()(torch.randn(4, 3), epoch=3, mean_entropy_weight=1.0).ndim
            0
        """
        weight = self.mean_entropy_weight if mean_entropy_weight is None else mean_entropy_weight
        out = self_distillation_loss(
            student_logits,
            teacher_temp=self.teacher_temperature(epoch),
            student_temp=self.student_temp,
            mean_entropy_weight=weight,
            num_views=self.num_views,
        )
        return out if return_parts else out.total

    def extra_repr(self) -> str:
        """Show the hyper-parameters in ``print(module)``."""
        return (
            f"teacher_temp={self.start_teacher_temp}->{self.end_teacher_temp} over "
            f"{self.warmup_epochs} epochs, student_temp={self.student_temp}, "
            f"mean_entropy_weight={self.mean_entropy_weight}, num_views={self.num_views}"
        )
