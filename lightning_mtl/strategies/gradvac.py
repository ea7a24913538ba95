"""GradVac: raise each pair's gradient cosine to a moving-average target, in a random order."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies._gradient_surgery import (
    Visit,
    checked_seed,
    combine,
    others_in_random_order,
    positive_part,
    sequential_surgery,
)
from lightning_mtl.strategies.base import (
    EditedGradients,
    GradientSurgery,
    JacobianBatch,
    step_generator,
)

# The change that reaches a target cosine φ̂ divides by sqrt(1 − φ̂²): a target of exactly ±1
# (which rounding of the moving average reaches after long runs of parallel gradients) cannot be
# reached by a finite change. Targets are capped at cos 0.08°.
_MAX_TARGET = 1.0 - 1e-6


def vaccine_step(visit: Visit, targets: Tensor) -> Tensor:
    """GradVac's rule: when ``φ = cos(g'_i, g_j) < φ̂_ij``, add ``a g_j`` to
    ``g'_i`` with ``a = ‖g'_i‖ (φ̂ √(1 − φ²) − φ √(1 − φ̂²)) / (‖g_j‖ √(1 − φ̂²))``, which turns
    ``g'_i`` in the plane of ``g'_i`` and ``g_j`` until its cosine with ``g_j`` is ``φ̂``.

    Args:
        visit: the round's meetings.
        targets: ``[T, T]`` float64 targets ``φ̂``.
    """
    target = targets.gather(1, visit.others.unsqueeze(1)).squeeze(1)
    target = target.clamp(-_MAX_TARGET, _MAX_TARGET)
    cosine = visit.cosine
    sine = (1.0 - cosine * cosine).clamp_min(0.0).sqrt()
    target_sine = (1.0 - target * target).sqrt()
    other_norm = visit.other_sqnorm.sqrt()
    step = (
        visit.sqnorm.sqrt()
        * (target * sine - cosine * target_sine)
        / (positive_part(other_norm) * target_sine)
    )
    below = (cosine < target) & (other_norm > 0)
    return torch.where(below, step, torch.zeros_like(step))


class GradVac(GradientSurgery):
    """Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and
    Improving Multi-task Optimization in Massively Multilingual Models", ICLR 2021, algorithm 1).

    Each ordered pair of objectives ``(i, j)`` has a target cosine ``φ̂_ij``, an exponential
    moving average of the cosines observed so far, starting at 0. At every step, for each
    objective ``i``, starting from ``g'_i = g_i`` and visiting the other objectives ``j`` in a
    random order: with ``φ_ij = cos(g'_i, g_j)``, if ``φ_ij < φ̂_ij`` then ::

        g'_i ← g'_i + ‖g'_i‖ (φ̂_ij √(1 − φ_ij²) − φ_ij √(1 − φ̂_ij²)) / (‖g_j‖ √(1 − φ̂_ij²)) g_j

    (always against the original ``g_j``); then, changed or not,
    ``φ̂_ij ← (1 − β) φ̂_ij + β φ_ij``. The update is ``Σ_i g'_i``. With every target at 0 this
    is PCGrad, which is what the first step does.

    Choices where the paper leaves room:

    * ``φ_ij`` is the cosine of the *current* ``g'_i`` (already changed by the objectives met
      before ``j`` on this step) with ``g_j``, both for the test and for the moving average, as
      the algorithm box is written (and as LibMTL does); an unchanged gradient gives the plain
      pairwise cosine.
    * The paper applies the rule to each model component (a layer or a parameter matrix)
      separately, with targets of its own; here it applies to the balanced scope as a whole
      (LibMTL's default, ``group_type=0``): a strategy sees one flattened Jacobian, without the
      boundaries between parameters. A narrower scope (one layer) gives that layer's behaviour.
    * The cosine of a zero gradient reads 0. Targets are capped at ``1 − 1e-6`` in magnitude,
      since the change diverges as ``φ̂ → 1``.
    * A step whose gradients hold an inf or a NaN (which the loss scaler skips) returns a
      non-finite update and leaves the targets as they were.

    The paper's default ``β = 1e-2`` (LibMTL defaults to 0.5); ``β = 0`` keeps every target at
    0, i.e. PCGrad. The random orders come from
    :func:`~lightning_mtl.strategies.base.step_generator` seeded with ``seed`` and the optimizer
    step, as in :class:`~lightning_mtl.strategies.pcgrad.PCGrad`; the computation runs on the
    ``[T, T]`` Gramian in float64 in the same way.

    State: the ``[T, T]`` float64 targets (:attr:`targets`, ``None`` before the first step; the
    unused diagonal is 0) and the objective names they belong to, both in :meth:`state_dict`.
    Each call of :meth:`weights`, :meth:`direction` or :meth:`coefficients` is one step: it
    moves the targets.

    Args:
        beta: the moving-average rate ``β`` in ``[0, 1]``.
        seed: the seed of the per-step generator of the random orders.

    Example::

        >>> import torch
        >>> gradvac = GradVac(beta=0.5)
        >>> gradvac.aggregate(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))  # targets 0: PCGrad
        tensor([0.5000, 1.5000])
        >>> gradvac.targets.float()  # ½ · 0 + ½ · cos 135°
        tensor([[ 0.0000, -0.3536],
                [-0.3536,  0.0000]])
    """

    def __init__(self, beta: float = 1e-2, seed: int = 0) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1]; got {beta}.")
        self.beta = float(beta)
        self.seed = checked_seed(seed)
        self.names: tuple[str, ...] | None = None
        self.targets: Tensor | None = None

    @override
    def setup(self, names: Sequence[str]) -> None:
        names = tuple(names)
        if self.targets is not None and names != self.names:
            raise ValueError(
                f"GradVac's targets belong to the objectives {list(self.names or ())}; got "
                f"{list(names)}. Use a new GradVac for other objectives."
            )
        self.names = names

    def coefficients(self, batch: JacobianBatch) -> Tensor:
        """``[T, T]`` float64 ``C``: the changed gradients are ``C @ batch.jacobian``. Moves the
        targets."""
        jacobian = batch.jacobian
        size = batch.num_objectives
        if self.targets is None:
            # Created on the device, not moved there: a host-to-device copy would synchronise.
            targets = torch.zeros(size, size, dtype=torch.float64, device=jacobian.device)
        else:
            # A no-op after the first step; a one-off copy after loading a checkpoint.
            targets = self.targets.to(device=jacobian.device, dtype=torch.float64)
        generator = step_generator(self.seed, batch.progress.step, jacobian.device)
        order = others_in_random_order(size, generator)
        surgery = sequential_surgery(jacobian, order, partial(vaccine_step, targets=targets))
        # Every off-diagonal pair is met once per step; the diagonal stays 0 (its cosines are 0).
        moved = (1.0 - self.beta) * targets + self.beta * surgery.cosines
        # A step with an overflowed gradient is skipped by the loss scaler: it must not leave NaN
        # in the targets for the rest of the run.
        self.targets = torch.where(torch.isfinite(surgery.coefficients).all(), moved, targets)
        self.names = batch.names
        return surgery.coefficients

    def weights(self, batch: JacobianBatch) -> Tensor:
        """``[T]`` weights of the original gradients: the update is ``weights @ jacobian``.
        Moves the targets."""
        return self.coefficients(batch).sum(dim=0).to(batch.jacobian.dtype)

    @override
    def edit(self, batch: JacobianBatch) -> EditedGradients:
        jacobian = batch.jacobian
        coefficients = self.coefficients(batch)
        weights = coefficients.sum(dim=0)
        self.record_weights(batch.names, weights.float())
        return EditedGradients(
            direction=combine(weights, jacobian),
            rows=lambda: coefficients.to(jacobian.dtype) @ jacobian,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        names = list(self.names) if self.names is not None else None
        return {"names": names, "targets": self.targets}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        names = state_dict["names"]
        self.names = tuple(names) if names is not None else None
        self.targets = state_dict["targets"]
