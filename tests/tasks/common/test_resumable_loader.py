"""The resumable training loader against torch's own DataLoader: a restored loader hands out the
rest of the saved epoch, without loading the skipped samples, alone and under the distributed
sampler that Lightning injects for DDP."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.data import _update_dataloader
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_mtl.tasks.common import (
    EpochSeededRandomSampler,
    ResumableDataLoader,
    SplitDataModule,
)

SIZE, BATCH = 24, 4  # 6 batches an epoch


class CountingRange(Dataset):
    """``range(SIZE)`` that counts the samples it loads."""

    def __init__(self) -> None:
        self.loaded = 0

    def __len__(self) -> int:
        return SIZE

    def __getitem__(self, index: int) -> Tensor:
        self.loaded += 1
        return torch.tensor(index)


class Range(SplitDataModule):
    def __init__(self, num_workers: int = 0) -> None:
        super().__init__()
        self.batch_size, self.num_workers, self.seed = BATCH, num_workers, 7

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = CountingRange()


def reference_epoch(epoch: int, sampler: Sampler[int] | None = None) -> list[list[int]]:
    """The batches of torch's DataLoader over the same sampler."""
    if sampler is None:
        sampler = EpochSeededRandomSampler(SIZE, seed=7)
    sampler.set_epoch(epoch)  # type: ignore[attr-defined]
    loader = DataLoader(CountingRange(), batch_size=BATCH, sampler=sampler, drop_last=True)
    return [batch.tolist() for batch in loader]


def run_part(loader: DataLoader, epoch: int, batches: int | None = None) -> list[list[int]]:
    """Iterate like Lightning: ``iter()`` first, then ``set_epoch``, then the batches."""
    iterator = iter(loader)
    loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
    taken = []
    for batch in iterator:
        taken.append(batch.tolist())
        if len(taken) == batches:
            break
    return taken


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_restored_loader_hands_out_the_rest_of_the_saved_epoch(num_workers: int) -> None:
    first = Range(num_workers)
    first.setup()
    assert run_part(first.train_dataloader(), epoch=3, batches=2) == reference_epoch(3)[:2]
    state = first.state_dict()
    assert state == {"train_position": {"epoch": 3, "batches": 2}}

    second = Range(num_workers)
    second.setup()
    second.load_state_dict(state)
    loader = second.train_dataloader()
    assert len(loader) == SIZE // BATCH  # the epoch's length, as Lightning counts it
    assert run_part(loader, epoch=3) == reference_epoch(3)[2:]
    if num_workers == 0:  # the 2 skipped batches were never loaded
        assert second.train_dataset.loaded == SIZE - 2 * BATCH  # type: ignore[union-attr]
    # The restore served one iteration: the next epoch is whole, also with persistent workers.
    assert run_part(loader, epoch=4) == reference_epoch(4)
    assert second.state_dict() == {"train_position": {"epoch": 4, "batches": SIZE // BATCH}}


def test_a_restore_from_another_epoch_skips_nothing() -> None:
    data = Range()
    data.setup()
    data.load_state_dict({"train_position": {"epoch": 2, "batches": 6}})  # epoch 2 was done
    assert run_part(data.train_dataloader(), epoch=3) == reference_epoch(3)


def test_teardown_drops_a_restore_that_no_training_used() -> None:
    data = Range()
    data.setup()
    data.load_state_dict({"train_position": {"epoch": 0, "batches": 3}})
    data.teardown("test")  # e.g. trainer.test(ckpt_path=...) before a fresh fit
    assert run_part(data.train_dataloader(), epoch=0) == reference_epoch(0)


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_resumes_its_shard_under_lightnings_distributed_sampler(rank: int) -> None:
    def distributed_loader(data: Range) -> DataLoader:
        # What Lightning does under DDP with use_distributed_sampler=True: the loader is built
        # inside its hook (so its arguments are recorded) and rebuilt around a wrapped sampler.
        with _replace_dunder_methods(DataLoader, "dataset"):
            loader = data.train_dataloader()
        sampler = DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=rank, seed=0)
        return _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)

    first = Range()
    first.setup()
    loader = distributed_loader(first)
    assert isinstance(loader, ResumableDataLoader) and loader.position is first.train_position
    shard = DistributedSamplerWrapper(
        EpochSeededRandomSampler(SIZE, seed=7), num_replicas=2, rank=rank, seed=0
    )
    expected = reference_epoch(1, shard)
    assert len(expected) == 3  # 12 indices per rank
    assert run_part(loader, epoch=1, batches=1) == expected[:1]

    second = Range()
    second.setup()
    second.load_state_dict(first.state_dict())
    assert run_part(distributed_loader(second), epoch=1) == expected[1:]


class Regression(pl.LightningModule):
    """A plain module that hands Lightning a resumable loader itself (no data module)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x = batch.float().unsqueeze(1) / SIZE
        return ((self.layer(x) - x.sin()) ** 2).mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSeededRandomSampler(SIZE, seed=7)
        return ResumableDataLoader(CountingRange(), batch_size=BATCH, sampler=sampler)


def test_lightning_checkpoints_and_restores_the_loader_itself(tmp_path: Path) -> None:
    def trainer(*callbacks: pl.Callback) -> pl.Trainer:
        return pl.Trainer(
            max_epochs=2,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=bool(callbacks),
            callbacks=list(callbacks),
            default_root_dir=tmp_path,
        )

    torch.manual_seed(0)
    straight = Regression()
    trainer(ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=9, save_top_k=-1)).fit(straight)
    torch.manual_seed(1)
    resumed = Regression()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer().fit(resumed, ckpt_path=tmp_path / "step=9.ckpt")  # epoch 1, batch 3 of 6
    assert not [w for w in caught if "not resumable" in str(w.message)]
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
