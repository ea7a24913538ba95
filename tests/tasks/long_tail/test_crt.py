"""ClassifierRetraining (cRT's second stage): frozen representation, re-initialised classifier,
class-balanced sampling, and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from lightning_mtl.tasks.long_tail import (
    ClassifierRetraining,
    DigitsLongTailDataModule,
    LongTailClassifier,
)

# DigitsLongTailDataModule(imbalance_ratio=20): long_tail_counts(140, 10, 20), by hand.
PROFILE = [140, 100, 71, 51, 36, 26, 19, 13, 9, 7]
STEPS_PER_EPOCH = 8  # ceil(472 / 64): the last batch is kept
SWITCH = 2


class BatchNormNet(nn.Module):
    """``layer3`` with a BatchNorm layer (whose statistics must freeze too) and a linear ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer3 = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.layer3(images))


def make_model(seed: int = 0, **kwargs: Any) -> LongTailClassifier:
    torch.manual_seed(seed)
    model = LongTailClassifier(lr=0.05, **kwargs)
    model.net = BatchNormNet()
    return model


class Recorder(pl.Callback):
    """Labels drawn per epoch, the learning rate, and snapshots of the module."""

    def __init__(self) -> None:
        self.labels: dict[int, list[int]] = {}
        self.lrs: dict[int, float] = {}
        self.at_epoch_end: dict[int, dict[str, Tensor]] = {}
        self.first_batch_of: dict[int, dict[str, Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        epoch = trainer.current_epoch
        if batch_idx == 0:
            self.first_batch_of[epoch] = snapshot(pl_module)
            self.lrs[epoch] = trainer.optimizers[0].param_groups[0]["lr"]
        self.labels.setdefault(epoch, []).extend(batch[1].tolist())

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self.at_epoch_end[trainer.current_epoch] = snapshot(pl_module)


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def fit(
    model: LongTailClassifier,
    max_epochs: int,
    callbacks: list[pl.Callback],
    ckpt_path: str | None = None,
    **kwargs: Any,
) -> None:
    data = DigitsLongTailDataModule(imbalance_ratio=20, batch_size=64, seed=0)
    trainer = make_trainer(max_epochs=max_epochs, callbacks=callbacks, **kwargs)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)


def test_only_the_classifier_changes_after_the_switch(single_thread: None) -> None:
    model = make_model(mixup_alpha=0.4)
    crt = ClassifierRetraining(epoch=SWITCH, classifier="net.fc", lr=0.02, seed=7)
    recorder = Recorder()
    fit(model, 4, [crt, recorder])

    assert crt.switched_at_epoch == SWITCH
    assert crt.switched_at_step == SWITCH * STEPS_PER_EPOCH
    before = recorder.at_epoch_end[SWITCH - 1]
    after = snapshot(model)
    frozen = [name for name in after if not name.startswith("net.fc.")]
    assert "net.layer3.2.running_mean" in frozen and "net.layer3.2.weight" in frozen
    for name in frozen:  # parameters and BatchNorm statistics, bit for bit
        assert torch.equal(after[name], before[name]), name
    # ... while the first stage did train them.
    assert not torch.equal(
        recorder.at_epoch_end[0]["net.layer3.1.weight"], before["net.layer3.1.weight"]
    )

    # Re-initialised at the switch: PyTorch's default nn.Linear(32, 10) drawn with seed 7.
    torch.manual_seed(7)
    fresh = nn.Linear(32, 10)
    switched = recorder.first_batch_of[SWITCH]
    assert torch.equal(switched["net.fc.weight"], fresh.weight.detach())
    assert torch.equal(switched["net.fc.bias"], fresh.bias.detach())
    assert not torch.equal(after["net.fc.weight"], fresh.weight.detach())  # then trained
    assert all(p.requires_grad for p in model.net.fc.parameters())
    assert not any(p.requires_grad for p in model.net.layer3.parameters())

    # Instance sampling first (the profile exactly, every epoch), then classes about uniformly.
    for epoch in range(SWITCH):
        assert np.bincount(recorder.labels[epoch], minlength=10).tolist() == PROFILE
    drawn = np.bincount(recorder.labels[2] + recorder.labels[3], minlength=10)
    # 944 draws, each class with probability 1/10: 94.4 expected, sd ≈ 9.2; instance sampling
    # would give the tail class 14.
    assert drawn.sum() == 944
    assert np.abs(drawn - 94.4).max() < 40
    assert recorder.lrs[0] == pytest.approx(0.05) and recorder.lrs[2] == recorder.lrs[3] == 0.02
    assert model.mixup_enabled is False


def test_resume_at_and_after_the_switch_reproduces_the_run(
    tmp_path: Path, single_thread: None
) -> None:
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1
    )
    straight, recorder = make_model(mixup_alpha=0.4), Recorder()
    crt = ClassifierRetraining(epoch=SWITCH, lr=0.02)
    fit(straight, 4, [crt, recorder, checkpoints], enable_checkpointing=True)
    final = snapshot(straight)

    for resume_from in (SWITCH - 1, SWITCH):  # at the switch, and inside the second stage
        resumed, again = make_model(seed=123, mixup_alpha=0.4), Recorder()
        crt_again = ClassifierRetraining(epoch=SWITCH, lr=0.02)
        fit(
            resumed,
            4,
            [crt_again, again],
            ckpt_path=str(tmp_path / f"epoch={resume_from}.ckpt"),
        )
        assert crt_again.switched_at_epoch == SWITCH
        assert crt_again.switched_at_step == SWITCH * STEPS_PER_EPOCH
        for epoch in range(resume_from + 1, 4):
            assert again.labels[epoch] == recorder.labels[epoch]
        for name, value in snapshot(resumed).items():
            assert torch.equal(value, final[name]), (resume_from, name)
        assert not any(p.requires_grad for p in resumed.net.layer3.parameters())


def test_checks_and_plain_values() -> None:
    with pytest.raises(ValueError, match="epoch"):
        ClassifierRetraining(epoch=-1)
    with pytest.raises(ValueError, match="lr"):
        ClassifierRetraining(epoch=1, lr=0.0)
    crt = ClassifierRetraining(epoch=3)
    assert crt.state_dict() == {"switched_at_epoch": None, "switched_at_step": None}
    crt.load_state_dict({"switched_at_epoch": 3, "switched_at_step": 24})
    assert (crt.switched_at_epoch, crt.switched_at_step) == (3, 24)
    model = make_model()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.rand(8, 1, 8, 8), torch.arange(8) % 2), batch_size=4
    )
    with pytest.raises(ValueError, match=r"no submodule 'net\.head'"):
        make_trainer(max_epochs=1, callbacks=[ClassifierRetraining(1, "net.head")]).fit(
            model, loader
        )
    with pytest.raises(TypeError, match="class_balanced"):
        make_trainer(max_epochs=1, callbacks=[ClassifierRetraining(1)]).fit(model, loader)


def test_two_instances_keep_their_own_state_through_a_checkpoint(
    tmp_path: Path, single_thread: None
) -> None:
    """Two re-training stages in one Trainer (the second re-initialises nothing): each is keyed
    by its own arguments, so each restores its own switch."""
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", every_n_epochs=1)
    first = ClassifierRetraining(epoch=1, lr=0.02)
    second = ClassifierRetraining(epoch=2, reinit=False, lr=0.01)
    assert first.state_key != second.state_key
    fit(make_model(), 3, [first, second, checkpoints], enable_checkpointing=True)
    assert (first.switched_at_epoch, second.switched_at_epoch) == (1, 2)

    again = [ClassifierRetraining(epoch=1, lr=0.02), ClassifierRetraining(2, reinit=False, lr=0.01)]
    fit(make_model(seed=5), 3, again, ckpt_path=str(tmp_path / "epoch=2.ckpt"))
    assert [callback.switched_at_epoch for callback in again] == [1, 2]
    assert [callback.switched_at_step for callback in again] == [
        first.switched_at_step,
        second.switched_at_step,
    ]
