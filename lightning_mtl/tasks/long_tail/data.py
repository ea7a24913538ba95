"""Long-tailed training splits: the exponential CIFAR-LT profile, a class-balanced sampler, and
data modules for CIFAR-10/100-LT (from a local copy) and for a long-tailed split of scikit-learn's
digits (bundled, for a recipe that runs in minutes on a CPU).

CIFAR-LT follows Cao et al. (2019, LDAM-DRW): class ``c`` keeps
``n_c = ⌊n_max · (1/ρ)^{c/(C−1)}⌋`` training images, so class 0 is the head (``n_max``) and class
``C − 1`` the tail (``n_max / ρ``); the test set stays balanced and unchanged. Nothing is ever
downloaded here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import Dataset, Sampler, Subset, TensorDataset

from lightning_mtl.extras import optional_import
from lightning_mtl.tasks.common.datamodule import SplitDataModule
from lightning_mtl.tasks.common.files import (
    CIFAR_LAYOUT,
    CIFAR_NUM_CLASSES,
    Labels,
    check_cifar_name,
    check_int,
    labels_array,
    load_cifar,
)
from lightning_mtl.tasks.common.samplers import EpochSeededRandomSampler, EpochSeededSampler

__all__ = [
    "CIFARLongTailDataModule",
    "ClassBalancedSampler",
    "DigitsLongTailDataModule",
    "LongTailTrainSampler",
    "long_tail_counts",
    "long_tail_indices",
]


# Per-channel statistics used by the LDAM-DRW reference code for both CIFAR-10 and CIFAR-100;
# kept identical so that results are comparable with the CIFAR-LT literature.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def long_tail_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """Exponential long-tail profile ``n_c = int(n_max · (1/ρ)^{c/(C−1)})``, ``c = 0 … C−1``.

    Rounding truncates toward zero (Python's ``int``), as the LDAM-DRW reference does; this is
    what the published CIFAR-LT sizes are (12406 training images for CIFAR-10 at ``ρ = 100``).
    Class 0 keeps ``n_max``; the last class keeps ``int(n_max / ρ)``. ``ρ = 1`` is balanced.

    Args:
        n_max: Samples of the head class (>= 1); 5000 for CIFAR-10, 500 for CIFAR-100.
        num_classes: Number of classes ``C`` (>= 2).
        imbalance_ratio: ``ρ = n_max / n_min`` (>= 1); 50, 100 or 200 in the CIFAR-LT protocol.

    Returns:
        The ``C`` counts, non-increasing.

    Raises:
        ValueError: If an argument is out of range or the tail class would get no sample
            (``ρ > n_max``).

    Example::

        >>> long_tail_counts(5000, 10, 100)
        [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
        >>> sum(long_tail_counts(500, 100, 100))  # CIFAR-100-LT, ρ = 100
        10847
    """
    n_max = check_int("n_max", n_max, 1)
    num_classes = check_int("num_classes", num_classes, 2)
    if not (isinstance(imbalance_ratio, int | float) and 1.0 <= imbalance_ratio < float("inf")):
        raise ValueError(
            f"`imbalance_ratio` must be a finite number >= 1, got {imbalance_ratio!r}."
        )
    # Same expression as the reference, (1/ρ)^(c/(C−1)), so float rounding gives the same ints.
    factor = 1.0 / imbalance_ratio
    counts = [int(n_max * factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]
    if counts[-1] < 1:
        raise ValueError(
            f"imbalance_ratio={imbalance_ratio} with n_max={n_max} leaves the tail class with no "
            "sample; use a ratio <= n_max."
        )
    return counts


def long_tail_indices(targets: Labels, counts: Sequence[int]) -> np.ndarray:
    """Indices of the first ``counts[c]`` samples of every class ``c``, in dataset order.

    Taking the *first* samples (rather than a seeded random subset, as the LDAM-DRW reference
    does with ``np.random.seed(0)``) makes the split a pure function of the data order, independent
    of any RNG; the class sizes, which define the benchmark, are the same.

    Args:
        targets: ``[N]`` integer labels in ``[0, len(counts))``.
        counts: Samples to keep per class (each >= 0).

    Returns:
        Sorted int64 array of the kept indices (``sum(counts)`` of them).

    Raises:
        ValueError: If a label is out of range, a count is negative, or a class has fewer samples
            than requested.

    Example::

        >>> long_tail_indices([0, 1, 0, 2, 1, 0, 2], [2, 1, 0])
        array([0, 1, 2])
        >>> long_tail_indices([2, 0, 0, 1, 0], [3, 1, 1]).tolist()
        [0, 1, 2, 3, 4]
    """
    labels = labels_array(targets)
    wanted = np.asarray(counts, dtype=np.int64)
    if wanted.ndim != 1 or (wanted < 0).any():
        raise ValueError(f"`counts` must be a 1-D sequence of ints >= 0, got {list(counts)}.")
    num_classes = wanted.size
    if labels.size and labels.max() >= num_classes:
        raise ValueError(
            f"`targets` has label {int(labels.max())} but `counts` covers {num_classes} classes."
        )
    available = np.bincount(labels, minlength=num_classes)
    short = np.flatnonzero(available < wanted)
    if short.size:
        c = int(short[0])
        raise ValueError(
            f"class {c} has {int(available[c])} samples but {int(wanted[c])} were requested "
            f"({short.size} class(es) too small)."
        )
    # Rank of every sample within its class (0 for its first occurrence), without a Python loop:
    # a stable sort groups classes while keeping dataset order inside each class.
    order = np.argsort(labels, kind="stable")
    class_start = np.concatenate(([0], np.cumsum(available)[:-1]))
    rank = np.empty_like(labels)
    rank[order] = np.arange(labels.size) - class_start[labels[order]]
    return np.flatnonzero(rank < wanted[labels]).astype(np.int64)


class ClassBalancedSampler(EpochSeededSampler):
    """Class-aware sampling for classifier re-training (cRT, Kang et al., 2020).

    Every draw picks a class uniformly among the classes present in ``targets``, then one of its
    samples uniformly, independently (with replacement), so each class fills about ``1/K`` of
    every batch however rare it is. The order is a pure function of ``(seed, epoch)``, like
    :class:`~lightning_mtl.tasks.common.samplers.EpochSeededRandomSampler`; Lightning calls
    :meth:`set_epoch` every epoch.

    Args:
        targets: ``[N]`` integer labels of the dataset being sampled.
        num_samples: Draws per epoch (>= 1); ``None`` means ``N``, so an epoch has as many steps
            as with ordinary shuffling.
        seed: Base seed; epoch ``e`` uses ``seed + e``.

    Raises:
        ValueError: If ``targets`` is empty or an argument is out of range.

    Example::

        >>> sampler = ClassBalancedSampler([0] * 98 + [1, 2], num_samples=3000, seed=0)
        >>> counts = torch.bincount(torch.tensor([sampler.targets[i] for i in sampler]))
        >>> bool((counts - 1000).abs().max() < 100), len(sampler)
        (True, 3000)
    """

    def __init__(self, targets: Labels, num_samples: int | None = None, seed: int = 0) -> None:
        super().__init__(seed)
        labels = labels_array(targets)
        if labels.size == 0:
            raise ValueError("`targets` is empty; there is nothing to sample.")
        self.num_samples = labels.size if num_samples is None else num_samples
        check_int("num_samples", self.num_samples, 1)
        self.targets = labels
        counts = np.bincount(labels)
        self.classes = np.flatnonzero(counts)
        # Dataset indices grouped by class; class k's samples sit at offsets[k] .. offsets[k]+n_k.
        self._grouped = torch.from_numpy(np.argsort(labels, kind="stable"))
        present = counts[self.classes]
        self._sizes = torch.from_numpy(present)
        self._offsets = torch.from_numpy(np.concatenate(([0], np.cumsum(present)[:-1])))

    def __iter__(self) -> Iterator[int]:
        """Yield ``num_samples`` dataset indices for the current ``(seed, epoch)``.

        Example::

            >>> list(ClassBalancedSampler([0, 1, 1], seed=4)) == list(ClassBalancedSampler(
            ...     [0, 1, 1], seed=4))
            True
        """
        generator = self.epoch_generator()
        klass = torch.randint(len(self._sizes), (self.num_samples,), generator=generator)
        # floor(u · n_k) is uniform on 0 … n_k − 1; the clamp guards against u rounding to 1.
        u = torch.rand(self.num_samples, generator=generator, dtype=torch.float64)
        within = (u * self._sizes[klass]).long().clamp(max=self._sizes[klass] - 1)
        yield from self._grouped[self._offsets[klass] + within].tolist()

    def __len__(self) -> int:
        """Draws per epoch.

        Example::

            >>> len(ClassBalancedSampler([0, 1, 1], num_samples=8))
            8
        """
        return self.num_samples


class LongTailTrainSampler(Sampler[int]):
    """The training order of the long-tailed data modules: an instance-uniform shuffle
    (:class:`~lightning_mtl.tasks.common.samplers.EpochSeededRandomSampler`) or class-balanced draws
    (:class:`ClassBalancedSampler`), chosen by :attr:`class_balanced` each time an epoch's
    iteration starts.

    Both orders have ``N`` draws and are pure functions of ``(seed, epoch)``, so switching
    between epochs (cRT's second stage, see
    :class:`~lightning_mtl.tasks.long_tail.ClassifierRetraining`) needs no new DataLoader, and a
    resumed run replays the same batches.

    Args:
        targets: ``[N]`` integer labels of the dataset being sampled.
        seed: Base seed of both orders.
        class_balanced: Start with class-balanced draws.

    Example::

        >>> sampler = LongTailTrainSampler([0] * 8 + [1, 2], seed=0)
        >>> sorted(sampler) == list(range(10))  # a permutation: every instance once
        True
        >>> sampler.class_balanced = True
        >>> draws = [sampler.targets[i] for i in sampler]
        >>> len(draws), draws.count(0) < 8
        (10, True)
    """

    def __init__(self, targets: Labels, seed: int = 0, class_balanced: bool = False) -> None:
        labels = labels_array(targets)
        self.targets = labels
        self.instance = EpochSeededRandomSampler(int(labels.size), seed=seed)
        self.balanced = ClassBalancedSampler(labels, seed=seed)
        self.class_balanced = bool(class_balanced)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration draws for."""
        return self.instance.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the draws of the next iteration (Lightning calls it every epoch).

        Example::

            >>> sampler = LongTailTrainSampler([0, 1, 1])
            >>> sampler.set_epoch(2)
            >>> sampler.epoch, sampler.balanced.epoch
            (2, 2)
        """
        self.instance.set_epoch(epoch)
        self.balanced.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        # A generator: the mode is read when the epoch's first index is drawn.
        yield from self.balanced if self.class_balanced else self.instance

    def __len__(self) -> int:
        """``N`` draws per epoch in either mode."""
        return int(self.targets.size)


def _check_loader_args(batch_size: int, num_workers: int, seed: int) -> None:
    """Shared argument checks of the two data modules."""
    check_int("batch_size", batch_size, 1)
    check_int("num_workers", num_workers, 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an int, got {type(seed).__name__}.")


class _LongTailDataModule(SplitDataModule):
    """What the long-tailed data modules share: a :class:`LongTailTrainSampler` that follows the
    :attr:`class_balanced` switch."""

    seed: int
    train_order: LongTailTrainSampler | None = None
    """The sampler of the latest training DataLoader."""
    _class_balanced: bool = False

    @property
    def class_balanced(self) -> bool:
        """Whether training draws classes uniformly (cRT) rather than instances. Setting it
        between epochs switches the live sampler: the next epoch draws in the new mode."""
        return self._class_balanced

    @class_balanced.setter
    def class_balanced(self, value: bool) -> None:
        self._class_balanced = bool(value)
        if self.train_order is not None:
            self.train_order.class_balanced = self._class_balanced

    def _new_train_order(self, targets: Labels) -> LongTailTrainSampler:
        self.train_order = LongTailTrainSampler(targets, self.seed, self.class_balanced)
        return self.train_order


class CIFARLongTailDataModule(_LongTailDataModule):
    """CIFAR-10-LT / CIFAR-100-LT (Cao et al., 2019) from a local copy of CIFAR.

    ``root`` must hold torchvision's layout: ``root/cifar-10-batches-py/`` (``data_batch_1`` …
    ``data_batch_5``, ``test_batch``, ``batches.meta``) or ``root/cifar-100-python/`` (``train``,
    ``test``, ``meta``). It is read with ``torchvision.datasets.CIFAR10/100(root,
    download=False)``, which also verifies the files' MD5 sums. Nothing is downloaded.

    The training split keeps the first :func:`long_tail_counts` images of each class, in the
    original order (:func:`long_tail_indices`); class 0 is the head. Validation and test both use
    the full, balanced CIFAR test set (the CIFAR-LT protocol has no separate validation split), so
    validation metrics are test metrics. Training images get the standard augmentation (random
    32×32 crop with 4-pixel zero padding, horizontal flip); all images are normalised with the
    LDAM-DRW statistics (:data:`CIFAR_MEAN`, :data:`CIFAR_STD`). Augmentations use torch's global
    RNG (per worker), so seed runs with ``lightning.seed_everything(seed, workers=True)``.

    The training order comes from :class:`LongTailTrainSampler`, seeded with ``seed``: an
    instance-uniform shuffle, or class-balanced draws while :attr:`class_balanced` is true (cRT's
    classifier re-training). The attribute may be changed between epochs (as
    :class:`~lightning_mtl.tasks.long_tail.ClassifierRetraining` does); the live sampler follows it.

    Args:
        root: Folder that contains the CIFAR folder.
        dataset: ``"cifar10"`` or ``"cifar100"``.
        imbalance_ratio: ``ρ = n_max / n_min`` (>= 1); 50, 100 or 200 in the protocol.
        batch_size: Samples per batch; 64 in PLOT's CIFAR experiments.
        class_balanced: Sample classes uniformly (cRT) instead of instances.
        max_per_class: Head-class size ``n_max``; ``None`` means all of it (5000 / 500).
        num_workers: DataLoader worker processes.
        seed: Seed of the training sampler.
        drop_last: Drop the last incomplete training batch (the LDAM-DRW reference does not).

    Raises:
        ValueError: If an argument is out of range.

    Example::

        >>> dm = CIFARLongTailDataModule("/data", dataset="cifar10", imbalance_ratio=100)
        >>> dm.class_counts  # available before setup: a function of the arguments
        [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
        >>> dm.num_classes, sum(CIFARLongTailDataModule("/data", "cifar100", 200).class_counts)
        (10, 9502)
    """

    def __init__(
        self,
        root: str | Path,
        dataset: Literal["cifar10", "cifar100"] = "cifar10",
        imbalance_ratio: float = 100,
        batch_size: int = 64,
        class_balanced: bool = False,
        max_per_class: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        check_cifar_name(dataset)
        _check_loader_args(batch_size, num_workers, seed)
        full_size = CIFAR_LAYOUT[dataset][2]
        n_max = full_size if max_per_class is None else max_per_class
        # Validates the ratio and n_max now rather than at setup.
        self._class_counts = long_tail_counts(n_max, CIFAR_NUM_CLASSES[dataset], imbalance_ratio)
        self.save_hyperparameters()
        self.root = Path(root)
        self.dataset = dataset
        self.imbalance_ratio = imbalance_ratio
        self.batch_size = batch_size
        self.class_balanced = class_balanced
        self.num_workers = num_workers
        self.seed = seed
        self.drop_last = drop_last
        self.train_dataset: Subset | None = None
        self.train_targets: np.ndarray | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    @property
    def num_classes(self) -> int:
        """10 or 100."""
        return CIFAR_NUM_CLASSES[self.dataset]

    @property
    def class_counts(self) -> list[int]:
        """Training images per class (the long-tail profile), class 0 first."""
        return list(self._class_counts)

    def setup(self, stage: str | None = None) -> None:
        """Read the data and build the long-tailed training split (idempotent).

        Args:
            stage: Lightning stage or ``None``; every split is built regardless.

        Raises:
            FileNotFoundError: If the CIFAR folder or one of its files is missing.
            RuntimeError: If the files fail torchvision's MD5 check.
            ValueError: If the data has fewer images of a class than the profile needs.

        Example::

            >>> CIFARLongTailDataModule("/nonexistent").setup()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            FileNotFoundError: CIFAR10 not found under '/nonexistent': expected the folder ...
        """
        if self.train_dataset is not None:
            return
        transforms = optional_import("torchvision.transforms", "long_tail")
        normalize = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
        train_transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        )
        test_transform = transforms.Compose([transforms.ToTensor(), normalize])
        full_train = load_cifar(self.root, self.dataset, True, train_transform)
        targets = np.asarray(full_train.targets, dtype=np.int64)  # type: ignore[attr-defined]
        indices = long_tail_indices(targets, self._class_counts)
        self.train_dataset = Subset(full_train, indices.tolist())
        self.train_targets = targets[indices]
        self.test_dataset = load_cifar(self.root, self.dataset, False, test_transform)
        self.val_dataset = self.test_dataset

    def train_sampler(self, dataset: Dataset) -> Sampler[int]:
        """Instance-uniform (epoch-seeded) or, for cRT, class-balanced: a
        :class:`LongTailTrainSampler` that follows :attr:`class_balanced`."""
        assert self.train_targets is not None
        return self._new_train_order(self.train_targets)


# Pixel values of load_digits are integer counts in [0, 16].
_DIGITS_MAX_PIXEL = 16.0


def _digits_dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    """Flat ``[N, 64]`` pixel counts → ``[N, 1, 8, 8]`` float32 images in [0, 1], int64 labels."""
    x = torch.from_numpy(images / _DIGITS_MAX_PIXEL).to(torch.float32).reshape(-1, 1, 8, 8)
    return TensorDataset(x, torch.from_numpy(labels).to(torch.int64))


class DigitsLongTailDataModule(_LongTailDataModule):
    """A long-tailed training split of scikit-learn's 8×8 digits, with a balanced validation set.

    The 1797 bundled images (174–183 per class) are shuffled once with ``seed``; the first
    ``val_per_class`` images of every class form the balanced validation set, and of the rest the
    first :func:`long_tail_counts` ``(max_per_class, 10, imbalance_ratio)`` images of class ``c``
    form the training set (class 0 is the head); after :meth:`setup`, ``train_indices`` and
    ``val_indices`` hold the chosen positions in ``load_digits`` order. The test set is the
    validation set unless ``test_per_class > 0``: then the next ``test_per_class`` images of
    every class form a separate balanced test set (``test_indices``), so that hyper-parameters
    chosen on the validation set are scored on images not used for the choice. Images are
    ``[1, 8, 8]`` float32 in ``[0, 1]``. Nothing is downloaded; a recipe on it runs in minutes
    on a CPU. Ratios of 10–50 give a visible Many/Medium/Few split with the
    defaults; at ρ = 20 the CIFAR thresholds (> 100 many, < 20 few) leave a single many-shot
    class, so pass e.g. ``many_threshold=60, few_threshold=15`` to ``LongTailAccuracy`` for a
    3 / 4 / 3 split.

    Args:
        imbalance_ratio: ``ρ`` (>= 1, at most ``max_per_class``); default 20.
        batch_size: Samples per batch.
        class_balanced: Sample classes uniformly (cRT) instead of instances.
        max_per_class: Head-class size; at most ``174 − val_per_class``.
        val_per_class: Validation images per class (>= 1).
        test_per_class: Test images per class apart from the validation ones (0: the test set is
            the validation set); ``max_per_class + val_per_class + test_per_class`` is at most 174.
        num_workers: DataLoader worker processes.
        seed: Seed of the shuffle and of the training sampler.
        drop_last: Drop the last incomplete training batch.

    Raises:
        ValueError: If an argument is out of range.

    Example::

        >>> dm = DigitsLongTailDataModule(imbalance_ratio=20)
        >>> dm.class_counts
        [140, 100, 71, 51, 36, 26, 19, 13, 9, 7]
        >>> dm.setup("fit")
        >>> len(dm.train_dataset), len(dm.val_dataset)
        (472, 300)
    """

    # The smallest class of load_digits has 174 images.
    _SMALLEST_CLASS = 174

    def __init__(
        self,
        imbalance_ratio: float = 20,
        batch_size: int = 64,
        class_balanced: bool = False,
        max_per_class: int = 140,
        val_per_class: int = 30,
        num_workers: int = 0,
        seed: int = 0,
        drop_last: bool = False,
        test_per_class: int = 0,
    ) -> None:
        super().__init__()
        _check_loader_args(batch_size, num_workers, seed)
        check_int("val_per_class", val_per_class, 1)
        check_int("test_per_class", test_per_class, 0)
        check_int("max_per_class", max_per_class, 1)
        if max_per_class + val_per_class + test_per_class > self._SMALLEST_CLASS:
            raise ValueError(
                f"max_per_class + val_per_class + test_per_class = "
                f"{max_per_class + val_per_class + test_per_class} exceeds the "
                f"{self._SMALLEST_CLASS} images of the smallest digits class."
            )
        self._class_counts = long_tail_counts(max_per_class, 10, imbalance_ratio)
        self.save_hyperparameters()
        self.imbalance_ratio = imbalance_ratio
        self.batch_size = batch_size
        self.class_balanced = class_balanced
        self.val_per_class = val_per_class
        self.test_per_class = test_per_class
        self.num_workers = num_workers
        self.seed = seed
        self.drop_last = drop_last
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None
        self.test_dataset: TensorDataset | None = None
        self.train_indices: np.ndarray | None = None
        self.val_indices: np.ndarray | None = None
        self.test_indices: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        """Number of digit classes (10)."""
        return 10

    @property
    def class_counts(self) -> list[int]:
        """Training images per class, class 0 first."""
        return list(self._class_counts)

    def setup(self, stage: str | None = None) -> None:
        """Load the bundled digits and build the splits (idempotent).

        Args:
            stage: Lightning stage or ``None``; every split is built regardless.

        Example::

            >>> dm = DigitsLongTailDataModule(imbalance_ratio=10, seed=1)
            >>> dm.setup()
            >>> torch.bincount(dm.train_dataset.tensors[1]).tolist() == dm.class_counts
            True
        """
        if self.train_dataset is not None:
            return
        images, labels = load_digits(return_X_y=True)
        perm = np.random.default_rng(self.seed).permutation(labels.size)
        images, labels = images[perm], labels[perm].astype(np.int64)
        val_idx = long_tail_indices(labels, [self.val_per_class] * 10)
        rest = np.setdiff1d(np.arange(labels.size), val_idx)  # sorted: keeps the shuffled order
        test_idx = rest[long_tail_indices(labels[rest], [self.test_per_class] * 10)]
        rest = np.setdiff1d(rest, test_idx)
        train_idx = rest[long_tail_indices(labels[rest], self._class_counts)]
        # Positions in load_digits' order, kept so the split can be inspected and reproduced.
        self.train_indices, self.val_indices = perm[train_idx], perm[val_idx]
        self.train_dataset = _digits_dataset(images[train_idx], labels[train_idx])
        self.val_dataset = _digits_dataset(images[val_idx], labels[val_idx])
        self.test_dataset = self.val_dataset
        if self.test_per_class:
            self.test_indices = perm[test_idx]
            self.test_dataset = _digits_dataset(images[test_idx], labels[test_idx])

    def train_sampler(self, dataset: Dataset) -> Sampler[int]:
        """Instance-uniform (epoch-seeded) or class-balanced: a :class:`LongTailTrainSampler`
        that follows :attr:`class_balanced` (which may change between epochs).

        Example::

            >>> dm = DigitsLongTailDataModule(batch_size=32, class_balanced=True)
            >>> dm.setup()
            >>> images, labels = next(iter(dm.train_dataloader()))
            >>> tuple(images.shape), labels.dtype
            ((32, 1, 8, 8), torch.int64)
        """
        targets = dataset.tensors[1].numpy()  # type: ignore[attr-defined]
        return self._new_train_order(targets)
