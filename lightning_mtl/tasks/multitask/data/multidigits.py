"""A multi-task problem made of scikit-learn's bundled digits: several digits side by side.

Each sample is ``num_tasks`` 8×8 digit images placed left to right (one ``[1, 8, 8·T]`` image);
task ``k`` is to classify the digit at position ``k``. Nothing is downloaded, the composites are a
pure function of the seed, and no source image appears in both the train and validation splits.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_mtl.tasks.common.datamodule import SplitDataModule

__all__ = ["MultiDigitsDataModule", "compose_side_by_side"]

_NUM_CLASSES = 10
_IMAGE_SIDE = 8
# Pixel values in load_digits are integer counts in [0, 16].
_MAX_PIXEL = 16.0
# The same held-out fraction as DigitsDataModule: 360 of the 1797 images feed validation.
_VAL_FRACTION = 0.2
# Distinct streams for the two splits' composites, so that changing one size leaves the other
# split's composites unchanged.
_TRAIN_STREAM, _VAL_STREAM, _TEST_STREAM = 0, 1, 2


def compose_side_by_side(images: Tensor, sources: Tensor) -> Tensor:
    """Place ``images[sources[n, k]]`` at horizontal position ``k`` of composite ``n``.

    Args:
        images: ``[P, H, W]`` pool of images.
        sources: ``[N, T]`` integer indices into the pool.

    Returns:
        ``[N, 1, H, W·T]`` composites; columns ``k·W … (k+1)·W − 1`` hold image ``sources[n, k]``.

    Example::

        >>> pool = torch.arange(2.0).view(2, 1, 1).expand(2, 2, 2)  # an all-0 and an all-1 image
        >>> compose_side_by_side(pool, torch.tensor([[1, 0, 1]]))[0, 0]
        tensor([[1., 1., 0., 0., 1., 1.],
                [1., 1., 0., 0., 1., 1.]])
    """
    if images.ndim != 3:
        raise ValueError(f"images must have shape [P, H, W]; got {tuple(images.shape)}.")
    if sources.ndim != 2:
        raise ValueError(f"sources must have shape [N, T]; got {tuple(sources.shape)}.")
    count, tasks = sources.shape
    _, height, width = images.shape
    # [N, T, H, W] → [N, H, T, W]: each row of the composite runs through the T images in turn.
    picked = images[sources].permute(0, 2, 1, 3)
    return picked.reshape(count, 1, height, tasks * width)


def _draw_sources(pool: np.ndarray, count: int, num_tasks: int, seed: int, stream: int) -> Tensor:
    """``[count, num_tasks]`` indices drawn uniformly, with replacement, from ``pool``."""
    rng = np.random.default_rng([seed, stream])
    return torch.from_numpy(rng.choice(pool, size=(count, num_tasks))).to(torch.int64)


class MultiDigitsDataModule(SplitDataModule):
    """Lightning data module of ``num_tasks`` digits side by side, one classification per digit.

    The 1797 digits are split once, stratified by class and with ``seed`` as the random state,
    into a train pool (1437 images) and a validation pool (360 images), as in
    :class:`~lightning_mtl.tasks.gcd.DigitsDataModule`. Each split's composites draw their digits
    uniformly, with replacement, from that split's pool only, from a generator seeded with
    ``seed``: the same seed gives the same composites, and no digit image is shared between
    splits. Images are float32 in ``[0, 1]`` of shape ``[1, 8, 8·num_tasks]``; labels are int64
    ``[num_tasks]``. The test split is the validation split, so test metrics equal validation
    metrics, unless ``test_size > 0``: then the validation pool is halved (stratified) and the
    test composites are drawn from the other half, to score hyper-parameters chosen on the
    validation split on digits not used for the choice.

    The train loader draws its order from :class:`EpochSeededRandomSampler` (seeded with
    ``seed``) and drops the last incomplete batch; validation and test loaders are not shuffled.

    After :meth:`setup`, ``train_sources`` and ``val_sources`` hold the ``[N, num_tasks]``
    indices, into ``sklearn.datasets.load_digits()``, of the digit at every position.

    Args:
        num_tasks: digits per composite, that is tasks (≥ 2).
        batch_size: samples per batch (≥ 1).
        train_size: number of train composites (≥ ``batch_size``, since the tail is dropped).
        val_size: number of validation composites (≥ 1).
        test_size: number of test composites apart from the validation ones (0: the test split
            is the validation split).
        seed: random state of the split, of the composites and of the train sampler (≥ 0).
        num_workers: DataLoader worker processes (≥ 0).

    Raises:
        ValueError: if an argument is out of range.

    Example::

        >>> dm = MultiDigitsDataModule(num_tasks=3, batch_size=32, train_size=64, val_size=10)
        >>> dm.setup("fit")
        >>> images, labels = next(iter(dm.train_dataloader()))
        >>> tuple(images.shape), tuple(labels.shape), labels.dtype
        ((32, 1, 8, 24), (32, 3), torch.int64)
        >>> len(dm.val_dataset), dm.num_classes
        (10, 10)
    """

    def __init__(
        self,
        num_tasks: int = 3,
        batch_size: int = 128,
        train_size: int = 3000,
        val_size: int = 600,
        seed: int = 0,
        num_workers: int = 0,
        test_size: int = 0,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("num_tasks", num_tasks, 2),
            ("batch_size", batch_size, 1),
            ("val_size", val_size, 1),
            ("test_size", test_size, 0),
            ("seed", seed, 0),
            ("num_workers", num_workers, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}.")
        if isinstance(train_size, bool) or not isinstance(train_size, int):
            raise ValueError(f"`train_size` must be an int, got {train_size!r}.")
        if train_size < batch_size:
            raise ValueError(
                f"`train_size` ({train_size}) must be >= `batch_size` ({batch_size}): the train "
                "loader drops the last incomplete batch, so it would yield nothing."
            )
        self.save_hyperparameters()
        self.num_tasks = num_tasks
        self.batch_size = batch_size
        self.train_size = train_size
        self.val_size = val_size
        self.test_size = test_size
        self.seed = seed
        self.num_workers = num_workers
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None
        self.test_dataset: TensorDataset | None = None
        self.train_sources: Tensor | None = None
        self.val_sources: Tensor | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes of every task (10).

        Example::

            >>> MultiDigitsDataModule().num_classes
            10
        """
        return _NUM_CLASSES

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one composite image, ``(1, 8, 8·num_tasks)``.

        Example::

            >>> MultiDigitsDataModule(num_tasks=4).image_shape
            (1, 8, 32)
        """
        return (1, _IMAGE_SIDE, _IMAGE_SIDE * self.num_tasks)

    def setup(self, stage: str | None = None) -> None:
        """Load the bundled digits and compose both splits (idempotent; any ``stage``).

        Example::

            >>> dm = MultiDigitsDataModule(train_size=200, val_size=50)
            >>> dm.setup("test")
            >>> dm.test_dataset is dm.val_dataset, tuple(dm.val_sources.shape)
            (True, (50, 3))
        """
        if self.train_dataset is not None:
            return
        pixels, labels = load_digits(return_X_y=True)
        train_pool, val_pool = train_test_split(
            np.arange(len(labels)),
            test_size=_VAL_FRACTION,
            stratify=labels,
            random_state=self.seed,
        )
        images = torch.from_numpy(pixels / _MAX_PIXEL).to(torch.float32)
        images = images.reshape(-1, _IMAGE_SIDE, _IMAGE_SIDE)
        targets = torch.from_numpy(labels).to(torch.int64)
        if self.test_size:
            val_pool, test_pool = train_test_split(
                val_pool, test_size=0.5, stratify=labels[val_pool], random_state=self.seed
            )
        self.train_sources = _draw_sources(
            train_pool, self.train_size, self.num_tasks, self.seed, _TRAIN_STREAM
        )
        self.val_sources = _draw_sources(
            val_pool, self.val_size, self.num_tasks, self.seed, _VAL_STREAM
        )
        self.train_dataset = TensorDataset(
            compose_side_by_side(images, self.train_sources), targets[self.train_sources]
        )
        self.val_dataset = TensorDataset(
            compose_side_by_side(images, self.val_sources), targets[self.val_sources]
        )
        self.test_dataset = self.val_dataset
        if self.test_size:
            test_sources = _draw_sources(
                test_pool, self.test_size, self.num_tasks, self.seed, _TEST_STREAM
            )
            self.test_dataset = TensorDataset(
                compose_side_by_side(images, test_sources), targets[test_sources]
            )
