"""Equilibrium (MER) diagnostics: eq. 3-6 of RGB's appendix A.8, and the monitor callback."""

from __future__ import annotations

import copy
import itertools
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


def _by_hand(original: torch.Tensor, adjusted: torch.Tensor) -> dict[str, float]:
    rows = [r / r.norm() for r in adjusted.double()]
    units = [g / g.norm() for g in original.double()]
    count = len(rows)
    pairs = list(itertools.combinations(range(count), 2))
    conflict = sum((1 - float(rows[i] @ rows[j])) / 2 for i, j in pairs) / len(pairs)
    proximity = (
        sum(float(((r - u) ** 2).sum()) / 4 for r, u in zip(rows, units, strict=True)) / count
    )
    cosines = torch.stack(rows) @ torch.stack(rows).T
    eigenvalues = torch.linalg.eigvalsh(cosines)
    condition = float(eigenvalues.max() / eigenvalues.min())
    balance = math.sqrt(1 / (1 + conflict) / (1 + proximity) / (1 + condition))
    return {
        "conflict": conflict,
        "proximity": proximity,
        "condition_number": condition,
        "balance": balance,
    }


def test_equilibrium_terms_match_equations_3_to_6() -> None:
    original = jacobian(5, 20, seed=1)
    adjusted = original + 0.3 * jacobian(5, 20, seed=2)
    terms = {name: float(value) for name, value in equilibrium_terms(original, adjusted).items()}
    assert terms == pytest.approx(_by_hand(original, adjusted), rel=1e-5)
    unchanged = equilibrium_terms(original, original)
    assert float(unchanged["proximity"]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="T >= 2"):
        equilibrium_terms(original[:1], original[:1])


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
    expected = _by_hand(rows, adjusted)
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
