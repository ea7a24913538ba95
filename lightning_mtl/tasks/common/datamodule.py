"""The loaders every data module of the package shares."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler
from typing_extensions import override

from lightning_mtl.tasks.common.loader import LoaderPosition, ResumableDataLoader
from lightning_mtl.tasks.common.samplers import EpochSeededRandomSampler


class SplitDataModule(LightningDataModule):
    """A data module whose ``setup`` fills ``train_dataset``, ``val_dataset`` and
    ``test_dataset``; this base provides the loaders.

    Training draws from :meth:`train_sampler` (by default an epoch-seeded shuffle, so a resumed
    run sees the same order) and drops the last incomplete batch when :attr:`drop_last` is set;
    evaluation is unshuffled and keeps every sample. The training loader is a
    :class:`~lightning_mtl.tasks.common.ResumableDataLoader` whose place in the epoch,
    :attr:`train_position`, this module's ``state_dict`` carries into checkpoints: a run resumed
    mid-epoch goes on from the next batch. Subclasses set ``batch_size``, ``num_workers`` and
    ``seed`` in ``__init__``.

    Example::

        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> class Tiny(SplitDataModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.batch_size, self.num_workers, self.seed = 4, 0, 0
        ...     def setup(self, stage=None):
        ...         self.train_dataset = self.val_dataset = TensorDataset(torch.arange(10))
        >>> data = Tiny()
        >>> data.setup()
        >>> len(data.train_dataloader()), len(data.val_dataloader())  # 10 // 4, ceil(10 / 4)
        (2, 3)
    """

    batch_size: int
    num_workers: int
    seed: int
    drop_last: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.train_position = LoaderPosition()
        """Where the training loaders are in the epoch (shared by every one this module builds)."""

    def train_sampler(self, dataset: Dataset) -> Sampler[int]:
        """The training order; an epoch-seeded shuffle unless a subclass balances it."""
        return EpochSeededRandomSampler(len(dataset), seed=self.seed)  # type: ignore[arg-type]

    def train_dataloader(self) -> ResumableDataLoader:
        dataset = _require(self.train_dataset, "train_dataset")
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.train_sampler(dataset),
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            position=self.train_position,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"train_position": self.train_position.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_position" in state_dict:  # absent from checkpoints made before it was saved
            self.train_position.load_state_dict(state_dict["train_position"])

    @override
    def teardown(self, stage: str) -> None:
        # A position restored by validate/test(ckpt_path=...) must not shift a later fit.
        self.train_position.discard_restored()

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(_require(self.val_dataset, "val_dataset"))

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader(_require(self.test_dataset, "test_dataset"))

    def _evaluation_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


def _require(dataset: Dataset | None, name: str) -> Dataset:
    if dataset is None:
        raise RuntimeError(f"`{name}` is not built yet; call `setup()` before the dataloaders.")
    return dataset
