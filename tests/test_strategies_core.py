"""LinearScalarization and PGI: values by hand, schedule, state, argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_mtl.strategies import PGI, LinearScalarization, TrainingProgress
from lightning_mtl.strategies.pgi import annealed_alpha


def test_linear_scalarization_weights_rows() -> None:
    jacobian = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    strategy = LinearScalarization({"b": 2.0}, default_weight=0.5)
    direction = strategy.aggregate(jacobian, names=["a", "b", "c"])
    torch.testing.assert_close(direction, 0.5 * jacobian[0] + 2.0 * jacobian[1] + 0.5 * jacobian[2])
    with pytest.raises(ValueError, match="unknown objectives"):
        strategy.aggregate(jacobian, names=["x", "y", "z"])
    with pytest.raises(ValueError, match="finite"):
        LinearScalarization({"a": float("nan")})


@pytest.mark.parametrize(("t", "total"), [(0, 10), (3, 10), (10, 10), (25, 10), (7, 7)])
def test_annealed_alpha_is_equation_3(t: int, total: int) -> None:
    alpha_max, alpha_min = 0.9, 0.2
    fraction = min(t, total) / total
    expected = alpha_min + 0.5 * (alpha_max - alpha_min) * (1 + math.cos(math.pi * fraction))
    assert annealed_alpha(t, total, alpha_max, alpha_min) == pytest.approx(expected)


def test_pgi_update_is_the_convex_combination() -> None:
    g_s, g_u = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-1.0, 1.0, 3.0])
    jacobian = torch.stack([g_u, g_s])  # row order follows the names, not the roles
    pgi = PGI(supervised="s", representation="u", alpha_max=0.8, alpha_min=0.2, total=8)
    for step in range(10):
        alpha = 0.2 + 0.3 * (1 + math.cos(math.pi * min(step, 8) / 8))
        direction = pgi.aggregate(jacobian, names=["u", "s"], progress=TrainingProgress(step=step))
        torch.testing.assert_close(direction, alpha * g_s + (1 - alpha) * g_u)


def test_pgi_counts_from_its_first_step_and_defaults_to_the_remaining_run() -> None:
    pgi = PGI(alpha_max=1.0, alpha_min=0.0)
    start = TrainingProgress(step=40, total_steps=140)
    assert pgi.alpha_at(start) == 1.0
    assert pgi.alpha_at(TrainingProgress(step=90, total_steps=140)) == pytest.approx(0.5)
    assert pgi.alpha_at(TrainingProgress(step=140, total_steps=140)) == pytest.approx(0.0)
    restored = PGI(alpha_max=1.0, alpha_min=0.0)
    restored.load_state_dict(pgi.state_dict())
    assert restored.alpha_at(TrainingProgress(step=90, total_steps=140)) == pytest.approx(0.5)


def test_pgi_in_epochs() -> None:
    pgi = PGI(alpha_max=0.6, alpha_min=0.2, unit="epoch")
    assert pgi.alpha_at(TrainingProgress(step=0, epoch=0, total_epochs=4)) == pytest.approx(0.6)
    assert pgi.alpha_at(TrainingProgress(step=999, epoch=2, total_epochs=4)) == pytest.approx(0.4)


def test_pgi_constant_alpha_and_logging() -> None:
    pgi = PGI(alpha=0.35)
    jacobian = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(
        pgi.aggregate(jacobian, names=["cls", "rep"]), torch.tensor([0.7, 1.3])
    )
    assert pgi.log_values() == {
        "alpha": 0.35,
        "weight/cls": torch.tensor(0.35),
        "weight/rep": torch.tensor(0.65),
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha_max": 1.5}, r"alpha_max must lie in \[0, 1\]"),
        ({"alpha_min": -0.1}, r"alpha_min must lie in \[0, 1\]"),
        ({"alpha": 2.0}, r"must lie in \[0, 1\]"),
        ({"alpha_max": 0.3, "alpha_min": 0.5}, "must not exceed alpha_max"),
        ({"unit": "batch"}, "unit must be"),
        ({"total": 0}, "total must be a positive"),
        ({"supervised": "a", "representation": "a"}, "different objectives"),
    ],
)
def test_pgi_rejects_bad_hyper_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PGI(**kwargs)


def test_pgi_needs_its_two_objectives_and_a_schedule_length() -> None:
    with pytest.raises(ValueError, match="exactly two objectives"):
        PGI().aggregate(torch.eye(3), names=["cls", "rep", "other"])
    with pytest.raises(ValueError, match="exactly two objectives"):
        PGI().aggregate(torch.eye(2), names=["cls", "aux"])
    with pytest.raises(ValueError, match="schedule length"):
        PGI().aggregate(torch.eye(2), names=["cls", "rep"])


def test_aggregate_checks_its_input() -> None:
    with pytest.raises(ValueError, match=r"shape \[T, D\]"):
        LinearScalarization().aggregate(torch.ones(3))
    with pytest.raises(ValueError, match="no rows"):
        LinearScalarization().aggregate(torch.ones(0, 3))
    with pytest.raises(ValueError, match="2 names for 3"):
        LinearScalarization().aggregate(torch.ones(3, 2), names=["a", "b"])
