"""Equilibrium (MER) diagnostics: eq. 3-6 of RGB's appendix A.8, and the monitor callback."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import DATA, TinyModule, UnitRowMean, grads_of, make_trainer
from strategy_properties import jacobian
from test_strategy_rgb import reference_rgb
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_mtl.callbacks import EquilibriumMonitor
from lightning_mtl.engine.geometry import equilibrium_terms
from lightning_mtl.strategies import (
    RGB,
    EditedGradients,
    GradDrop,
    GradientSurgery,
    GradVac,
    JacobianBatch,
    PCGrad,
)


def test_equilibrium_terms_of_two_gradients_rotated_by_hand() -> None:
    # Orthogonal gradients (norms 2 and 3), each rotated 15° toward the other (norms 5 and 0.5,
    # which no term may see): the rotated pair is 60° apart, so by eq. 3 conflict is
    # (1 − cos 60°) / 2; by eq. 4 each moved a unit vector by 15°, ‖r − ḡ‖² = 2 − 2 cos 15°;
    # their cosine matrix [[1, ½], [½, 1]] has eigenvalues 3/2 and 1/2 (eq. 5: κ = 3).
    original = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    cos, sin = math.cos(math.radians(15)), math.sin(math.radians(15))
    adjusted = torch.tensor([[5 * cos, 5 * sin, 0.0], [0.5 * sin, 0.5 * cos, 0.0]])
    terms = {name: float(value) for name, value in equilibrium_terms(original, adjusted).items()}
    conflict, proximity, condition = 0.25, (1 - cos) / 2, 3.0
    assert terms["conflict"] == pytest.approx(conflict, rel=1e-6)
    assert terms["proximity"] == pytest.approx(proximity, rel=1e-5)
    assert terms["condition_number"] == pytest.approx(condition, rel=1e-6)
    balance = math.sqrt(1 / (1 + conflict) / (1 + proximity) / (1 + condition))  # eq. 6
    assert terms["balance"] == pytest.approx(balance, rel=1e-6)


def test_equilibrium_terms_of_three_gradients_at_sixty_degrees() -> None:
    # Unit rows (1,1,0)/√2, (1,0,1)/√2, (0,1,1)/√2: every pair at cos ½, so conflict is ¼; the
    # cosine matrix I + ½(11ᵀ − I) has eigenvalues 1 + 2·½ = 2 and 1 − ½ (twice): κ = 4;
    # unchanged rows have proximity 0, and the balance is √(1/1.25 · 1 · 1/5) = 0.4.
    rows = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]) * 7.0
    terms = {name: float(value) for name, value in equilibrium_terms(rows, rows).items()}
    expected = {"conflict": 0.25, "proximity": 0.0, "condition_number": 4.0, "balance": 0.4}
    assert terms == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="T >= 2"):
        equilibrium_terms(rows[:1], rows[:1])


def _edit(strategy: GradientSurgery, rows: Tensor) -> EditedGradients:
    batch = JacobianBatch(
        names=tuple(str(i) for i in range(len(rows))), losses=torch.ones(len(rows)), jacobian=rows
    )
    strategy.setup(batch.names)
    return strategy.edit(batch)


def test_rgb_reports_its_rotated_gradients_when_asked() -> None:
    rows = jacobian(4, 24, seed=3)
    result = _edit(RGB(alpha_steps=6, momentum=0.5), rows)
    reference_rgb(rows, torch.zeros(24), 0.5, 1.0, 6, 0.5)
    rotated = reference_rgb.rotated  # type: ignore[attr-defined]
    torch.testing.assert_close(result.rows().double(), rotated, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.direction, result.rows().mean(0))


@pytest.mark.parametrize("make", [lambda: RGB(alpha_steps=5), UnitRowMean], ids=["rgb", "unedited"])
def test_monitor_logs_the_diagnostics_of_the_step(make) -> None:
    module = TinyModule(make())
    initial = copy.deepcopy(module.net)
    make_trainer(max_steps=1, callbacks=[EquilibriumMonitor(every_n_steps=1)]).fit(
        module, DataLoader(DATA, batch_size=32)
    )
    losses = initial.losses(*DATA.tensors)
    trunk = list(initial.trunk.parameters())
    rows = torch.stack([grads_of(losses["cls"], trunk), grads_of(losses["rep"], trunk)])
    if isinstance(module.balancing_strategy, RGB):
        reference_rgb(rows, torch.zeros(rows.shape[1]), 0.9, 1.0, 5, 0.5)
        adjusted = reference_rgb.rotated  # type: ignore[attr-defined]
    else:
        adjusted = rows
    # equilibrium_terms is pinned by hand above; here: the monitor gives it the step's rows.
    expected = {name: float(value) for name, value in equilibrium_terms(rows, adjusted).items()}
    metrics = module.trainer.callback_metrics
    for name in ("conflict", "proximity", "balance"):
        assert float(metrics[f"mer/{name}_step"]) == pytest.approx(
            expected[name], rel=1e-3, abs=1e-6
        )
    # The edited rows reach the monitor through the engine's report, not the strategy.
    reported = module.objective_gradients["shared"]
    if isinstance(module.balancing_strategy, RGB):
        assert reported.edited is not None
        torch.testing.assert_close(reported.edited.double(), adjusted, rtol=1e-4, atol=1e-6)
    else:
        assert reported.edited is None


@pytest.mark.parametrize(
    "make",
    [lambda: PCGrad(), lambda: PCGrad(reduction="mean"), lambda: GradVac(), lambda: GradDrop()],
    ids=["pcgrad-sum", "pcgrad-mean", "gradvac", "graddrop"],
)
def test_gradient_surgeons_record_the_rows_they_combine(make) -> None:
    rows = jacobian(5, 32, seed=4)
    rows[1] = -rows[0] + 0.2 * rows[1]  # a conflict, so the rows do get edited
    strategy = make()
    result = _edit(strategy, rows)
    adjusted = result.rows()
    assert adjusted.shape == rows.shape and not torch.allclose(adjusted, rows)
    combined = (
        adjusted.mean(0) if getattr(strategy, "reduction", "sum") == "mean" else adjusted.sum(0)
    )
    torch.testing.assert_close(combined, result.direction, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(make().aggregate(rows), result.direction)
