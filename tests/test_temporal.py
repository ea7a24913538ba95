"""TemporalMOO (PLOT's SFE -> TSO early stop) and the shared StrategySwitch."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import (
    DATA,
    TinyModule,
    UnitRowMean,
    flat_params,
    grads_of,
    make_trainer,
    unit_row_mean,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_mtl.callbacks import TemporalMOO
from lightning_mtl.callbacks.temporal import PAPER_EPOCH_CHOICES
from lightning_mtl.strategies import RGB
from lightning_mtl.tasks.common import EpochSeededRandomSampler


class Snapshots(pl.Callback):
    """The trunk before each step and the gradient written for it."""

    def __init__(self) -> None:
        self.nets: list[torch.nn.Module] = []
        self.grads: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.nets.append(copy.deepcopy(pl_module.net))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # type: ignore[no-untyped-def]
        self.grads.append(torch.cat([p.grad.reshape(-1) for p in pl_module.net.trunk.parameters()]))


def test_moo_before_epoch_e_then_the_plain_sum() -> None:
    snapshots = Snapshots()
    temporal = TemporalMOO(epochs=1)
    module = TinyModule(UnitRowMean())
    make_trainer(max_epochs=2, callbacks=[temporal, snapshots]).fit(
        module, DataLoader(DATA, batch_size=16)
    )
    assert len(snapshots.grads) == 4  # 2 steps per epoch
    for step, (net, written) in enumerate(zip(snapshots.nets, snapshots.grads, strict=True)):
        x, y = (
            DATA.tensors[0][16 * (step % 2) : 16 * (step % 2 + 1)],
            DATA.tensors[1][16 * (step % 2) : 16 * (step % 2 + 1)],
        )
        losses = net.losses(x, y)
        trunk = list(net.trunk.parameters())
        rows = torch.stack([grads_of(losses["cls"], trunk), grads_of(losses["rep"], trunk)])
        expected = unit_row_mean(rows) if step < 2 else rows.sum(0)
        torch.testing.assert_close(written, expected)
    assert temporal.switched_at_epoch == 1 and temporal.switched_at_step == 2
    assert float(module.trainer.callback_metrics["balancing/moo"]) == 0.0
    assert float(module.trainer.callback_metrics["balancing/switch_epoch"]) == 1.0


def _run(
    root: Path, max_epochs: int, ckpt_path: str | None = None
) -> tuple[TinyModule, TemporalMOO]:
    module = TinyModule(RGB(alpha_steps=3), lr=0.1, momentum=0.9)
    temporal = TemporalMOO(epochs=2)
    loader = DataLoader(DATA, batch_size=8, sampler=EpochSeededRandomSampler(len(DATA), seed=2))
    checkpoints = ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1)
    make_trainer(
        max_epochs=max_epochs, enable_checkpointing=True, callbacks=[temporal, checkpoints]
    ).fit(module, loader, ckpt_path=ckpt_path)
    return module, temporal


def test_switch_state_and_strategy_state_survive_resume(tmp_path: Path) -> None:
    straight, straight_switch = _run(tmp_path / "a", max_epochs=4)
    checkpoint = tmp_path / "a" / "epoch=1-step=8.ckpt"  # still in the MOO phase
    resumed, resumed_switch = _run(tmp_path / "b", max_epochs=4, ckpt_path=str(checkpoint))
    torch.testing.assert_close(flat_params(resumed), flat_params(straight), rtol=0, atol=0)
    assert resumed_switch.switched_at_epoch == straight_switch.switched_at_epoch == 2
    after = tmp_path / "a" / "epoch=2-step=12.ckpt"  # after the switch
    state = torch.load(after, weights_only=True)["callbacks"]
    (saved,) = [value for key, value in state.items() if key.startswith("TemporalMOO")]
    assert saved["switched_at_epoch"] == 2 and saved["switched_at_step"] == 8


def test_temporal_moo_arguments() -> None:
    assert PAPER_EPOCH_CHOICES == (10, 30, 50, 80)
    with pytest.raises(ValueError, match="non-negative"):
        TemporalMOO(epochs=-1)
