"""GradDrop: masks by hand, the paper's per-coordinate rule with explicit loops, properties, and one
Lightning step on the parameters and on the shared representation."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DATA, TinyModule, grads_of, one_full_batch_step, trunk_reference
from strategy_properties import check_finite, check_scale_equivariance, jacobian
from torch import Tensor

from lightning_mtl.strategies import GradientSurgery, TrainingProgress
from lightning_mtl.strategies.base import step_generator
from lightning_mtl.strategies.graddrop import GradDrop

CPU = torch.device("cpu")


def thresholds(seed: int, step: int, columns: int) -> Tensor:
    """The documented draw: ``torch.rand(D)`` from the step's generator."""
    return torch.rand(columns, generator=step_generator(seed, step, CPU))


def reference_graddrop(rows: Tensor, threshold: Tensor, leak: float = 0.0) -> Tensor:
    """The paper's rule in float64, one coordinate and one objective at a time."""
    rows = rows.double()
    count, columns = rows.shape
    update = torch.zeros(columns, dtype=torch.float64)
    for d in range(columns):
        signed = sum(float(rows[i, d]) for i in range(count))
        absolute = sum(abs(float(rows[i, d])) for i in range(count))
        purity = 0.5 * (1 + signed / absolute) if absolute > 0 else 0.5
        for i in range(count):
            g = float(rows[i, d])
            kept = g > 0 if purity > float(threshold[d]) else g < 0
            update[d] += leak * g + (1 - leak) * (g if kept else 0.0)
    return update


def test_masks_by_hand() -> None:
    rows = torch.tensor([[1.0, -2.0, 3.0, 0.0], [3.0, 2.0, -1.0, 0.0]])
    # Purity per coordinate: 1 (agree), ½ (2 vs −2), ¾ (3 vs −1), none (zeros).
    seen = set()
    for step in range(12):
        u = thresholds(0, step, 4)
        expected = [
            4.0,
            2.0 if u[1] < 0.5 else -2.0,
            3.0 if u[2] < 0.75 else -1.0,
            0.0,
        ]
        seen.add((expected[1], expected[2]))
        direction = GradDrop().aggregate(rows, progress=TrainingProgress(step=step))
        torch.testing.assert_close(direction, torch.tensor(expected))
        # A leak of ½ passes half of every gradient and masks the other half.
        leaky = GradDrop(leak=0.5).aggregate(rows, progress=TrainingProgress(step=step))
        torch.testing.assert_close(leaky, 0.5 * rows.sum(0) + 0.5 * torch.tensor(expected))
    assert len(seen) == 4
    torch.testing.assert_close(GradDrop(leak=1.0).aggregate(rows), rows.sum(0))


@pytest.mark.parametrize("count", [2, 3, 5, 10, 40])
@pytest.mark.parametrize(
    "kind", ["random", "ill_conditioned", "collinear", "duplicated", "with_zero_row"]
)
@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_matches_the_per_coordinate_rule(count: int, kind: str, leak: float) -> None:
    rows = jacobian(count, 48, seed=count + len(kind), kind=kind)
    rows[:, :4] = 0.0  # coordinates where every gradient vanishes
    step = 3 + count
    expected = reference_graddrop(rows, thresholds(5, step, 48), leak)
    direction = GradDrop(leak=leak, seed=5).aggregate(rows, progress=TrainingProgress(step=step))
    torch.testing.assert_close(direction.double(), expected, rtol=1e-5, atol=1e-6)


def test_positive_parts_are_kept_with_probability_purity() -> None:
    columns = 4000
    rows = torch.tensor([[3.0], [1.0], [-1.0]]).expand(3, columns)  # P = 4/5 everywhere
    direction = GradDrop(seed=1).aggregate(rows)
    assert set(direction.unique().tolist()) == {4.0, -1.0}
    fraction = float((direction > 0).double().mean())
    assert abs(fraction - 0.8) < 4 * math.sqrt(0.8 * 0.2 / columns)


@pytest.mark.parametrize("count", [1, 3, 8])
def test_gradients_agreeing_in_sign_are_summed_unchanged(count: int) -> None:
    rows = jacobian(count, 32, seed=count).abs() * torch.randn(32).sign()
    for step in range(3):
        direction = GradDrop().aggregate(rows, progress=TrainingProgress(step=step))
        torch.testing.assert_close(direction, rows.sum(0))


@pytest.mark.parametrize("kind", ["random", "ill_conditioned", "collinear"])
def test_scale_equivariance(kind: str) -> None:
    check_scale_equivariance(GradDrop, jacobian(6, 64, seed=2, kind=kind))


@pytest.mark.parametrize("kind", ["with_zero_row", "duplicated", "collinear"])
def test_finite_on_zero_duplicated_and_collinear_rows(kind: str) -> None:
    check_finite(GradDrop, jacobian(4, 64, seed=3, kind=kind))
    assert torch.equal(GradDrop().aggregate(torch.zeros(3, 5)), torch.zeros(5))


@pytest.mark.parametrize(
    "bad", [(math.inf, 1.0), (-math.inf, 1.0), (math.nan, 1.0), (math.inf, -math.inf)]
)
@pytest.mark.parametrize("leak", [0.0, 0.5])
def test_non_finite_gradients_stay_non_finite(bad: tuple[float, float], leak: float) -> None:
    # Whichever sign the coordinate keeps, the inf or NaN reaches the update.
    rows = jacobian(2, 6, seed=1)
    rows[:, 2] = torch.tensor(bad)
    for step in range(8):
        direction = GradDrop(leak=leak).aggregate(rows, progress=TrainingProgress(step=step))
        assert not torch.isfinite(direction[2])
        assert torch.isfinite(direction[[0, 1, 3, 4, 5]]).all()


def test_same_step_same_update_other_step_other_thresholds() -> None:
    rows = jacobian(4, 64, seed=6)
    at = [TrainingProgress(step=step) for step in (4, 4, 5)]
    first, again, later = (GradDrop(seed=9).aggregate(rows, progress=p) for p in at)
    assert torch.equal(first, again)
    assert not torch.equal(first, later)
    other_seed = GradDrop(seed=10).aggregate(rows, progress=at[0])
    assert not torch.equal(first, other_seed)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"leak must lie in \[0, 1\]"):
        GradDrop(leak=-0.1)
    with pytest.raises(ValueError, match="seed must be an integer"):
        GradDrop(seed=True)
    assert isinstance(GradDrop(), GradientSurgery)  # the engine hands it the Jacobian
    assert repr(GradDrop(leak=0.25, seed=2)) == "GradDrop(leak=0.25, seed=2)"


def test_one_step_through_lightning_on_the_shared_parameters() -> None:
    initial, change = one_full_batch_step(TinyModule(GradDrop(seed=3)))
    _, rows, head_gradient = trunk_reference(initial)
    expected_trunk = reference_graddrop(rows, thresholds(3, 0, rows.shape[1])).float()
    torch.testing.assert_close(change[: len(expected_trunk)], expected_trunk)
    torch.testing.assert_close(change[len(expected_trunk) :], head_gradient)
    assert (expected_trunk - rows.sum(0)).norm() > 0.1 * rows.sum(0).norm()


def test_one_step_through_lightning_on_the_shared_representation() -> None:
    module = TinyModule(GradDrop(seed=3), scope="representation")
    initial, change = one_full_batch_step(module)
    x, y = DATA.tensors
    features = initial.features(x)
    losses = initial.losses(x, y, features)
    rows = torch.stack(
        [
            torch.autograd.grad(losses[name], features, retain_graph=True)[0].reshape(-1)
            for name in ("cls", "rep")
        ]
    )
    dropped = reference_graddrop(rows, thresholds(3, 0, rows.shape[1])).float()
    trunk = list(initial.trunk.parameters())
    expected_trunk = grads_of((features * dropped.view_as(features)).sum(), trunk)
    torch.testing.assert_close(change[: len(expected_trunk)], expected_trunk)
    heads = [*initial.cls_head.parameters(), *initial.rep_head.parameters()]
    torch.testing.assert_close(
        change[len(expected_trunk) :], grads_of(losses["cls"] + losses["rep"], heads)
    )
