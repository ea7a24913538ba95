"""Generalized category discovery (GCD) data: the labeled / unlabeled split, a sampler balancing
the two parts, and data modules for scikit-learn's digits and for CIFAR-10/100 (local copy).

The split follows the GCD / SimGCD protocol (Vaze et al., 2022; Wen et al., 2023): the training
set's classes are divided into *old* (known) and *new* classes; half of the training images of
every old class are labeled, and everything else in the training set (the other half of the
old-class images and every new-class image) is unlabeled. Old classes are renumbered
``0 … K_old − 1`` and new classes ``K_old … K − 1``. The model is scored on the unlabeled
training images (transductive protocol), so the evaluation loaders of the data modules here
iterate those images, unaugmented, with their true (renumbered) labels and an ``is_old`` flag;
:class:`~lightning_mtl.tasks.gcd.ClusterAccuracy` with ``old_classes=K_old`` consumes them directly.
Nothing is ever downloaded here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from lightning_mtl.extras import optional_import
from lightning_mtl.tasks.common.datamodule import SplitDataModule
from lightning_mtl.tasks.common.files import (
    CIFAR_NUM_CLASSES,
    Labels,
    check_cifar_name,
    check_int,
    labels_array,
    load_cifar,
)
from lightning_mtl.tasks.common.samplers import EpochSeededSampler

__all__ = [
    "GCD_IMAGENET_MEAN",
    "GCD_IMAGENET_STD",
    "BalancedLabeledSampler",
    "CIFARGCDDataModule",
    "DigitsGCDDataModule",
    "GCDDataModule",
    "GCDSplit",
    "gcd_split",
    "gcd_transforms",
]


# The GCD / SimGCD reference code normalises every data set (CIFAR included) with the ImageNet
# statistics of its DINO backbone; kept so that results are comparable with the literature.
GCD_IMAGENET_MEAN = (0.485, 0.456, 0.406)
GCD_IMAGENET_STD = (0.229, 0.224, 0.225)
# The reference resizes to image_size / crop_pct, then crops image_size (36 → 32 for CIFAR).
_CROP_PCT = 0.875

# Old classes of the standard benchmarks: CIFAR-10 0–4, CIFAR-100 0–79; digits 0–4 here.
_DEFAULT_NUM_OLD = {"cifar10": 5, "cifar100": 80, "digits": 5}

_IMAGE_SIDE = 8
_CIFAR_IMAGE_SIZE = 32
_MAX_PIXEL = 16.0  # load_digits pixels are counts in [0, 16]


@dataclass(frozen=True, eq=False)
class GCDSplit:
    """The labeled / unlabeled partition of a GCD training set and its class renumbering.

    Attributes:
        labeled_indices: Sorted int64 indices of the labeled samples (old classes only).
        unlabeled_indices: Sorted int64 indices of every other training sample.
        class_map: Original class id → GCD id; old classes (ascending) get ``0 … num_old − 1``,
            new classes (ascending) ``num_old … num_classes − 1``.
        num_old: Number of old classes ``K_old``.
        num_classes: Number of classes ``K`` (old and new).
    """

    labeled_indices: np.ndarray
    unlabeled_indices: np.ndarray
    class_map: dict[int, int]
    num_old: int
    num_classes: int

    @property
    def num_samples(self) -> int:
        """Size of the training set (labeled + unlabeled)."""
        return int(self.labeled_indices.size + self.unlabeled_indices.size)

    def labeled_mask(self) -> np.ndarray:
        """``[N]`` bool mask, True at the labeled samples.

        Example::

            >>> gcd_split([0, 0, 1, 1], old_classes=[0], seed=0).labeled_mask().tolist()
            [False, True, False, False]
        """
        mask = np.zeros(self.num_samples, dtype=bool)
        mask[self.labeled_indices] = True
        return mask

    def remap(self, targets: Labels) -> np.ndarray:
        """Renumber original labels with :attr:`class_map`.

        Args:
            targets: Original integer labels, each a key of :attr:`class_map`.

        Returns:
            int64 array of GCD labels.

        Raises:
            ValueError: If a label is not in :attr:`class_map`.

        Example::

            >>> gcd_split([3, 1, 2, 0], old_classes=[2, 3]).remap([0, 1, 2, 3]).tolist()
            [2, 3, 0, 1]
        """
        labels = labels_array(targets)
        table = np.full(max(self.class_map) + 1, -1, dtype=np.int64)
        for original, new in self.class_map.items():
            table[original] = new
        unknown = labels[(labels >= table.size) | (table[np.minimum(labels, table.size - 1)] < 0)]
        if unknown.size:
            raise ValueError(f"label {int(unknown[0])} is not in the split's `class_map`.")
        return table[labels]


def gcd_split(
    targets: Labels,
    old_classes: Sequence[int],
    labeled_fraction: float = 0.5,
    seed: int = 0,
) -> GCDSplit:
    """Split a training set into labeled and unlabeled parts (GCD / SimGCD protocol).

    For every old class ``c`` with ``n_c`` training samples, exactly ``⌊labeled_fraction · n_c⌋``
    of them, drawn without replacement by a NumPy generator seeded with ``seed``, are labeled
    (classes are visited in ascending order, so the split is a pure function of the arguments).
    The product is computed exactly on the fraction's decimal value (``Fraction(repr(f))``), so
    ``0.29 · 100`` gives 29, not the 28 of binary floating point; with the default 0.5 an odd
    class rounds down (7 samples → 3 labeled). All other samples are unlabeled. Sampling per class
    keeps the labeled set exactly stratified; the SimGCD reference instead draws
    ``int(0.5 · N_old)`` samples from the pooled old-class images, which gives the same total up
    to one sample and only approximately 50% per class.

    Args:
        targets: ``[N]`` non-negative integer training labels.
        old_classes: The distinct old class ids (may be empty: pure clustering). Old classes
            absent from ``targets`` still count as old (they get an id but no sample).
        labeled_fraction: Fraction of each old class that is labeled, in ``(0, 1]``.
        seed: Seed of the per-class sampling.

    Returns:
        The :class:`GCDSplit`; ``class_map`` covers the old classes and every label present.

    Raises:
        ValueError: If the labels, classes or fraction are malformed.

    Example::

        >>> targets = [0, 0, 0, 0, 1, 1, 1, 2, 2, 3]
        >>> split = gcd_split(targets, old_classes=[0, 1], seed=0)
        >>> len(split.labeled_indices), len(split.unlabeled_indices)  # ⌊4/2⌋ + ⌊3/2⌋ = 3
        (3, 7)
        >>> split.class_map, split.num_old, split.num_classes
        ({0: 0, 1: 1, 2: 2, 3: 3}, 2, 4)
        >>> gcd_split([5, 5, 7, 9], old_classes=[9, 7]).class_map  # old first, each ascending
        {7: 0, 9: 1, 5: 2}
    """
    labels = labels_array(targets)
    try:
        old = [int(c) for c in old_classes]
    except TypeError:
        raise ValueError(
            f"`old_classes` must be a sequence of ints, got {old_classes!r}."
        ) from None
    if any(isinstance(c, bool) or not isinstance(c, int | np.integer) for c in old_classes):
        raise ValueError(f"`old_classes` must hold ints, got {list(old_classes)!r}.")
    if len(set(old)) != len(old) or any(c < 0 for c in old):
        raise ValueError(f"`old_classes` must be distinct non-negative ints, got {old}.")
    if (
        isinstance(labeled_fraction, bool)
        or not isinstance(labeled_fraction, int | float)
        or not 0.0 < labeled_fraction <= 1.0
    ):
        raise ValueError(f"`labeled_fraction` must be in (0, 1], got {labeled_fraction!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}.")

    fraction = Fraction(repr(float(labeled_fraction)))
    rng = np.random.default_rng(int(seed))
    old_sorted = sorted(old)
    picked = []
    for c in old_sorted:
        members = np.flatnonzero(labels == c)
        count = int(fraction * members.size)  # floor: both factors are non-negative
        picked.append(rng.choice(members, size=count, replace=False))
    labeled = np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.empty(0, np.int64)
    mask = np.zeros(labels.size, dtype=bool)
    mask[labeled] = True
    unlabeled = np.flatnonzero(~mask).astype(np.int64)
    new_sorted = sorted(set(np.unique(labels).tolist()) - set(old))
    class_map = {c: i for i, c in enumerate(old_sorted + new_sorted)}
    return GCDSplit(labeled, unlabeled, class_map, len(old_sorted), len(class_map))


def gcd_transforms(
    image_size: int,
    color_jitter: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
) -> tuple[Callable[[Any], Tensor], Callable[[Any], Tensor]]:
    """The GCD / SimGCD image transforms (``get_transform("imagenet")`` of the reference code).

    With ``r = int(image_size / 0.875)`` (256 for 224, 36 for 32):

    * training: ``Resize(r, bicubic)``, ``RandomCrop(image_size)``, ``RandomHorizontalFlip()``,
      ``ColorJitter(*color_jitter)``, ``ToTensor()``, ``Normalize`` with the ImageNet statistics
      (:data:`GCD_IMAGENET_MEAN`, :data:`GCD_IMAGENET_STD`);
    * evaluation: ``Resize(r, bicubic)``, ``CenterCrop(image_size)``, ``ToTensor()``,
      ``Normalize``.

    ``Resize`` with one size scales the *shorter* side to ``r``, so non-square images keep their
    aspect ratio before the crop. The reference's argument-less ``ColorJitter()`` changes nothing;
    the default ``color_jitter`` keeps that no-op (``(0.4, 0.4, 0.4, 0.1)`` is a real jitter).
    Both take a PIL image and return a float32 ``[3, image_size, image_size]`` tensor (for RGB
    input). Augmentations draw from torch's global RNG.

    Args:
        image_size: Side of the output crop (>= 1); 224 for the fine-grained benchmarks, 32 for
            CIFAR.
        color_jitter: ``(brightness, contrast, saturation, hue)`` of the training jitter.

    Returns:
        ``(train_transform, eval_transform)``.

    Raises:
        ValueError: If ``image_size`` is not a positive int or ``color_jitter`` has not 4 values.

    Example::

        >>> from PIL import Image
        >>> train, evaluate = gcd_transforms(16)
        >>> image = Image.new("RGB", (40, 20), color=(255, 0, 0))
        >>> tuple(train(image).shape), tuple(evaluate(image).shape)
        ((3, 16, 16), (3, 16, 16))
        >>> evaluate.transforms[0].size  # int(16 / 0.875)
        18
    """
    transforms = optional_import("torchvision.transforms", "gcd")
    check_int("image_size", image_size, 1)
    jitter = tuple(float(value) for value in color_jitter)
    if len(jitter) != 4:
        raise ValueError(f"`color_jitter` must hold 4 values, got {color_jitter!r}.")
    bicubic = transforms.InterpolationMode.BICUBIC
    resize = int(image_size / _CROP_PCT)
    normalize = transforms.Normalize(GCD_IMAGENET_MEAN, GCD_IMAGENET_STD)
    train = transforms.Compose(
        [
            transforms.Resize(resize, interpolation=bicubic),
            transforms.RandomCrop(image_size),
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.ColorJitter(*jitter),
            transforms.ToTensor(),
            normalize,
        ]
    )
    evaluate = transforms.Compose(
        [
            transforms.Resize(resize, interpolation=bicubic),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize,
        ]
    )
    return train, evaluate


class BalancedLabeledSampler(EpochSeededSampler):
    """Weighted sampling that gives the labeled and the unlabeled part equal probability (SimGCD).

    Every labeled sample has weight ``1 / |labeled|`` and every unlabeled one ``1 / |unlabeled|``,
    so each draw is labeled with probability 1/2 however unequal the parts are (with a single
    non-empty part, sampling is uniform over it). Draws are independent, with replacement, like
    SimGCD's ``WeightedRandomSampler(weights, num_samples=len(dataset))``, but the order is a pure
    function of ``(seed, epoch)``: epoch ``e`` uses a private generator seeded with ``seed + e``,
    and Lightning calls :meth:`set_epoch` every epoch.

    Args:
        is_labeled: ``[N]`` bools, True at the labeled samples.
        num_samples: Draws per epoch (>= 1); ``None`` means ``N`` (one epoch's worth).
        seed: Base seed.

    Raises:
        ValueError: If ``is_labeled`` is empty or not 1-D, or an argument is out of range.

    Example::

        >>> sampler = BalancedLabeledSampler([True] * 10 + [False] * 90, num_samples=4000)
        >>> draws = torch.tensor(list(sampler))
        >>> bool(abs((draws < 10).float().mean() - 0.5) < 0.05), len(sampler)
        (True, 4000)
    """

    def __init__(
        self,
        is_labeled: Sequence[bool] | np.ndarray | Tensor,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if isinstance(is_labeled, Tensor):
            is_labeled = is_labeled.detach().cpu().numpy()
        mask = np.asarray(is_labeled)
        if mask.ndim != 1 or mask.size == 0:
            raise ValueError(f"`is_labeled` must be a non-empty 1-D mask, got shape {mask.shape}.")
        if mask.dtype != np.bool_ and not np.isin(mask, (0, 1)).all():
            raise ValueError(f"`is_labeled` must hold bools, got dtype {mask.dtype}.")
        mask = mask.astype(bool)
        self.num_samples = mask.size if num_samples is None else num_samples
        check_int("num_samples", self.num_samples, 1)
        self.is_labeled = mask
        num_labeled = int(mask.sum())
        num_unlabeled = mask.size - num_labeled
        weights = np.where(
            mask, 1.0 / max(num_labeled, 1), 1.0 / max(num_unlabeled, 1)
        )  # SimGCD's sample weights
        self.weights = torch.from_numpy(weights).to(torch.float64)

    def __iter__(self) -> Iterator[int]:
        """Yield ``num_samples`` indices for the current ``(seed, epoch)``.

        Example::

            >>> a = BalancedLabeledSampler([True, False, False], seed=3)
            >>> list(a) == list(BalancedLabeledSampler([True, False, False], seed=3))
            True
        """
        generator = self.epoch_generator()
        draws = torch.multinomial(
            self.weights, self.num_samples, replacement=True, generator=generator
        )
        yield from draws.tolist()

    def __len__(self) -> int:
        """Draws per epoch.

        Example::

            >>> len(BalancedLabeledSampler([True, False], num_samples=6))
            6
        """
        return self.num_samples


class _GCDTrainSet(Dataset):
    """Every training sample as ``(image or views, GCD label, is_labeled)``.

    With ``transform`` the first item is ``torch.stack([transform(x), transform(x)])``
    (``[2, C, H, W]``); without, the raw image. The label is the true GCD label for every sample;
    models must only use it where ``is_labeled`` is True.
    """

    def __init__(
        self,
        images: Callable[[int], Any],
        labels: np.ndarray,
        is_labeled: np.ndarray,
        transform: Callable[[Any], Tensor] | None,
    ) -> None:
        self.images, self.transform = images, transform
        self.labels = torch.from_numpy(labels).to(torch.int64)
        self.is_labeled = torch.from_numpy(is_labeled)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image = self.images(index)
        if self.transform is not None:
            image = torch.stack([self.transform(image), self.transform(image)])
        return image, self.labels[index], self.is_labeled[index]


class _GCDEvalSet(Dataset):
    """The images at ``indices`` as ``(image, GCD label, is_old)``, unaugmented."""

    def __init__(
        self,
        images: Callable[[int], Any],
        indices: np.ndarray,
        labels: np.ndarray,
        num_old: int,
        transform: Callable[[Any], Tensor] | None,
    ) -> None:
        self.images, self.transform = images, transform
        self.indices = indices
        self.labels = torch.from_numpy(labels[indices]).to(torch.int64)
        self.is_old = self.labels < num_old

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[Tensor, Tensor, Tensor]:
        image = self.images(int(self.indices[position]))
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[position], self.is_old[position]


class _Reindexed:
    """The image getter of a subset: item ``i`` is ``images(positions[i])``."""

    def __init__(self, images: Callable[[int], Any], positions: np.ndarray) -> None:
        self.images, self.positions = images, positions

    def __call__(self, index: int) -> Any:
        return self.images(int(self.positions[index]))


class GCDDataModule(SplitDataModule, ABC):
    """Base of the GCD data modules: split, balanced training sampler, transductive evaluation.

    Subclasses implement :meth:`_load`, returning an image getter over the training set and its
    original labels, and may override :meth:`_train_transform` / :meth:`_eval_transform`.
    ``setup`` then builds

    * ``train_dataset``: every training sample as ``(x, label, is_labeled)``, where ``x`` is
      ``[2, C, H, W]`` (two augmented views) when a training transform is set, else the raw image;
      ``label`` is the renumbered class for every sample (use it only where ``is_labeled``);
    * ``test_dataset``: the unlabeled training samples, unaugmented, as ``(image, label,
      is_old)`` — the set the GCD accuracy is reported on;
    * ``val_dataset``: the same set, or with ``holdout_fraction > 0`` the held-out images (that
      fraction of every class, seeded, never trained on), scored the same way: a validation set
      for choosing hyper-parameters apart from the reported one.

    Training draws from :class:`BalancedLabeledSampler` (``num_samples`` = training-set size).
    :meth:`labeled_dataloader` iterates the labeled training samples alone.

    Args:
        old_classes: The old class ids.
        labeled_fraction: Fraction of each old class that is labeled.
        batch_size: Samples per batch (>= 1).
        num_workers: DataLoader worker processes (>= 0).
        seed: Seed of the split and of the training sampler.
        drop_last: Drop the last incomplete training batch.
        holdout_fraction: Fraction of every class held out of training as the validation set,
            in ``[0, 1)``; 0 validates on the reported (unlabeled training) samples.
    """

    def __init__(
        self,
        old_classes: Sequence[int],
        labeled_fraction: float = 0.5,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        drop_last: bool = True,
        holdout_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        check_int("batch_size", batch_size, 1)
        check_int("num_workers", num_workers, 0)
        check_int("seed", seed, 0)
        if not (isinstance(labeled_fraction, int | float) and 0.0 < labeled_fraction <= 1.0):
            raise ValueError(f"`labeled_fraction` must be in (0, 1], got {labeled_fraction!r}.")
        if not 0.0 <= holdout_fraction < 1.0:
            raise ValueError(f"`holdout_fraction` must be in [0, 1), got {holdout_fraction!r}.")
        self.holdout_fraction = holdout_fraction
        self.old_classes = [int(c) for c in old_classes]
        self.labeled_fraction = labeled_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.drop_last = drop_last
        self.split: GCDSplit | None = None
        self.train_targets: np.ndarray | None = None  # renumbered labels of the training set
        self.train_dataset: _GCDTrainSet | None = None
        self.val_dataset: _GCDEvalSet | None = None
        self.test_dataset: _GCDEvalSet | None = None
        self.labeled_eval_dataset: _GCDEvalSet | None = None

    @property
    def num_old(self) -> int:
        """Number of old classes ``K_old``."""
        return len(self.old_classes)

    @abstractmethod
    def _load(self) -> tuple[Callable[[int], Any], np.ndarray]:
        """``(getter of training image i, original training labels)``."""

    def _train_transform(self) -> Callable[[Any], Tensor] | None:
        """Augmentation applied twice per training image; ``None`` returns the raw image."""
        return None

    def _eval_transform(self) -> Callable[[Any], Tensor] | None:
        """Transform of the evaluation images; ``None`` returns them as loaded."""
        return None

    def setup(self, stage: str | None = None) -> None:
        """Load the training set and build the split and data sets (idempotent).

        Args:
            stage: Lightning stage or ``None``; every split is built regardless.
        """
        if self.train_dataset is not None:
            return
        images, targets = self._load()
        targets = labels_array(targets)
        held_out = self._holdout_positions(targets)
        kept = np.setdiff1d(np.arange(targets.size), held_out)
        train_images = images if held_out.size == 0 else _Reindexed(images, kept)
        split = gcd_split(targets[kept], self.old_classes, self.labeled_fraction, self.seed)
        labels = split.remap(targets[kept])
        self.split, self.train_targets = split, labels
        self.train_dataset = _GCDTrainSet(
            train_images, labels, split.labeled_mask(), self._train_transform()
        )
        evaluate = self._eval_transform()
        self.test_dataset = _GCDEvalSet(
            train_images, split.unlabeled_indices, labels, split.num_old, evaluate
        )
        self.val_dataset = self.test_dataset
        if held_out.size:
            self.val_dataset = _GCDEvalSet(
                images, held_out, split.remap(targets), split.num_old, evaluate
            )
        self.labeled_eval_dataset = _GCDEvalSet(
            train_images, split.labeled_indices, labels, split.num_old, evaluate
        )

    def _holdout_positions(self, targets: np.ndarray) -> np.ndarray:
        """Sorted positions of the held-out images: ``round(holdout_fraction · n_c)`` of every
        class ``c``, drawn with a generator seeded by ``seed`` (none when the fraction is 0)."""
        if self.holdout_fraction == 0:
            return np.empty(0, dtype=np.int64)
        generator = np.random.default_rng(self.seed)
        chosen = []
        for label in np.unique(targets):
            members = np.flatnonzero(targets == label)
            count = round(self.holdout_fraction * members.size)
            chosen.append(generator.choice(members, size=count, replace=False))
        return np.sort(np.concatenate(chosen)).astype(np.int64)

    def labeled_dataloader(
        self, batch_size: int | None = None, shuffle: bool = False, augment: bool = True
    ) -> DataLoader:
        """A loader over the labeled training samples only (``split.labeled_indices``).

        Items are exactly those of ``train_dataset`` at the labeled indices, ``(x, label,
        is_labeled)`` (so ``x`` holds the two augmented views when a training transform is set,
        and ``is_labeled`` is always True); with ``augment=False``, ``x`` is the image under the
        evaluation transform instead (EAGC's conceptor is built on such features in the authors'
        code). Without ``shuffle`` they come in ascending index order.
        Meant for work on the labeled part alone, e.g. pre-training a reference model or
        collecting features of the labeled images. Every batch is kept (no ``drop_last``). The
        shuffled order comes from a generator seeded with ``seed`` when the loader is built:
        reproducible, and each pass over the same loader draws a new order.

        Args:
            batch_size: Samples per batch (>= 1); ``None`` means :attr:`batch_size`.
            shuffle: Shuffle the labeled samples.
            augment: The training transform's two views (default) or the evaluation transform.

        Returns:
            The :class:`~torch.utils.data.DataLoader`.

        Raises:
            RuntimeError: If :meth:`setup` has not been called.
            ValueError: If ``batch_size`` is not a positive int.

        Example::

            >>> dm = DigitsGCDDataModule(batch_size=100)
            >>> dm.setup()
            >>> images, labels, is_labeled = next(iter(dm.labeled_dataloader()))
            >>> tuple(images.shape), bool(is_labeled.all()), int(labels.max()) < dm.num_old
            ((100, 1, 8, 8), True, True)
            >>> len(dm.labeled_dataloader(batch_size=449).dataset)
            449
        """
        if self.train_dataset is None or self.split is None:
            raise RuntimeError("`labeled_dataloader()` needs the split: call `setup()` before it.")
        size = self.batch_size if batch_size is None else check_int("batch_size", batch_size, 1)
        generator = None
        if shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed)
        labeled: Dataset = Subset(self.train_dataset, self.split.labeled_indices.tolist())
        if not augment:
            assert self.labeled_eval_dataset is not None
            labeled = self.labeled_eval_dataset
        return DataLoader(
            labeled,
            batch_size=size,
            shuffle=bool(shuffle),
            generator=generator,
            drop_last=False,
            num_workers=self.num_workers,
        )

    def train_sampler(self, dataset: Dataset) -> Sampler[int]:
        """The SimGCD balanced sampler over the training set."""
        assert isinstance(dataset, _GCDTrainSet)
        return BalancedLabeledSampler(dataset.is_labeled.numpy(), seed=self.seed)


class DigitsGCDDataModule(GCDDataModule):
    """GCD on scikit-learn's 8x8 digits: old classes 0–4, new classes 5–9 (offline, CPU-sized).

    All 1797 images form the training set (GCD scores the unlabeled training images, so no test
    split is needed); half of each old class (⌊n_c / 2⌋, seeded) is labeled. Images are float32
    ``[1, 8, 8]`` in ``[0, 1]``. Training batches are ``(images [B, 1, 8, 8], labels, is_labeled)``
    with the *raw* images: the two views are made by the model on the batch with
    :func:`~lightning_mtl.tasks.gcd.digits_two_view_augment` (called twice with its own seeded
    generator), which is reproducible and much faster than per-sample augmentation in a Dataset.
    Evaluation batches are ``(images, labels, is_old)`` over the unlabeled images.

    Args:
        labeled_fraction: Fraction of each old class that is labeled.
        batch_size: Samples per batch (>= 1).
        num_workers: DataLoader worker processes (>= 0).
        seed: Seed of the split and of the training sampler.
        holdout_fraction: Fraction of every class held out as the validation set (see
            :class:`GCDDataModule`); 0 (default) trains on all 1797 images.

    Example::

        >>> dm = DigitsGCDDataModule(batch_size=32)
        >>> dm.setup()
        >>> dm.num_classes, dm.num_old, len(dm.train_dataset), len(dm.split.labeled_indices)
        (10, 5, 1797, 449)
        >>> images, labels, is_labeled = next(iter(dm.train_dataloader()))
        >>> tuple(images.shape), labels.dtype, is_labeled.dtype
        ((32, 1, 8, 8), torch.int64, torch.bool)
    """

    def __init__(
        self,
        labeled_fraction: float = 0.5,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        holdout_fraction: float = 0.0,
    ) -> None:
        super().__init__(
            range(_DEFAULT_NUM_OLD["digits"]),
            labeled_fraction,
            batch_size,
            num_workers,
            seed,
            holdout_fraction=holdout_fraction,
        )
        self.save_hyperparameters()

    @property
    def num_classes(self) -> int:
        """10 digit classes."""
        return 10

    def _load(self) -> tuple[Callable[[int], Any], np.ndarray]:
        pixels, targets = load_digits(return_X_y=True)
        images = torch.from_numpy(pixels / _MAX_PIXEL).to(torch.float32)
        images = images.reshape(-1, 1, _IMAGE_SIDE, _IMAGE_SIDE)
        return images.__getitem__, np.asarray(targets, dtype=np.int64)


class CIFARGCDDataModule(GCDDataModule):
    """GCD on CIFAR-10 (old classes 0–4) or CIFAR-100 (old classes 0–79) from a local copy.

    ``root`` must hold torchvision's layout (``root/cifar-10-batches-py/`` or
    ``root/cifar-100-python/``), read with ``torchvision.datasets.CIFAR10/100(root, train=True,
    download=False)``, which verifies the MD5 sums; nothing is downloaded. Only the 50 000
    training images are used (GCD scores the unlabeled training images).

    Transforms are :func:`gcd_transforms` at ``image_size`` 32, the GCD / SimGCD reference recipe
    (``get_transform("imagenet")``): training = ``Resize(int(32 / 0.875) = 36, bicubic)``,
    ``RandomCrop(32)``, ``RandomHorizontalFlip()``, ``ColorJitter()``, ``ToTensor()``,
    ``Normalize`` with the ImageNet statistics (:data:`GCD_IMAGENET_MEAN`,
    :data:`GCD_IMAGENET_STD`); note that the reference's argument-less ``ColorJitter()`` changes
    nothing, and it is kept as such (set ``color_jitter=(0.4, 0.4, 0.4, 0.1)`` for a real jitter).
    Evaluation = ``Resize(36, bicubic)``, ``CenterCrop(32)``, ``ToTensor()``, ``Normalize``. Each
    training image gets two independent views; augmentations use torch's global RNG (per worker),
    so seed runs with ``lightning.seed_everything(seed, workers=True)``.

    Training batches are ``(views [B, 2, 3, 32, 32], labels, is_labeled)``; evaluation batches
    ``(images [B, 3, 32, 32], labels, is_old)`` over the unlabeled training images.

    Args:
        root: Folder that contains the CIFAR folder.
        dataset: ``"cifar10"`` or ``"cifar100"``.
        old_classes: Old class ids; ``None`` means the benchmark's (first 5 / first 80).
        labeled_fraction: Fraction of each old class that is labeled.
        batch_size: Samples per batch; 128 in SimGCD.
        color_jitter: ``(brightness, contrast, saturation, hue)`` of the training jitter.
        num_workers: DataLoader worker processes.
        seed: Seed of the split and of the training sampler.

    Raises:
        ValueError: If an argument is out of range.

    Example::

        >>> dm = CIFARGCDDataModule("/data", dataset="cifar100")
        >>> dm.num_classes, dm.num_old
        (100, 80)
        >>> CIFARGCDDataModule("/nonexistent").setup()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: CIFAR10 not found under '/nonexistent': expected the folder ...
    """

    def __init__(
        self,
        root: str | Path,
        dataset: Literal["cifar10", "cifar100"] = "cifar10",
        old_classes: Sequence[int] | None = None,
        labeled_fraction: float = 0.5,
        batch_size: int = 128,
        color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        check_cifar_name(dataset)
        num_classes = CIFAR_NUM_CLASSES[dataset]
        old = list(range(_DEFAULT_NUM_OLD[dataset])) if old_classes is None else list(old_classes)
        if any(not 0 <= int(c) < num_classes for c in old):
            raise ValueError(f"`old_classes` must lie in [0, {num_classes}), got {old}.")
        super().__init__(old, labeled_fraction, batch_size, num_workers, seed)
        self.save_hyperparameters()
        self.root = Path(root)
        self.dataset = dataset
        self.color_jitter = tuple(color_jitter)

    @property
    def num_classes(self) -> int:
        """10 or 100."""
        return CIFAR_NUM_CLASSES[self.dataset]

    def _load(self) -> tuple[Callable[[int], Any], np.ndarray]:
        base = load_cifar(self.root, self.dataset, train=True)

        def image(index: int) -> Any:
            return base[index][0]  # PIL image, as torchvision returns it

        return image, np.asarray(base.targets, dtype=np.int64)

    def _train_transform(self) -> Callable[[Any], Tensor]:
        return gcd_transforms(_CIFAR_IMAGE_SIZE, self.color_jitter)[0]

    def _eval_transform(self) -> Callable[[Any], Tensor]:
        return gcd_transforms(_CIFAR_IMAGE_SIZE, self.color_jitter)[1]
