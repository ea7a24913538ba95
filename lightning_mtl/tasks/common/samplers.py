"""Samplers whose order depends only on ``(seed, epoch)``, so resumed runs replay it exactly."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EpochSeededRandomSampler", "EpochSeededSampler"]


class EpochSeededSampler(Sampler[int]):
    """Base of the samplers whose draws are a pure function of ``(seed, epoch)``: epoch ``e``
    draws from a private CPU generator seeded with ``seed + e`` (:meth:`epoch_generator`), and
    Lightning calls :meth:`set_epoch` at the start of every training epoch (also on a sampler
    wrapped for distributed training), so a run resumed at an epoch boundary replays the
    uninterrupted run's batches; :class:`~lightning_mtl.tasks.common.ResumableDataLoader` then
    resumes inside an epoch by skipping the indices of the batches already trained on.

    Args:
        seed: Base seed.

    Raises:
        ValueError: If ``seed`` is not an integer.
    """

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"`seed` must be an int, got {type(seed).__name__}.")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the draws of the next iteration.

        Args:
            epoch: Non-negative epoch index (Lightning passes ``trainer.current_epoch``).

        Raises:
            ValueError: If ``epoch`` is not a non-negative integer.

        Example::

            >>> sampler = EpochSeededRandomSampler(4, seed=3)
            >>> sampler.set_epoch(2)
            >>> sampler.epoch
            2
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"`epoch` must be a non-negative int, got {epoch!r}.")
        self.epoch = epoch

    def epoch_generator(self) -> torch.Generator:
        """A private CPU generator seeded with ``seed + epoch``: the draws depend neither on the
        global RNG nor on the device."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return generator


class EpochSeededRandomSampler(EpochSeededSampler):
    """Random permutation of ``range(num_samples)`` drawn from a generator seeded with
    ``seed + epoch``.

    Unlike :class:`torch.utils.data.RandomSampler`, whose order depends on the global RNG state
    and on how many epochs were iterated before, the order here is a pure function of
    ``(seed, epoch)``. Lightning calls :meth:`set_epoch` at the start of every training epoch
    (also on a sampler wrapped for distributed training), so a run resumed from a checkpoint saved
    at an epoch boundary sees exactly the same batches as an uninterrupted run.

    Note that ``seed + epoch`` means different seeds produce shifted copies of the same sequence
    of orders (seed 0 at epoch 1 equals seed 1 at epoch 0); this is harmless for a single run.
    Iterating without ever calling :meth:`set_epoch` repeats the epoch-0 order.

    Args:
        num_samples: Number of indices to permute (the dataset length), ``>= 0``.
        seed: Base seed of the permutation generator.

    Raises:
        ValueError: If ``num_samples`` is negative or an argument is not an integer.

    Example::

        >>> sampler = EpochSeededRandomSampler(5, seed=0)
        >>> first = list(sampler)
        >>> sorted(first)
        [0, 1, 2, 3, 4]
        >>> first == list(sampler)  # same epoch, same order
        True
        >>> sampler.set_epoch(1)
        >>> sorted(sampler) == sorted(first), len(sampler)
        (True, 5)
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int):
            raise ValueError(f"`num_samples` must be an int, got {type(num_samples).__name__}.")
        if num_samples < 0:
            raise ValueError(f"`num_samples` must be >= 0, got {num_samples}.")
        super().__init__(seed)
        self.num_samples = num_samples

    def __iter__(self) -> Iterator[int]:
        """Yield the permutation for the current ``(seed, epoch)``.

        Example::

            >>> list(EpochSeededRandomSampler(3, seed=1)) == list(EpochSeededRandomSampler(3, 1))
            True
        """
        yield from torch.randperm(self.num_samples, generator=self.epoch_generator()).tolist()

    def __len__(self) -> int:
        """Number of indices per epoch.

        Example::

            >>> len(EpochSeededRandomSampler(7))
            7
        """
        return self.num_samples
