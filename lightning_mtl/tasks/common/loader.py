"""A training DataLoader that a checkpoint can stop and resume in the middle of an epoch."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset

__all__ = ["LoaderPosition", "ResumableDataLoader"]


class LoaderPosition:
    """Where a training loader is: the epoch of its latest iteration and how many batches that
    iteration has handed out, plus a restored position waiting for the next iteration.

    A data module keeps one and passes it to each training loader it builds (Lightning rebuilds a
    loader to inject a distributed sampler, and the rebuilt one receives the same object), so the
    data module's own ``state_dict`` / ``load_state_dict`` save and restore it.

    Example::

        >>> position = LoaderPosition()
        >>> position.load_state_dict({"epoch": 3, "batches": 5})
        >>> position.begin(epoch=3)  # the restored epoch: skip its first 5 batches
        5
        >>> position.begin(epoch=4)  # a restore applies to one iteration only
        0
    """

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.batches = 0
        self._restored: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The epoch of the latest iteration and the batches it has handed out."""
        return {"epoch": self.epoch, "batches": self.batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the next iteration, if it is over the saved epoch, after the saved batches."""
        self._restored = {"epoch": state_dict["epoch"], "batches": state_dict["batches"]}

    def discard_restored(self) -> None:
        """Forget a restored position that no iteration has used (a run that did not train)."""
        self._restored = None

    def begin(self, epoch: int | None) -> int:
        """Start an iteration over ``epoch``; the number of its batches already trained on."""
        restored, self._restored = self._restored, None
        same_epoch = restored is not None and restored["epoch"] == epoch
        self.epoch, self.batches = epoch, restored["batches"] if same_epoch else 0
        return self.batches


class ResumableDataLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` over a map-style dataset whose place in the epoch
    is kept in a :class:`LoaderPosition`, so that a run resumed from a mid-epoch checkpoint trains
    on the batches the uninterrupted run would have trained on.

    The position is saved by whoever checkpoints it: the data module that owns it, or Lightning
    itself, which checkpoints a training loader that has ``state_dict`` / ``load_state_dict``
    but restores it only when the loader is built after the checkpoint's loop state is loaded
    (not when ``trainer.estimated_stepping_batches`` built it earlier, in ``configure_optimizers``
    or ``on_fit_start``, as the mixin does; hence the data module's copy). Lightning
    fetches no batch ahead from a loader with a length, so the batches handed out are the batches
    trained on. The first iteration after a restore, if it is over the saved epoch, starts right
    after those batches: their indices are drawn, since the order is a function of the epoch, but
    their samples are not loaded.

    An iteration reads its epoch (the sampler's ``epoch`` attribute, as on
    :class:`~lightning_mtl.tasks.common.EpochSeededSampler` and on the
    :class:`~torch.utils.data.distributed.DistributedSampler` that Lightning wraps around a
    sampler under DDP) and starts drawing only when its first batch is requested: on resume,
    Lightning calls ``iter()`` before ``set_epoch``, and worker processes would otherwise start
    loading the epoch-0 order. Under DDP every process counts its own batches, and all count the
    same, so the position saved by rank 0 restores every rank.

    Args:
        dataset: The map-style dataset.
        args: The other arguments of :class:`~torch.utils.data.DataLoader`.
        position: Where the loader is; ``None`` makes one of its own.
        kwargs: The other arguments of :class:`~torch.utils.data.DataLoader`.

    Example::

        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from lightning_mtl.tasks.common import EpochSeededRandomSampler
        >>> def loader():
        ...     data, sampler = TensorDataset(torch.arange(8)), EpochSeededRandomSampler(8, seed=0)
        ...     return ResumableDataLoader(data, batch_size=2, sampler=sampler)
        >>> first = loader()
        >>> first.sampler.set_epoch(3)
        >>> batches = iter(first)
        >>> seen = [next(batches) for _ in range(3)]
        >>> state = first.state_dict()
        >>> state
        {'epoch': 3, 'batches': 3}
        >>> second = loader()
        >>> second.load_state_dict(state)
        >>> resumed = iter(second)
        >>> second.sampler.set_epoch(3)  # Lightning sets the epoch after iter()
        >>> torch.equal(next(resumed)[0], next(batches)[0]), len(second)
        (True, 4)
    """

    def __init__(
        self,
        dataset: Dataset,
        *args: Any,
        position: LoaderPosition | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, *args, **kwargs)
        self.position = LoaderPosition() if position is None else position
        self._indices = _SkippableIndices(super()._index_sampler)

    def state_dict(self) -> dict[str, Any]:
        """The :class:`LoaderPosition`'s state."""
        return self.position.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the :class:`LoaderPosition` for the next iteration."""
        self.position.load_state_dict(state_dict)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # A generator: nothing is read or drawn until the first batch is requested.
        self._indices.skip = self.position.begin(getattr(self.sampler, "epoch", None))
        try:
            batches = super().__iter__()
        finally:
            self._indices.skip = 0
        for batch in batches:
            self.position.batches += 1
            yield batch

    @property
    def _index_sampler(self) -> _SkippableIndices:
        # Where torch's iterators draw indices from (the batch sampler under automatic batching).
        # They keep this object for persistent workers, so it reads `skip` when iterated.
        return self._indices


class _SkippableIndices:
    """A loader's index source, less the first :attr:`skip` entries of each iteration."""

    def __init__(self, source: Iterable[Any]) -> None:
        self.source = source
        self.skip = 0

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(self.source, self.skip, None)

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]
