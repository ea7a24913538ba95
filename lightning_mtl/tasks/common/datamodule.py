"""The loaders every data module of the package shares."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_mtl.tasks.common.samplers import EpochSeededRandomSampler


class SplitDataModule(LightningDataModule):
    """A data module whose ``setup`` fills ``train_dataset``, ``val_dataset`` and
    ``test_dataset``; this base provides the loaders.

    Training draws from :meth:`train_sampler` (by default an epoch-seeded shuffle, so a resumed
    run sees the same order) and drops the last incomplete batch when :attr:`drop_last` is set;
    evaluation is unshuffled and keeps every sample. Subclasses set ``batch_size``,
    ``num_workers`` and ``seed`` in ``__init__``.

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

    def train_sampler(self, dataset: Dataset) -> Sampler[int]:
        """The training order; an epoch-seeded shuffle unless a subclass balances it."""
        return EpochSeededRandomSampler(len(dataset), seed=self.seed)  # type: ignore[arg-type]

    def train_dataloader(self) -> DataLoader:
        dataset = _require(self.train_dataset, "train_dataset")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.train_sampler(dataset),
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

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
