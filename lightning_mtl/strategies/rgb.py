"""RGB: rotate each normalised task gradient toward an EMA consensus direction."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from typing_extensions import override

from lightning_mtl.strategies.base import (
    EditedGradients,
    GradientSurgery,
    JacobianBatch,
    gramian_of,
)


class RGB(GradientSurgery):
    """Rotation-based gradient balancing (RGB), Algorithm 1 of "Preserving Gradient Harmony: A
    Rotation-Based Gradient Balancing for Multi-Task Conflict Remedy" (anonymous, under review;
    "the RGB paper" below).

    Each task gradient is normalised (``ḡ_i = g_i / (‖g_i‖ + ε)``); their mean ``y`` updates an
    EMA direction ``d_t = μ d_{t−1} + (1 − μ) y / (‖y‖ + ε)``; each ``ḡ_i`` is rotated in the
    plane of ``ḡ_i`` and ``w_i`` (the unit component of ``d_t`` orthogonal to ``ḡ_i``) by an
    angle ``α_i ∈ [0, π/2]``, ``r_i(α_i) = cos α_i ḡ_i + sin α_i w_i``; the angles minimise
    eq. 1, ``conflict + λ · proximity``, over ``alpha_steps`` inner steps started at 0, every
    ``update_interval`` steps (no rotation in between); the update is the mean of the
    renormalised ``r_i``.

    Every quantity of eq. 1 is an inner product between the ``ḡ_i`` and ``d_t``, so the inner
    optimisation runs on a ``(T + 1) × (T + 1)`` Gram matrix, vectorised over all tasks, on the
    device and without host synchronisation; the ``D``-dimensional work per step is one Gramian
    and three matrix-vector products. The final direction is ``Jᵀa + b d_t``.

    **Parameter space only.** ``d_t`` is defined in parameter space (Algorithm 1): coordinate
    ``k`` of ``d_{t−1}`` and of ``y`` is the same parameter at every step. With
    ``scope="representation"`` the rows would be gradients with respect to a batch of features,
    whose coordinates belong to different images at every step, so the EMA would average
    unrelated quantities; ``configure_balancing`` refuses that combination
    (:attr:`~lightning_mtl.strategies.GradientBalancingStrategy.needs_parameter_scope`).

    Choices where the paper is silent (it says only that the angles are found by "stochastic-
    gradient descent"):

    * The inner objective is deterministic given the gradients, so the inner optimiser is plain
      projected gradient descent, with exact gradients derived by hand, onto ``[0, π/2]``. Each
      angle's gradient is of order ``1/T`` (each angle enters ``T − 1`` of the ``T(T−1)/2``
      averaged pairs), so the step is ``alpha_lr · T`` times the gradient: the same
      ``alpha_lr`` then moves angles alike whatever ``T``. ``α_steps`` bounds the freedom of the
      search, as the paper discusses (more steps, more correction).
    * ``d_0 = 0``, so ``d_1`` is ``(1 − μ)`` times the first mean direction (only its direction
      matters: ``w_i`` is normalised).
    * The adaptive rule (eq. 2) needs the previous step's losses, so it starts on the second
      step (the first uses ``alpha_max`` steps). It sets a per-step count without host
      synchronisation by always running ``alpha_max`` inner steps and freezing the angles after
      ``α_steps^t`` of them.
    * Defaults: ``μ = 0.9`` (appendix A.11, best of its sweep), ``λ = 1``, ``α_steps = 5``
      (table 1 uses 5 with λ = 0, table 3 uses 50 with λ = 1), ``update_interval = 1``,
      adaptive bounds ``α_min = 5``, ``α_max = 50`` and ``k_std = 0.05`` (not published).

    Args:
        momentum: EMA momentum ``μ`` in ``[0, 1)``.
        proximity_weight: ``λ ≥ 0``.
        alpha_steps: inner steps (ignored when ``adaptive``).
        alpha_lr: inner step size (scaled by ``T``, see above).
        update_interval: rotate every this many optimizer steps.
        adaptive: choose the inner steps by eq. 2 from the per-task relative loss changes.
        alpha_min: fewest adaptive inner steps.
        alpha_max: most adaptive inner steps.
        k_std: sensitivity of the adaptive rule, ``> 0``.
        eps: ``ε`` of the normalisations.

    Example::

        >>> import torch
        >>> rgb = RGB(alpha_steps=0)  # no rotation: the mean of the unit gradients
        >>> rgb.aggregate(torch.tensor([[2.0, 0.0], [0.0, 5.0]]))
        tensor([0.5000, 0.5000])
    """

    needs_parameter_scope = True

    state_fields = ("ema_direction", "previous_losses")

    def __init__(
        self,
        momentum: float = 0.9,
        proximity_weight: float = 1.0,
        alpha_steps: int = 5,
        alpha_lr: float = 0.5,
        update_interval: int = 1,
        adaptive: bool = False,
        alpha_min: int = 5,
        alpha_max: int = 50,
        k_std: float = 0.05,
        eps: float = 1e-8,
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1); got {momentum}.")
        if proximity_weight < 0:
            raise ValueError(f"proximity_weight must be non-negative; got {proximity_weight}.")
        if alpha_steps < 0:
            raise ValueError(f"alpha_steps must be non-negative; got {alpha_steps}.")
        if alpha_lr <= 0:
            raise ValueError(f"alpha_lr must be positive; got {alpha_lr}.")
        if update_interval < 1:
            raise ValueError(f"update_interval must be a positive integer; got {update_interval}.")
        if not 0 <= alpha_min <= alpha_max:
            raise ValueError(f"need 0 <= alpha_min <= alpha_max; got {alpha_min}, {alpha_max}.")
        if k_std <= 0:
            raise ValueError(f"k_std must be positive; got {k_std}.")
        if eps <= 0:
            raise ValueError(f"eps must be positive; got {eps}.")
        self.momentum = momentum
        self.proximity_weight = proximity_weight
        self.alpha_steps = alpha_steps
        self.alpha_lr = alpha_lr
        self.update_interval = update_interval
        self.adaptive = adaptive
        self.alpha_min = alpha_min
        self.alpha_max = alpha_max
        self.k_std = k_std
        self.eps = eps
        self.reads_loss_values = adaptive
        self.ema_direction: Tensor | None = None
        self.previous_losses: Tensor | None = None
        self.angles: Tensor | None = None

    @override
    def setup(self, names: Sequence[str]) -> None:
        if len(names) < 2:
            raise ValueError(f"RGB balances at least two objectives; got {list(names)}.")

    @override
    def edit(self, batch: JacobianBatch) -> EditedGradients:
        jacobian = batch.jacobian
        gramian = gramian_of(jacobian)
        inverse = 1.0 / (gramian.diagonal().clamp_min(0).sqrt() + self.eps)
        unit_gramian = gramian * inverse[:, None] * inverse[None, :]
        count = jacobian.shape[0]
        mean = (inverse / count).to(jacobian.dtype) @ jacobian
        previous = self.ema_direction
        if previous is None or previous.shape != mean.shape or previous.device != mean.device:
            previous = torch.zeros_like(mean)
        ema = self.momentum * previous + (1 - self.momentum) * mean / (mean.norm() + self.eps)
        self.ema_direction = ema
        rotate = batch.progress.step % self.update_interval == 0
        steps = self._inner_steps(batch.losses) if rotate else None
        geometry = _Geometry.build(unit_gramian, (jacobian @ ema) * inverse, ema @ ema, self.eps)
        angles = torch.zeros(count, dtype=unit_gramian.dtype, device=unit_gramian.device)
        if steps is not None:
            angles = self._optimise_angles(geometry, angles, steps)
        self.angles = angles
        a, b = geometry.rotated_coefficients(angles)
        lengths = geometry.lengths(a, b)
        a, b = a / (lengths + self.eps), b / (lengths + self.eps)
        row_weights = (a * inverse / count).to(jacobian.dtype)
        return EditedGradients(
            direction=row_weights @ jacobian + (b.sum() / count).to(jacobian.dtype) * ema,
            rows=lambda: (
                (a * inverse).to(jacobian.dtype)[:, None] * jacobian
                + b.to(jacobian.dtype)[:, None] * ema
            ),
        )

    def _inner_steps(self, losses: Tensor) -> tuple[int, Tensor | None]:
        """The inner-step budget: a fixed count, or ``alpha_max`` with a device-side cut-off."""
        if not self.adaptive:
            return self.alpha_steps, None
        previous, self.previous_losses = self.previous_losses, losses.detach().double()
        if previous is None or previous.shape != losses.shape:
            return self.alpha_max, None
        change = (self.previous_losses - previous) / (previous + self.eps)
        spread = change.std(unbiased=False)
        cutoff = self.alpha_min + (self.alpha_max - self.alpha_min) * spread / (spread + self.k_std)
        return self.alpha_max, cutoff.round()

    def _optimise_angles(
        self, geometry: _Geometry, angles: Tensor, steps: tuple[int, Tensor | None]
    ) -> Tensor:
        count, cutoff = steps
        size = angles.shape[0]
        rate = self.alpha_lr * size
        for iteration in range(count):
            gradient = geometry.objective_gradient(angles, self.proximity_weight)
            candidate = (angles - rate * gradient).clamp(0.0, math.pi / 2)
            if cutoff is None:
                angles = candidate
            else:
                angles = torch.where(cutoff > iteration, candidate, angles)
        return angles

    def objective(self, geometry: _Geometry, angles: Tensor) -> Tensor:
        """Eq. 1 at ``angles`` (for diagnostics and tests)."""
        return geometry.objective(angles, self.proximity_weight)

    @override
    def log_values(self) -> dict[str, Tensor | float]:
        if self.angles is None:
            return {}
        return {"mean_angle_deg": torch.rad2deg(self.angles.mean())}


class _Geometry:
    """Inner products of the unit gradients ``ḡ_i`` and the EMA direction ``d``.

    A rotated gradient is ``r_i = A_i ḡ_i + B_i d`` with ``A_i = cos α_i − sin α_i c_i / m_i`` and
    ``B_i = sin α_i / m_i``, where ``c_i = ḡ_iᵀd`` and ``m_i = ‖d − c_i ḡ_i‖ + ε``; everything in
    eq. 1 follows from ``Ĝ = (ḡ_iᵀḡ_j)``, ``c`` and ``‖d‖²``. Computed in float64.
    """

    def __init__(self, unit_gramian: Tensor, along: Tensor, ema_sq: Tensor, eps: float) -> None:
        self.unit_gramian = unit_gramian
        self.along = along
        self.ema_sq = ema_sq
        self.squared = unit_gramian.diagonal()
        residual = (ema_sq - 2 * along**2 + along**2 * self.squared).clamp_min(0.0)
        self.orthogonal = residual.sqrt() + eps

    @classmethod
    def build(cls, unit_gramian: Tensor, along: Tensor, ema_sq: Tensor, eps: float) -> _Geometry:
        return cls(unit_gramian.double(), along.double(), ema_sq.double(), eps)

    def rotated_coefficients(self, angles: Tensor) -> tuple[Tensor, Tensor]:
        sin, cos = angles.sin(), angles.cos()
        return cos - sin * self.along / self.orthogonal, sin / self.orthogonal

    def lengths(self, a: Tensor, b: Tensor) -> Tensor:
        return (
            (a * a * self.squared + 2 * a * b * self.along + b * b * self.ema_sq)
            .clamp_min(0)
            .sqrt()
        )

    def objective(self, angles: Tensor, proximity_weight: float) -> Tensor:
        a, b = self.rotated_coefficients(angles)
        size = a.shape[0]
        total_sq = (
            a @ self.unit_gramian @ a + 2 * b.sum() * (a @ self.along) + b.sum() ** 2 * self.ema_sq
        )
        each_sq = a * a * self.squared + 2 * a * b * self.along + b * b * self.ema_sq
        pair_sum = 0.5 * (total_sq - each_sq.sum())
        conflict = (size * (size - 1) / 2 - pair_sum) / (size * (size - 1))
        shifted = a - 1
        proximity = shifted**2 * self.squared + 2 * shifted * b * self.along + b * b * self.ema_sq
        return conflict + proximity_weight * proximity.sum() / (4 * size)

    def objective_gradient(self, angles: Tensor, proximity_weight: float) -> Tensor:
        sin, cos = angles.sin(), angles.cos()
        a, b = self.rotated_coefficients(angles)
        da = -sin - cos * self.along / self.orthogonal
        db = cos / self.orthogonal
        size = a.shape[0]
        b_total = b.sum()
        # Sᵀḡ_i and Sᵀd for the sum S = Σ r_j.
        s_dot_unit = self.unit_gramian @ a + b_total * self.along
        s_dot_ema = a @ self.along + b_total * self.ema_sq
        d_total_sq = 2 * (da * s_dot_unit + db * s_dot_ema)
        d_each_sq = 2 * (
            a * da * self.squared + (da * b + a * db) * self.along + b * db * self.ema_sq
        )
        d_conflict = -0.5 * (d_total_sq - d_each_sq) / (size * (size - 1))
        shifted = a - 1
        d_proximity = 2 * (
            shifted * da * self.squared
            + (da * b + shifted * db) * self.along
            + b * db * self.ema_sq
        )
        return d_conflict + proximity_weight * d_proximity / (4 * size)
