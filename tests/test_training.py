"""Real Lightning runs: hand-computed updates and angles, resume, DDP, bf16-mixed."""

from __future__ import annotations

import copy
import math
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
    one_full_batch_step,
    unit_row_mean,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_mtl.callbacks import GradientAngleLogger, WarmupThenSwitch
from lightning_mtl.engine.geometry import degrees
from lightning_mtl.strategies import PGI, RGB, GradientBalancingStrategy
from lightning_mtl.tasks.common import EpochSeededRandomSampler


def test_pgi_step_is_alpha_g_s_plus_one_minus_alpha_g_u() -> None:
    initial, change = one_full_batch_step(TinyModule(PGI(alpha=0.3)))
    losses = initial.losses(*DATA.tensors)
    params = list(initial.parameters())
    expected = 0.3 * grads_of(losses["cls"], params) + 0.7 * grads_of(losses["rep"], params)
    torch.testing.assert_close(change, expected)


def test_jacobian_strategy_step_through_lightning() -> None:
    initial, change = one_full_batch_step(TinyModule(UnitRowMean()))
    losses = initial.losses(*DATA.tensors)
    trunk = list(initial.trunk.parameters())
    heads = [*initial.cls_head.parameters(), *initial.rep_head.parameters()]
    expected = torch.cat(
        [
            unit_row_mean(
                torch.stack([grads_of(losses["cls"], trunk), grads_of(losses["rep"], trunk)])
            ),
            grads_of(losses["cls"] + losses["rep"], heads),
        ]
    )
    torch.testing.assert_close(change, expected)


@pytest.mark.parametrize("scope", [None, ["net.trunk.0"]])
def test_angle_logger_matches_angles_from_autograd(scope: list[str] | None) -> None:
    module = TinyModule(PGI(alpha=0.3))
    logger = GradientAngleLogger(every_n_steps=1, scope=scope, heatmap=False)
    initial, _ = one_full_batch_step(module, callbacks=[logger])
    losses = initial.losses(*DATA.tensors)
    params = list(initial.trunk.parameters() if scope is None else initial.trunk[0].parameters())
    g_cls, g_rep = grads_of(losses["cls"], params), grads_of(losses["rep"], params)
    update = 0.3 * g_cls + 0.7 * g_rep

    def angle(a: Tensor, b: Tensor) -> float:
        return math.degrees(math.acos(float(a @ b / (a.norm() * b.norm()))))

    metrics = _trainer_metrics(module)
    assert metrics["angle/cls_vs_rep_step"] == pytest.approx(angle(g_cls, g_rep), abs=1e-3)
    assert metrics["angle/cls_vs_update_step"] == pytest.approx(angle(g_cls, update), abs=1e-3)
    assert metrics["angle/rep_vs_update_step"] == pytest.approx(angle(g_rep, update), abs=1e-3)
    assert metrics["cos/cls_vs_rep_step"] == pytest.approx(
        float(g_cls @ g_rep / (g_cls.norm() * g_rep.norm())), abs=1e-5
    )
    assert logger.history[-1]["angle/cls_vs_rep"] == pytest.approx(angle(g_cls, g_rep), abs=1e-3)


def test_angle_logger_logs_summaries_beyond_max_pairs() -> None:
    module = TinyModule(PGI(alpha=0.3))
    logger = GradientAngleLogger(every_n_steps=1, heatmap=False, max_pairs=0)
    initial, _ = one_full_batch_step(module, callbacks=[logger])
    losses = initial.losses(*DATA.tensors)
    params = list(initial.trunk.parameters())
    g_cls, g_rep = grads_of(losses["cls"], params), grads_of(losses["rep"], params)
    update = 0.3 * g_cls + 0.7 * g_rep

    def angle(a: Tensor, b: Tensor) -> float:
        return math.degrees(math.acos(float(a @ b / (a.norm() * b.norm()))))

    metrics = _trainer_metrics(module)
    assert not any("_vs_" in key for key in metrics)  # no per-pair or per-objective values
    pair = angle(g_cls, g_rep)
    to_update = [angle(g_cls, update), angle(g_rep, update)]
    assert metrics["angle/mean_pairwise_step"] == pytest.approx(pair, abs=1e-3)
    assert metrics["angle/max_pairwise_step"] == pytest.approx(pair, abs=1e-3)
    assert metrics["cos/conflicting_fraction_step"] == float(pair > 90.0)
    assert metrics["angle/mean_to_update_step"] == pytest.approx(sum(to_update) / 2, abs=1e-3)
    assert metrics["angle/max_to_update_step"] == pytest.approx(max(to_update), abs=1e-3)
    with pytest.raises(ValueError, match="max_pairs"):
        GradientAngleLogger(max_pairs=-1)


def _trainer_metrics(module: pl.LightningModule) -> dict[str, float]:
    return {key: float(value) for key, value in module.trainer.callback_metrics.items()}


def test_angle_logger_costs_nothing_off_its_cadence() -> None:
    module = TinyModule(PGI(alpha=0.3))
    computed: list[int] = []
    original = module.gradient_engine.jacobians.__call__

    class Counting(type(module.gradient_engine.jacobians)):  # type: ignore[misc]
        def __call__(self, outputs, inputs):  # type: ignore[no-untyped-def]
            computed.append(module.trainer.global_step)
            return original(outputs, inputs)

    module.gradient_engine.jacobians.__class__ = Counting
    logger = GradientAngleLogger(every_n_steps=3, heatmap=False)
    make_trainer(max_steps=7, callbacks=[logger]).fit(module, DataLoader(DATA, batch_size=8))
    assert computed == [0, 3, 6]


def _resumable_run(tmp_path: Path, max_epochs: int, ckpt_path: str | None = None):  # type: ignore[no-untyped-def]
    module = TinyModule(
        PGI(alpha_max=0.9, alpha_min=0.1, unit="step"), lr=0.2, momentum=0.9, epoch_decay=0.7
    )
    warmup = WarmupThenSwitch(warmup_epochs=1)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    loader = DataLoader(DATA, batch_size=8, sampler=EpochSeededRandomSampler(len(DATA), seed=5))
    trainer = make_trainer(
        max_epochs=max_epochs,
        enable_checkpointing=True,
        callbacks=[warmup, checkpoints, GradientAngleLogger(every_n_steps=2, heatmap=False)],
    )
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return module, warmup


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    straight, straight_warmup = _resumable_run(tmp_path / "a", max_epochs=4)
    # The run's own checkpoint after 2 of 4 epochs: the state a run stopped there leaves behind
    # (a run configured for 2 epochs would anneal α over a shorter schedule).
    checkpoint = tmp_path / "a" / "epoch=1-step=8.ckpt"
    assert checkpoint.exists()
    resumed, resumed_warmup = _resumable_run(
        tmp_path / "b", max_epochs=4, ckpt_path=str(checkpoint)
    )
    torch.testing.assert_close(flat_params(resumed), flat_params(straight), rtol=0, atol=0)
    assert resumed.balancing_strategy.state_dict() == straight.balancing_strategy.state_dict()
    assert resumed_warmup.switched_at_step == straight_warmup.switched_at_step == 4
    assert straight.balancing_strategy.start == 4


class HalvesPerRank(pl.LightningDataModule):
    """Rank r of 2 reads half r of DATA in order; one process reads the per-step unions."""

    def __init__(self, devices: int) -> None:
        super().__init__()
        self.devices = devices

    def train_dataloader(self) -> DataLoader:
        if self.devices == 1:
            order = torch.cat(
                [
                    torch.arange(0, 8),
                    torch.arange(16, 24),
                    torch.arange(8, 16),
                    torch.arange(24, 32),
                ]
            )
            return DataLoader(TensorDataset(*(t[order] for t in DATA.tensors)), batch_size=16)
        half = slice(16 * self.trainer.global_rank, 16 * (self.trainer.global_rank + 1))
        return DataLoader(TensorDataset(*(t[half] for t in DATA.tensors)), batch_size=8)


def _ddp_run(strategy: GradientBalancingStrategy, scope: object, devices: int) -> Tensor:
    module = TinyModule(strategy, scope=scope, lr=0.1, momentum=0.9)
    trainer = make_trainer(
        max_steps=3,
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=HalvesPerRank(devices))
    return flat_params(module)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "scope"),
    [
        (PGI(alpha=0.3), "shared"),
        (UnitRowMean(), "shared"),
        (UnitRowMean(), "representation"),
        (RGB(alpha_steps=5), "shared"),
    ],
    ids=["pgi", "jacobian", "representation", "rgb-stateful"],
)
def test_two_process_ddp_matches_one_process_on_the_union_batch(strategy, scope) -> None:
    single = _ddp_run(copy.deepcopy(strategy), scope, devices=1)
    distributed = _ddp_run(copy.deepcopy(strategy), scope, devices=2)
    torch.testing.assert_close(distributed, single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", [PGI(alpha=0.3), UnitRowMean()], ids=["pgi", "jacobian"])
def test_bf16_mixed_on_cpu_matches_the_autocast_reference(strategy) -> None:
    initial, change = one_full_batch_step(TinyModule(strategy), precision="bf16-mixed")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = initial.losses(*DATA.tensors)
    trunk = list(initial.trunk.parameters())
    rows = torch.stack(
        [grads_of(losses["cls"].float(), trunk), grads_of(losses["rep"].float(), trunk)]
    )
    if isinstance(strategy, PGI):
        expected_trunk = 0.3 * rows[0] + 0.7 * rows[1]
    else:
        expected_trunk = unit_row_mean(rows)
    torch.testing.assert_close(change[: len(expected_trunk)], expected_trunk, rtol=2e-2, atol=2e-3)
    assert (
        degrees(
            torch.nn.functional.cosine_similarity(
                change[: len(expected_trunk)], expected_trunk, dim=0
            )
        )
        < 1.0
    )
