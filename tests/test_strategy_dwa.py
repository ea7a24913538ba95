"""DWA: weights by hand over a loss sequence, state round trip, resume, a Lightning run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from loss_strategy_harness import (
    assert_needs_losses,
    assert_no_host_reads,
    assert_restored_copy_continues,
    assert_resume_reproduces,
    call,
    fit_tiny,
    logged_weights,
    record_weights,
)

from lightning_mtl.strategies.dwa import DWA


def dwa_weights(ratios: list[float], temperature: float = 2.0) -> list[float]:
    """``T · softmax(r / temperature)`` written out."""
    exps = [math.exp(r / temperature) for r in ratios]
    return [len(ratios) * e / sum(exps) for e in exps]


def test_weights_by_hand_over_epochs() -> None:
    dwa = DWA()
    # Epochs 0 and 1: unit weights while the averages (2, 2) and (1, 2) are collected; epoch 1
    # has three steps, so its average is over the three.
    sequence = [(0, [1.0, 2.0]), (0, [3.0, 2.0]), (1, [1.0, 3.0]), (1, [1.0, 1.0]), (1, [1.0, 2.0])]
    for epoch, losses in sequence:
        torch.testing.assert_close(call(dwa, losses, epoch=epoch), torch.ones(2))
    # Epoch 2: r = (1/2, 2/2).
    expected = torch.tensor([2 / (1 + math.exp(0.25)), 2 * math.exp(0.25) / (1 + math.exp(0.25))])
    for losses in ([0.5, 1.0], [0.5, 2.0]):
        torch.testing.assert_close(call(dwa, losses, epoch=2), expected)
    # Epoch 3 is not seen; epoch 4 uses the averages of epochs 1 and 2: r = (0.5/1, 1.5/2).
    e1, e2 = math.exp(0.5 / 2), math.exp(0.75 / 2)
    expected = torch.tensor([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)])
    torch.testing.assert_close(call(dwa, [9.0, 9.0], epoch=4), expected)


def test_three_objectives_and_temperature() -> None:
    dwa = DWA(temperature=0.5)
    call(dwa, [1.0, 1.0, 1.0], epoch=0)
    call(dwa, [0.5, 1.0, 2.0], epoch=1)
    weights = call(dwa, [1.0, 1.0, 1.0], epoch=2)
    torch.testing.assert_close(weights, torch.tensor(dwa_weights([0.5, 1.0, 2.0], 0.5)))
    assert weights.sum().item() == pytest.approx(3.0)
    assert dwa.log_values().keys() == {"weight/task0", "weight/task1", "weight/task2"}


def test_state_round_trip_continues_identically() -> None:
    epochs = [e for e in range(4) for _ in range(3)]
    losses = [[1.0 + e + s, 2.0 / (1 + e + s)] for e in range(4) for s in range(3)]
    for cut in (1, 4, 7):  # inside epoch 0, at the start of epoch 1, inside epoch 2
        assert_restored_copy_continues(DWA, losses, cut, epochs)


def test_no_host_reads() -> None:
    assert_no_host_reads(DWA())


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_must_be_positive(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        DWA(temperature=temperature)


def test_needs_the_losses() -> None:
    assert_needs_losses(DWA())
    assert repr(DWA()) == "DWA(temperature=2.0)"


def test_lightning_run_logs_the_hand_computed_weights() -> None:
    dwa = DWA()
    calls = record_weights(dwa)
    module = fit_tiny(dwa, max_epochs=3)
    assert [batch.progress.epoch for batch, _ in calls] == [0] * 4 + [1] * 4 + [2] * 4
    averages = [
        [sum(float(batch.losses[t]) for batch, _ in calls[4 * e : 4 * e + 4]) / 4 for t in (0, 1)]
        for e in (0, 1)
    ]
    expected = torch.tensor(dwa_weights([averages[1][t] / averages[0][t] for t in (0, 1)]))
    for index, (_, weights) in enumerate(calls):
        torch.testing.assert_close(weights, expected if index >= 8 else torch.ones(2))
    torch.testing.assert_close(logged_weights(module), expected)


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    strategy = assert_resume_reproduces(DWA, tmp_path)
    assert isinstance(strategy, DWA)
    assert strategy.history is not None and len(strategy.history) == 2
