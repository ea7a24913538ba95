"""RGB: the Gram-matrix formulation against a direct implementation of Algorithm 1."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import DATA, TinyModule, flat_params, make_trainer
from strategy_properties import check_finite, jacobian
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_mtl.strategies import TrainingProgress
from lightning_mtl.strategies.rgb import RGB, _Geometry


def reference_rgb(
    rows: Tensor,
    ema: Tensor,
    momentum: float,
    lam: float,
    steps: int,
    lr: float,
    eps: float = 1e-8,
    rotate: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Algorithm 1 with explicit D-dimensional vectors, a Python loop over pairs, and autograd
    for the inner gradient (float64). Returns the direction, the new EMA and the angles."""
    rows = rows.double()
    count = len(rows)
    units = [row / (row.norm() + eps) for row in rows]
    y = sum(units) / count
    ema = momentum * ema.double() + (1 - momentum) * y / (y.norm() + eps)
    orth = []
    for unit in units:
        residual = ema - (unit @ ema) * unit
        orth.append(residual / (residual.norm() + eps))

    def rotated(angles: Tensor) -> list[Tensor]:
        return [
            torch.cos(a) * u + torch.sin(a) * w for a, u, w in zip(angles, units, orth, strict=True)
        ]

    def objective(angles: Tensor) -> Tensor:
        r = rotated(angles)
        conflict = sum(1 - r[i] @ r[j] for i in range(count) for j in range(i + 1, count)) / (
            count * (count - 1)
        )
        proximity = sum(((r[i] - units[i]) ** 2).sum() for i in range(count)) / (4 * count)
        return conflict + lam * proximity

    angles = torch.zeros(count, dtype=torch.float64)
    for _ in range(steps if rotate else 0):
        leaf = angles.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(leaf), leaf)
        angles = (angles - lr * count * grad).clamp(0, math.pi / 2)
    final = [r / (r.norm() + eps) for r in rotated(angles)] if rotate else units
    reference_rgb.rotated = torch.stack(final)  # type: ignore[attr-defined]
    return sum(final) / count, ema, angles


@pytest.mark.parametrize("count", [2, 3, 10, 40])
@pytest.mark.parametrize("kind", ["random", "collinear", "ill_conditioned"])
def test_direction_matches_algorithm_1_over_several_steps(count: int, kind: str) -> None:
    steps, lam, lr, mu = 7, 0.5, 0.3, 0.8
    rgb = RGB(momentum=mu, proximity_weight=lam, alpha_steps=steps, alpha_lr=lr)
    ema = torch.zeros(48, dtype=torch.float64)
    for step in range(3):
        rows = jacobian(count, 48, seed=step, kind=kind)
        expected, ema, angles = reference_rgb(rows, ema, mu, lam, steps, lr)
        direction = rgb.aggregate(rows, progress=TrainingProgress(step=step))
        # The Gram-matrix route works from a float32 Gramian: compare in norm, relative 1e-4.
        error = (direction.double() - expected).norm() / expected.norm()
        assert error < 1e-4, f"relative error {float(error):.2e}"
        torch.testing.assert_close(rgb.angles, angles, rtol=1e-3, atol=1e-3)  # radians
        torch.testing.assert_close(rgb.ema_direction.double(), ema, rtol=1e-5, atol=1e-7)


def test_no_rotation_between_update_intervals() -> None:
    rgb = RGB(alpha_steps=10, update_interval=3)
    rows = jacobian(4, 16, seed=2)
    rgb.aggregate(rows, progress=TrainingProgress(step=0))
    direction = rgb.aggregate(rows, progress=TrainingProgress(step=1))
    units = rows / rows.norm(dim=1, keepdim=True)
    torch.testing.assert_close(direction, units.mean(0), rtol=1e-5, atol=1e-7)
    assert torch.all(rgb.angles == 0)


def _geometry(rows: Tensor, ema: Tensor) -> tuple[_Geometry, Tensor, Tensor]:
    units = rows.double() / rows.double().norm(dim=1, keepdim=True)
    geometry = _Geometry.build(units @ units.T, units @ ema, ema @ ema, 1e-12)
    return geometry, units, ema


def test_rotation_operator_properties() -> None:
    rows = jacobian(3, 8, seed=5)
    geometry, units, ema = _geometry(rows, torch.randn(8, dtype=torch.float64))
    for angle in (0.0, 0.3, 1.0, math.pi / 2):
        angles = torch.full((3,), angle, dtype=torch.float64)
        a, b = geometry.rotated_coefficients(angles)
        rotated = a[:, None] * units + b[:, None] * ema
        torch.testing.assert_close(rotated.norm(dim=1), torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(geometry.lengths(a, b), torch.ones(3, dtype=torch.float64))
        if angle == 0.0:
            torch.testing.assert_close(rotated, units)
        if angle == math.pi / 2:
            # r(π/2) = w: unit, orthogonal to ḡ, in the plane of ḡ and d, on d's side.
            torch.testing.assert_close(
                (rotated * units).sum(1), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0
            )
            assert torch.all(rotated @ ema > 0)


def test_inner_steps_lower_equation_1_and_keep_angles_in_range() -> None:
    rows = jacobian(6, 32, seed=7)
    rows[1] = -rows[0] + 0.1 * rows[1]  # a strong conflict
    for lam in (0.0, 1.0):
        values = []
        for steps in (0, 1, 5, 30):
            rgb = RGB(momentum=0.0, proximity_weight=lam, alpha_steps=steps)
            rgb.aggregate(rows)
            geometry, _, _ = _geometry(rows, rgb.ema_direction.double())
            values.append(float(rgb.objective(geometry, rgb.angles)))
            assert torch.all((rgb.angles >= 0) & (rgb.angles <= math.pi / 2))
        assert values == sorted(values, reverse=True) and values[-1] < values[0]


def test_adaptive_steps_follow_equation_2() -> None:
    rows = jacobian(4, 32, seed=9)
    fixed = {steps: RGB(momentum=0.5, alpha_steps=steps, alpha_lr=0.05) for steps in range(5, 51)}
    adaptive = RGB(
        momentum=0.5, adaptive=True, alpha_min=5, alpha_max=50, k_std=0.05, alpha_lr=0.05
    )
    first, second = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.5, 2.0, 3.3, 4.0])
    adaptive.aggregate(rows, losses=first)
    direction = adaptive.aggregate(rows, losses=second, progress=TrainingProgress(step=1))
    change = (second - first) / first
    spread = float(change.double().std(unbiased=False))
    steps = round(5 + 45 * spread / (spread + 0.05))
    reference = fixed[steps]
    reference.aggregate(rows)
    torch.testing.assert_close(
        direction, reference.aggregate(rows, progress=TrainingProgress(step=1))
    )


def test_finite_on_degenerate_gradients_and_state_round_trip() -> None:
    for kind in ("duplicated", "with_zero_row", "collinear"):
        check_finite(lambda: RGB(alpha_steps=20), jacobian(5, 16, kind=kind))
    rgb = RGB(adaptive=True)
    rows = jacobian(3, 16, seed=1)
    rgb.aggregate(rows, losses=torch.tensor([1.0, 2.0, 3.0]))
    restored = RGB(adaptive=True)
    restored.load_state_dict(copy.deepcopy(rgb.state_dict()))
    later = jacobian(3, 16, seed=2)
    losses = torch.tensor([0.9, 2.1, 2.5])
    progress = TrainingProgress(step=1)
    torch.testing.assert_close(
        restored.aggregate(later, losses=losses, progress=progress),
        rgb.aggregate(later, losses=losses, progress=progress),
    )


def test_rgb_argument_checks() -> None:
    for kwargs, message in [
        ({"momentum": 1.0}, "momentum"),
        ({"proximity_weight": -1}, "proximity_weight"),
        ({"alpha_steps": -1}, "alpha_steps"),
        ({"update_interval": 0}, "update_interval"),
        ({"alpha_min": 10, "alpha_max": 5}, "alpha_min"),
        ({"k_std": 0}, "k_std"),
    ]:
        with pytest.raises(ValueError, match=message):
            RGB(**kwargs)
    with pytest.raises(ValueError, match="at least two objectives"):
        RGB().aggregate(torch.ones(1, 3))


def test_rgb_step_through_lightning_matches_algorithm_1() -> None:
    module = TinyModule(RGB(alpha_steps=5, proximity_weight=1.0))
    initial = copy.deepcopy(module.net)
    make_trainer(max_steps=1).fit(module, DataLoader(DATA, batch_size=32))
    losses = initial.losses(*DATA.tensors)
    trunk = list(initial.trunk.parameters())
    rows = torch.stack(
        [
            torch.cat(
                [g.reshape(-1) for g in torch.autograd.grad(losses[name], trunk, retain_graph=True)]
            )
            for name in ("cls", "rep")
        ]
    )
    expected, _, _ = reference_rgb(rows, torch.zeros(rows.shape[1]), 0.9, 1.0, 5, 0.5)
    change = flat_params(initial) - flat_params(module.net)
    torch.testing.assert_close(change[: rows.shape[1]].double(), expected, rtol=1e-4, atol=1e-6)


def test_two_task_toy_reaches_the_pareto_front() -> None:
    # f1 = ‖x − a‖², f2 = ‖x − b‖²: the Pareto set is the segment [a, b]; its front is
    # (t² ‖a − b‖², (1 − t)² ‖a − b‖²). Start far off the segment, with conflicting gradients.
    a, b = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 0.0])
    x = torch.tensor([3.0, 4.0])
    rgb = RGB(alpha_steps=10, proximity_weight=1.0)
    for step in range(500):
        rows = torch.stack([2 * (x - a), 2 * (x - b)])
        # The update has unit scale, so convergence needs Robbins-Monro step sizes (A.6, A3).
        rate = 1.0 / (step + 4)
        x = x - rate * rgb.aggregate(rows, progress=TrainingProgress(step=step))
    losses = torch.stack([((x - a) ** 2).sum(), ((x - b) ** 2).sum()])
    t = torch.linspace(0, 1, 2001)
    front = torch.stack([t**2 * 4, (1 - t) ** 2 * 4], dim=1)
    dominated_by = (front <= losses - 1e-3).all(dim=1)
    assert not dominated_by.any(), f"losses {losses.tolist()} are dominated by the front"
    assert abs(float(x[1])) < 0.05  # on the segment between the two minimisers
