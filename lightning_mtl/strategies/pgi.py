"""PGI: Pareto-annealing convex combination of a classification and a representation gradient."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies.base import LossBatch, LossWeighting, TrainingProgress, device_vector


def annealed_alpha(t: float, total: float, alpha_max: float, alpha_min: float) -> float:
    """Eq. 3 of PGI: ``α_t = α_min + ½(α_max − α_min)(1 + cos(π t / T))``, with ``t`` clamped to
    ``[0, T]`` so that α stays at ``α_min`` once the schedule has run out.

    Example::

        >>> annealed_alpha(0, 10, 0.5, 0.3), annealed_alpha(5, 10, 0.5, 0.3)
        (0.5, 0.4)
        >>> annealed_alpha(12, 10, 0.5, 0.3)
        0.3
    """
    if total <= 0:
        return alpha_min
    fraction = min(max(t / total, 0.0), 1.0)
    return alpha_min + 0.5 * (alpha_max - alpha_min) * (1.0 + math.cos(math.pi * fraction))


class PGI(LossWeighting):
    """Pareto-guided gradient interference (PGI), the Pareto-annealing update of §3.2 of
    "PGI: Pareto-Guided Gradient Interference for Generalized Category Discovery" (anonymous,
    under review; "the PGI paper" below).

    The update is ``α_t ∇L_s + (1 − α_t) ∇L_u`` (eq. 2), with ``L_s`` the classification
    objective, ``L_u`` the representation objective and ``α_t`` cosine-annealed from
    ``alpha_max`` to ``alpha_min`` over ``T`` steps or epochs (eq. 3). Being a convex
    combination, it costs one backward pass; no per-objective gradient is computed.

    The schedule counts from the first step on which PGI is used, so that behind
    :class:`~lightning_mtl.callbacks.WarmupThenSwitch` it starts after the warm-up (the PGI paper
    appendix A.2: "PGI is only employed after the warm-up phase"). ``T`` defaults to what is left
    of the Trainer's run at that point.

    The paper gives no ``α_max`` and ``α_min``, only that "α is set to 0.35". Our defaults anneal
    from 0.5 (equal weights) down to the paper's 0.35. ``PGI(alpha=0.35)`` is the paper's
    constant setting. ``L_s`` is the classification loss itself, not ``λ_cls·L_s``: we read the
    paper's eq. 13 weight ``λ_cls`` as that of the plain sum PGI replaces after the warm-up
    (see :class:`~lightning_mtl.tasks.gcd.GCDModule`, whose PGI recipes follow this reading).

    Args:
        supervised: name of the classification objective ``L_s``.
        representation: name of the representation objective ``L_u``.
        alpha_max: α at the start of the schedule, in ``[0, 1]``.
        alpha_min: α at its end, in ``[0, alpha_max]``.
        alpha: a constant α; sets both ends when given.
        unit: count ``t`` and ``T`` in optimizer ``"step"``s or ``"epoch"``s.
        total: ``T``; by default what remains of the run when PGI starts.

    Example::

        >>> import torch
        >>> pgi = PGI(alpha=0.25)
        >>> pgi.aggregate(torch.eye(2), names=["cls", "rep"])
        tensor([0.2500, 0.7500])
    """

    reads_loss_values = False

    state_fields = ("start", "alpha")

    def __init__(
        self,
        supervised: str = "cls",
        representation: str = "rep",
        alpha_max: float = 0.5,
        alpha_min: float = 0.35,
        alpha: float | None = None,
        unit: Literal["step", "epoch"] = "step",
        total: int | None = None,
    ) -> None:
        if alpha is not None:
            alpha_max = alpha_min = alpha
        for label, value in (("alpha_max", alpha_max), ("alpha_min", alpha_min)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{label} must lie in [0, 1]; got {value}.")
        if alpha_min > alpha_max:
            raise ValueError(
                f"alpha_min ({alpha_min}) must not exceed alpha_max ({alpha_max}): "
                "α anneals downwards."
            )
        if unit not in ("step", "epoch"):
            raise ValueError(f"unit must be 'step' or 'epoch'; got {unit!r}.")
        if total is not None and total <= 0:
            raise ValueError(f"total must be a positive number of {unit}s; got {total}.")
        if supervised == representation:
            raise ValueError("supervised and representation must name different objectives.")
        self.supervised = supervised
        self.representation = representation
        self.alpha_max = float(alpha_max)
        self.alpha_min = float(alpha_min)
        self.unit = unit
        self.total = total
        self.start: int | None = None
        self.alpha = self.alpha_max

    @override
    def setup(self, names: Sequence[str]) -> None:
        expected = {self.supervised, self.representation}
        if set(names) != expected or len(names) != 2:
            raise ValueError(
                f"PGI combines exactly two objectives, {self.supervised!r} (classification) and "
                f"{self.representation!r} (representation); got {list(names)}. Combine several "
                "losses into these two with objective groups, or pass PGI(supervised=..., "
                "representation=...)."
            )

    def alpha_at(self, progress: TrainingProgress) -> float:
        """α for this point of training; the first call fixes where the schedule starts."""
        now = progress.step if self.unit == "step" else progress.epoch
        if self.start is None:
            self.start = now
        if self.alpha_max == self.alpha_min:
            return self.alpha_max
        total = self.total
        if total is None:
            run_total = progress.total_steps if self.unit == "step" else progress.total_epochs
            if run_total is None or not math.isfinite(run_total):
                raise ValueError(
                    "PGI's annealing needs the schedule length: set PGI(total=...) or give the "
                    "Trainer max_steps or max_epochs."
                )
            total = run_total - self.start
        return annealed_alpha(now - self.start, total, self.alpha_max, self.alpha_min)

    @override
    def weights(self, batch: LossBatch) -> Tensor:
        self.alpha = self.alpha_at(batch.progress)
        by_name = {self.supervised: self.alpha, self.representation: 1.0 - self.alpha}
        return device_vector([by_name[name] for name in batch.names], batch.losses)

    @override
    def log_values(self) -> dict[str, Tensor | float]:
        return {**super().log_values(), "alpha": self.alpha}
