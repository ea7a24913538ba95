"""UPGrad: the average of the gradients, each projected onto the dual cone of all of them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies._gramian_tools import (
    Preference,
    PreferenceSpec,
    SolveOn,
    checked_solve_on,
    finite_or,
    solvable,
)
from lightning_mtl.strategies.base import GramianBatch, GramianWeighting
from lightning_mtl.strategies.host_solvers import nonnegative_qp, solve_on_host
from lightning_mtl.strategies.solvers import solve_nonnegative_qp


class UPGrad(GramianWeighting):
    """Unconflicting projection of gradients: project each gradient onto the dual cone
    ``{x : J x ≥ 0}`` of all of them and combine the projections, ``d = Σ_t p_t π_J(g_t)``.

    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232, 2024
    (torchjd's ``UPGrad``). Every projection lies in the dual cone, so ``d`` does not increase
    any objective to first order; gradients that conflict with none are left alone, so without
    conflict ``d`` is the ``p``-weighted sum (the mean by default), and ``d`` scales with the
    gradients and does not depend on their order.

    The projection of ``Jᵀu`` is ``Jᵀv`` with ``v = argmin_{v ≥ u} vᵀGv`` (Proposition 1 of the
    paper); writing ``v = u + x`` makes it ``min_{x ≥ 0} ½ xᵀGx + (Gu)ᵀx``, and the ``T``
    problems with ``u = p_t e_t`` are solved exactly in float64, on the host by default
    (:func:`~lightning_mtl.strategies.host_solvers.nonnegative_qp`) or on the device in one
    batched call of the shared active-set solver. The weights are ``Σ_t v_t``.

    ``norm_eps`` and ``reg_eps`` are torchjd's: the Gramian is divided by its trace (zeroed when
    the trace is below ``norm_eps``, which leaves the weights at ``p``), then ``reg_eps · I`` is
    added. torchjd defaults both to ``1e-4`` because its QP solver needs a positive-definite
    matrix; the active-set solver here handles semi-definite Gramians, so our defaults are 0: the
    exact projection, independent of the gradients' scale. ``UPGrad(norm_eps=1e-4,
    reg_eps=1e-4)`` solves torchjd's regularised problem.

    Should the solve fail (only a non-finite or overflowing Gramian makes it), the weights fall
    back to ``p``.

    Args:
        pref_vector: the weights ``p`` of the projections, by objective name or in row order;
            ``1/T`` each by default.
        norm_eps: trace below which the Gramian is treated as zero; ``≥ 0``.
        reg_eps: ridge added to the trace-normalised Gramian; ``≥ 0``.
        solve_on: where the problem is solved, ``"host"`` (default: compiled float64 numerics
            after one copy of the Gramian) or ``"device"`` (torch ops, no host read; see
            :data:`~lightning_mtl.strategies.SolveOn`).

    Example::

        >>> import torch
        >>> UPGrad().aggregate(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
        tensor([0.2500, 0.7500])
    """

    def __init__(
        self,
        pref_vector: PreferenceSpec = None,
        norm_eps: float = 0.0,
        reg_eps: float = 0.0,
        solve_on: SolveOn = "host",
    ) -> None:
        for label, value in (("norm_eps", norm_eps), ("reg_eps", reg_eps)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{label} must be finite and >= 0; got {value}.")
        self.pref_vector = Preference(pref_vector, "UPGrad")
        self.norm_eps = float(norm_eps)
        self.reg_eps = float(reg_eps)
        self.solve_on = checked_solve_on(solve_on)

    @override
    def setup(self, names: Sequence[str]) -> None:
        self.pref_vector.check(names)

    @override
    def weights(self, batch: GramianBatch) -> Tensor:
        preference = self.pref_vector.vector(batch.names, batch.gramian).double()
        if self.solve_on == "host":
            conditioned = self._conditioned(batch.gramian.double())
            weights = solve_on_host(_projections, conditioned, columns=(preference,))
            return finite_or(weights, preference).to(batch.gramian.dtype)
        gramian, finite = solvable(self._conditioned(batch.gramian.double()))
        size = len(preference)
        lifts = solve_nonnegative_qp(
            gramian.expand(size, size, size), preference[:, None] * gramian
        )
        weights = preference + lifts.sum(0)
        return finite_or(weights, preference, finite).to(batch.gramian.dtype)

    def _conditioned(self, gramian: Tensor) -> Tensor:
        trace = gramian.diagonal().sum()
        scaled = gramian / trace.clamp_min(torch.finfo(gramian.dtype).tiny)
        normalized = torch.where(trace >= self.norm_eps, scaled, torch.zeros_like(gramian))
        if self.reg_eps == 0:
            return normalized
        return normalized + self.reg_eps * torch.eye(
            len(gramian), dtype=gramian.dtype, device=gramian.device
        )


def _projections(gramian: np.ndarray, preference: np.ndarray) -> np.ndarray:
    """``p + Σ_t x_t`` with ``x_t = argmin_{x ≥ 0} ½ xᵀGx + (G p_t e_t)ᵀx``, on the host."""
    return preference + nonnegative_qp(gramian, preference[:, None] * gramian).sum(0)
