"""PLOT: class-as-task conflict-averse training for long-tailed recognition."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies._gramian_tools import Preference, SolveOn, finite_or, solvable
from lightning_mtl.strategies.base import GramianBatch
from lightning_mtl.strategies.cagrad import (
    CAGrad,
    conflict_averse_multipliers,
    host_conflict_averse_weights,
)
from lightning_mtl.strategies.host_solvers import solve_on_host
from lightning_mtl.strategies.sharpness_aware import SharpnessAware


def class_preference(class_counts: Sequence[int]) -> list[float]:
    """PLOT's class-frequency preference ``b_c ∝ log(n_max / n_c + 0.01)`` (normalised to sum
    to 1): rarer classes weigh more in ``g_b``, the linear term of PLOT's CAGrad problem (the
    authors' ``cls_pre`` preference; see :class:`PLOT`).

    Example::

        >>> [round(b, 4) for b in class_preference([100, 10, 1])]  # ∝ log 1.01, 10.01, 100.01
        [0.0014, 0.3329, 0.6656]
    """
    if not class_counts or any(count <= 0 for count in class_counts):
        raise ValueError(f"class_counts must be positive integers; got {list(class_counts)}.")
    largest = max(class_counts)
    raw = [math.log(largest / count + 0.01) for count in class_counts]
    total = sum(raw)
    return [value / total for value in raw]


class PLOTCAGrad(CAGrad):
    """PLOT's conflict-averse weighting of the class objectives (eq. 5 of the PLOT paper), without
    the sharpness-aware step that :class:`PLOT` adds around it.

    The CAGrad step of the paper (eq. 5 and appendix 6.2) and of the authors' code
    (``utils/pareto.py``): with ``g0`` the *average* of the ``K'`` class gradients of the step,
    solve ``min_{w ∈ Δ} g_wᵀ g_b + c ‖g0‖ ‖g_w‖`` and update along
    ``(g0 + c ‖g0‖ g_w / ‖g_w‖) / (1 + c²)``. ``g_b = Σ_c b_c g_c`` uses the class-frequency
    preference :func:`class_preference`, renormalised over the classes of the step (the code's
    ``cls_pre``; without ``class_counts`` it is uniform, ``g_b = g0``, the paper's formula);
    the preference steers the worst-case correction, not the base term ``g0``. ``scale``
    chooses the size of the result: ``"mean"`` (default) keeps that of the average class
    gradient, as written in the paper; ``"sum"`` multiplies it by ``K'``, as the authors' code
    does "to match the sum loss", which gives it the scale of the base loss's gradient that the
    layers outside the scope get. Since ``L_c = Σ_{i∈c} ℓ_i / B``, ``"mean"`` makes the scope
    learn about ``K'`` times slower than the rest of the model at the same learning rate; the
    recipes use ``"sum"`` (the embedded long-tailed digits are measured both ways in
    ``benchmarks/RESULTS.md``).

    Objective names must be ``f"{prefix}{c}"`` for class ``c``, or ``f"{prefix}{a}+{b}+…"`` for
    an objective pooling several classes (the class sampling of
    :class:`~lightning_mtl.tasks.long_tail.LongTailClassifier`'s ``max_moo_classes``; its preference
    is the sum of theirs). Objectives may cover only the classes present in the batch (absent
    classes have zero gradients, which would pull the min-norm point to zero), so the preference
    is built for the names of each step.

    Args:
        c: CAGrad's radius (0.5 in the authors' configs).
        class_counts: training samples per class, for the preference; uniform when ``None``.
        prefix: the objectives' name prefix.
        rescale: CAGrad's rescaling (1: divide by ``1 + c²``, the authors' choice).
        scale: ``"mean"`` (the paper) or ``"sum"`` (the authors' code: ``K'`` times larger).
        solve_on: where the problem is solved, ``"host"`` (default: compiled float64 numerics
            after one copy of the Gramian) or ``"device"`` (torch ops, no host read; see
            :data:`~lightning_mtl.strategies.SolveOn`).

    Example::

        >>> import torch
        >>> # Orthogonal unit gradients, uniform preference: w = (½, ½), g0 + c‖g0‖ g_w/‖g_w‖
        >>> # = (1 + c) g0 = (0.75, 0.75), divided by 1 + c² = 1.25; "sum" doubles it (K' = 2).
        >>> PLOTCAGrad(scale="sum").aggregate(torch.eye(2), names=["class_0", "class_1"])
        tensor([1.2000, 1.2000])
    """

    def __init__(
        self,
        c: float = 0.5,
        class_counts: Sequence[int] | None = None,
        prefix: str = "class_",
        rescale: Literal[0, 1, 2] = 1,
        scale: Literal["mean", "sum"] = "mean",
        solve_on: SolveOn = "host",
    ) -> None:
        super().__init__(c=c, rescale=rescale, solve_on=solve_on)
        if scale not in ("mean", "sum"):
            raise ValueError(f"scale must be 'mean' or 'sum'; got {scale!r}.")
        self.scale = scale
        self.prefix = prefix
        self._preference_names: tuple[str, ...] | None = None
        self.class_weights = class_preference(class_counts) if class_counts is not None else None

    @property
    def class_weights(self) -> list[float] | None:
        """The class-frequency preference by class index (:func:`class_preference`), or
        ``None`` for uniform; settable (a data module's counts may arrive after construction)."""
        return self._class_weights

    @class_weights.setter
    def class_weights(self, weights: Sequence[float] | None) -> None:
        self._class_weights = None if weights is None else [float(w) for w in weights]
        self._preference_names = None

    @override
    def setup(self, names: Sequence[str]) -> None:
        # Only the last set of names is kept: the classes of a batch rarely repeat on many-class
        # data, so a cache of every set seen would grow for the whole run.
        key = tuple(names)
        if key != self._preference_names:
            self.preference = Preference(self._weights_by_name(key), "PLOT")
            self._preference_names = key

    @override
    def weights(self, batch: GramianBatch) -> Tensor:
        size = batch.gramian.shape[-1]
        preference = self.preference.vector(batch.names, batch.gramian).double()
        preference = preference / preference.sum().clamp_min(torch.finfo(preference.dtype).tiny)
        factor = (size if self.scale == "sum" else 1.0) / self.divisor
        average = torch.full_like(preference, 1.0 / size)
        if self.solve_on == "host":
            solve = functools.partial(host_conflict_averse_weights, c=self.c, average=True)
            weights = solve_on_host(solve, batch.gramian, columns=(preference,)) * factor
            return finite_or(weights, average * factor).to(batch.gramian.dtype)
        gramian, finite = solvable(batch.gramian.double())
        radius = self.c * (average @ gramian @ average).clamp_min(0.0).sqrt()
        # d = Jᵀ(b + λ) is the conflict-averse point of the ball of radius c‖g0‖ around g_b, so
        # Jᵀλ = c ‖g0‖ g_w / ‖g_w‖ with w the minimiser of eq. 5; the update moves g0 by it.
        multipliers = conflict_averse_multipliers(gramian, preference, radius)
        weights = (average + multipliers) * factor
        return finite_or(weights, average * factor, finite).to(batch.gramian.dtype)

    def _weights_by_name(self, names: tuple[str, ...]) -> Mapping[str, float] | None:
        if self.class_weights is None:
            return None
        return {name: sum(self.class_weights[c] for c in self._classes_of(name)) for name in names}

    def _classes_of(self, name: str) -> list[int]:
        """The classes of objective ``name``: ``class_7`` → ``[7]``, a pooled ``class_3+9`` →
        ``[3, 9]``."""
        suffix = name[len(self.prefix) :] if name.startswith(self.prefix) else ""
        parts = suffix.split("+")
        assert self.class_weights is not None
        if not all(p.isdigit() and int(p) < len(self.class_weights) for p in parts):
            raise ValueError(
                f"PLOT objectives must be named {self.prefix!r} + a class index below "
                f"{len(self.class_weights)}, or indices joined by '+' for pooled classes (see "
                f"per_class_objectives); got {name!r}."
            )
        return [int(p) for p in parts]


class PLOT(SharpnessAware):
    """PLOT, from Zhou, Liu, Zhao & Gong, "Pareto Deep Long-Tailed Recognition: A Conflict-Averse
    Solution", ICLR 2024 ("the PLOT paper" below): every class is a task, CAGrad balances the
    per-class gradients of a layer subset (:class:`PLOTCAGrad`), and the step anticipates the
    worst case with a SAM perturbation (:class:`~lightning_mtl.strategies.SharpnessAware`).

    Use with objectives from :func:`~lightning_mtl.per_class_objectives`, a scope naming the
    layers PLOT balances (the paper's appendix: the last stage is best, e.g. ``scope=["layer3"]``
    on ResNet-32), and :class:`~lightning_mtl.callbacks.TemporalMOO` to stop after ``E`` epochs.
    Each step then runs, in the mixin:

    1. the module's ``compute_perturbation_objectives`` (the base method's loss, e.g. on
       mixed-up inputs, plus the weighted variability-collapse loss of
       :mod:`lightning_mtl.tasks.long_tail.variability`, as the authors' code trains the layers
       outside the scope on it; see :class:`~lightning_mtl.tasks.long_tail.LongTailClassifier`);
       its gradient ``g`` trains the parameters outside the scope and sets the perturbation
       ``ε = ρ g_scope / ‖g_scope‖`` of the scope (eq. 3–4);
    2. ``compute_objectives`` at the perturbed weights (per-class objectives ``L_SAM`` on the
       un-mixed labels); :class:`PLOTCAGrad` over their gradients ``g_c`` of the scope (eq. 5);
    3. the perturbation is undone — all of it by default as in the paper; ``keep_perturbation``
       keeps a fraction, as the authors' code does (``perturb_radius``: 1.0 on CIFAR-10-LT at
       imbalance 50 and 100, 0.5 at 200, 0 on CIFAR-100-LT) — and the optimizer steps.

    Args:
        rho: SAM radius ``ρ`` (the paper searches {1e-3, 1e-4, 1e-5}; configs use 1e-4).
        c: CAGrad's radius (0.5 in the authors' configs).
        class_counts: training samples per class, for the preference; uniform when ``None``.
        prefix: the objectives' name prefix.
        keep_perturbation: fraction of ``ε`` left in the weights after the step, in ``[0, 1]``.
        rescale: CAGrad's rescaling (1: divide by ``1 + c²``, the authors' choice).
        scale: ``"mean"`` (the paper) or ``"sum"`` (the authors' code: ``K'`` times larger).
        solve_on: where :class:`PLOTCAGrad` solves its problem (see
            :data:`~lightning_mtl.strategies.SolveOn`).

    Example::

        >>> import torch
        >>> plot = PLOT(class_counts=[100, 10, 1])
        >>> plot.rho, plot.keep
        (0.0001, 0.0)
        >>> plot.aggregate(torch.eye(2), names=["class_0", "class_2"]).shape
        torch.Size([2])
        >>> PLOT(scale="sum").aggregate(torch.eye(2), names=["class_0", "class_1"])
        tensor([1.2000, 1.2000])
    """

    inner: PLOTCAGrad

    def __init__(
        self,
        rho: float = 1e-4,
        c: float = 0.5,
        class_counts: Sequence[int] | None = None,
        prefix: str = "class_",
        keep_perturbation: float = 0.0,
        rescale: Literal[0, 1, 2] = 1,
        scale: Literal["mean", "sum"] = "mean",
        solve_on: SolveOn = "host",
    ) -> None:
        super().__init__(
            PLOTCAGrad(
                c=c,
                class_counts=class_counts,
                prefix=prefix,
                rescale=rescale,
                scale=scale,
                solve_on=solve_on,
            ),
            rho=rho,
            keep=keep_perturbation,
        )

    @property
    def class_weights(self) -> list[float] | None:
        """The class-frequency preference of :class:`PLOTCAGrad` (settable)."""
        return self.inner.class_weights

    @class_weights.setter
    def class_weights(self, weights: Sequence[float] | None) -> None:
        self.inner.class_weights = weights
