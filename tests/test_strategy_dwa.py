"""DWA: weights by hand over a loss sequence, state round trip, resume, a Lightning run.

The first section holds small utilities that the other loss-based strategy tests import.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_training import DATA, TinyModule, _params, _trainer
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_mtl.data import EpochSeededRandomSampler
from lightning_mtl.strategies.base import (
    GradientBalancingStrategy,
    ObjectiveBatch,
    TrainingProgress,
)
from lightning_mtl.strategies.dwa import DWA

# --- shared by the loss-based strategy tests ------------------------------------------------

Calls = list[tuple[ObjectiveBatch, Tensor]]


def record_weights(strategy: GradientBalancingStrategy) -> Calls:
    """Record the batch and the returned weights of every ``weights()`` call."""
    calls: Calls = []
    original = strategy.weights

    def recording(batch: ObjectiveBatch) -> Tensor:
        weights = original(batch)
        calls.append((batch, weights.clone()))
        return weights

    strategy.weights = recording  # type: ignore[method-assign]
    return calls


def restored(strategy: GradientBalancingStrategy, fresh: GradientBalancingStrategy):  # type: ignore[no-untyped-def]
    """``fresh`` loaded with ``strategy``'s state, through a ``weights_only`` save and load."""
    buffer = io.BytesIO()
    torch.save(strategy.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, Tensor):
            torch.testing.assert_close(value, b[key], rtol=0, atol=0)
        else:
            assert value == b[key], key


def call(
    strategy: GradientBalancingStrategy,
    losses: list[float],
    step: int = 0,
    epoch: int = 0,
    device: str = "cpu",
) -> Tensor:
    names = tuple(f"task{i}" for i in range(len(losses)))
    strategy.setup(names)
    progress = TrainingProgress(step=step, epoch=epoch)
    values = torch.tensor(losses).to(device)
    return strategy.weights(ObjectiveBatch(names, values, progress=progress))


def assert_no_host_reads(strategy: GradientBalancingStrategy) -> None:
    """Meta tensors have no values, so reading one on the host (``.item()``, ``if tensor``,
    ``.tolist()``) raises: the steps below would synchronise on a GPU if they did."""
    for step in range(6):
        weights = call(strategy, [1.0, 2.0], step=step, epoch=step // 2, device="meta")
        assert weights.device.type == "meta" and weights.shape == (2,)


def fit_tiny(
    strategy: GradientBalancingStrategy,
    max_epochs: int,
    checkpoints: Path | None = None,
    ckpt_path: str | None = None,
) -> TinyModule:
    """Train ``TinyModule`` on ``DATA`` in batches of 8 (4 steps an epoch), in a seeded order."""
    module = TinyModule(strategy, lr=0.2, momentum=0.9)
    loader = DataLoader(DATA, batch_size=8, sampler=EpochSeededRandomSampler(len(DATA), seed=5))
    callbacks = [ModelCheckpoint(dirpath=checkpoints, save_top_k=-1, every_n_epochs=1)]
    trainer = _trainer(
        max_epochs=max_epochs,
        enable_checkpointing=checkpoints is not None,
        callbacks=callbacks if checkpoints is not None else [],
    )
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return module


def assert_resume_reproduces(
    make: Callable[[], GradientBalancingStrategy], tmp_path: Path
) -> GradientBalancingStrategy:
    """Resuming from the checkpoint after 2 of 4 epochs ends exactly where the straight run does."""
    straight = fit_tiny(make(), 4, tmp_path / "a")
    checkpoint = tmp_path / "a" / "epoch=1-step=8.ckpt"
    assert checkpoint.exists()
    resumed = fit_tiny(make(), 4, tmp_path / "b", ckpt_path=str(checkpoint))
    torch.testing.assert_close(_params(resumed), _params(straight), rtol=0, atol=0)
    strategy = straight.active_balancing_strategy
    assert_same_state(resumed.active_balancing_strategy.state_dict(), strategy.state_dict())
    return strategy


def logged_weights(module: TinyModule) -> Tensor:
    metrics = module.trainer.callback_metrics
    return torch.stack([metrics["balancing/weight/cls"], metrics["balancing/weight/rep"]])


# --- DWA ------------------------------------------------------------------------------------


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
    sequence = [(e, [1.0 + e + s, 2.0 / (1 + e + s)]) for e in range(4) for s in range(3)]
    for cut in (1, 4, 7):  # inside epoch 0, at the start of epoch 1, inside epoch 2
        straight, interrupted = DWA(), DWA()
        for epoch, losses in sequence[:cut]:
            call(straight, losses, epoch=epoch)
            call(interrupted, losses, epoch=epoch)
        resumed = restored(interrupted, DWA())
        for epoch, losses in sequence[cut:]:
            torch.testing.assert_close(
                call(resumed, losses, epoch=epoch),
                call(straight, losses, epoch=epoch),
                rtol=0,
                atol=0,
            )
        assert_same_state(resumed.state_dict(), straight.state_dict())


def test_no_host_reads() -> None:
    assert_no_host_reads(DWA())


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_must_be_positive(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        DWA(temperature=temperature)


def test_needs_the_losses() -> None:
    with pytest.raises(ValueError, match="pass losses="):
        DWA().aggregate(torch.eye(2))
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
