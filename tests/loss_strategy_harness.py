"""Utilities shared by the loss-based strategy tests (DWA, UW, RLW, FAMO)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from helpers import DATA, TinyModule, flat_params, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_mtl.strategies.base import (
    GradientBalancingStrategy,
    LossBatch,
    LossWeighting,
    TrainingProgress,
)
from lightning_mtl.tasks.common import EpochSeededRandomSampler

Calls = list[tuple[LossBatch, Tensor]]
Strategy = TypeVar("Strategy", bound=GradientBalancingStrategy)


def record_weights(strategy: LossWeighting) -> Calls:
    """Record the batch and the returned weights of every ``weights()`` call."""
    calls: Calls = []
    original = strategy.weights

    def recording(batch: LossBatch) -> Tensor:
        weights = original(batch)
        calls.append((batch, weights.clone()))
        return weights

    strategy.weights = recording  # type: ignore[method-assign]
    return calls


def restored(strategy: GradientBalancingStrategy, fresh: Strategy) -> Strategy:
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
    strategy: LossWeighting,
    losses: list[float],
    step: int = 0,
    epoch: int = 0,
    device: str = "cpu",
) -> Tensor:
    names = tuple(f"task{i}" for i in range(len(losses)))
    strategy.setup(names)
    progress = TrainingProgress(step=step, epoch=epoch)
    values = torch.tensor(losses).to(device)
    return strategy(LossBatch(names=names, losses=values, progress=progress))


def assert_no_host_reads(strategy: LossWeighting) -> None:
    """Meta tensors have no values, so reading one on the host (``.item()``, ``if tensor``,
    ``.tolist()``) raises: the steps below would synchronise on a GPU if they did."""
    for step in range(6):
        weights = call(strategy, [1.0, 2.0], step=step, epoch=step // 2, device="meta")
        assert weights.device.type == "meta" and weights.shape == (2,)


def assert_restored_copy_continues(
    make: Callable[[], Strategy],
    losses: Sequence[list[float]],
    cut: int,
    epochs: Sequence[int] | None = None,
) -> Strategy:
    """A copy restored after the first ``cut`` calls returns, on the rest, exactly what the
    uninterrupted strategy returns, and ends in its state; the uninterrupted one is returned."""
    epochs = epochs or [0] * len(losses)
    straight, interrupted = make(), make()
    for values, epoch in zip(losses[:cut], epochs[:cut], strict=True):
        call(straight, values, epoch=epoch)
        call(interrupted, values, epoch=epoch)
    resumed = restored(interrupted, make())
    for values, epoch in zip(losses[cut:], epochs[cut:], strict=True):
        torch.testing.assert_close(
            call(resumed, values, epoch=epoch), call(straight, values, epoch=epoch), rtol=0, atol=0
        )
    assert_same_state(resumed.state_dict(), straight.state_dict())
    return straight


def assert_needs_losses(strategy: GradientBalancingStrategy) -> None:
    """Aggregating gradients without the losses raises, naming the missing ``losses=``."""
    with pytest.raises(ValueError, match="pass losses="):
        strategy.aggregate(torch.eye(2))


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
    trainer = make_trainer(
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
    torch.testing.assert_close(flat_params(resumed), flat_params(straight), rtol=0, atol=0)
    strategy = straight.active_balancing_strategy
    assert_same_state(resumed.active_balancing_strategy.state_dict(), strategy.state_dict())
    return strategy


def logged_weights(module: TinyModule) -> Tensor:
    metrics = module.trainer.callback_metrics
    return torch.stack([metrics["balancing/weight/cls"], metrics["balancing/weight/rep"]])


def assert_run_follows(
    strategy: GradientBalancingStrategy,
    max_epochs: int,
    reference: Callable[[list[list[float]]], Tensor],
) -> None:
    """In a Lightning run every ``weights()`` call, and the last logged weights, are what
    ``reference`` computes from the losses the run produced."""
    calls = record_weights(strategy)
    module = fit_tiny(strategy, max_epochs=max_epochs)
    seen = [[float(v) for v in batch.losses] for batch, _ in calls]
    expected = reference(seen)
    torch.testing.assert_close(torch.stack([weights for _, weights in calls]), expected)
    torch.testing.assert_close(logged_weights(module), expected[-1])
