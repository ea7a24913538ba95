"""scikit-learn's bundled 8x8 digits as a Lightning data module, plus a batch augmentation.

The data set ships with scikit-learn (1797 images, 10 classes), so nothing is downloaded and the
module works offline and in CI.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_mtl.tasks.common.datamodule import SplitDataModule

__all__ = ["DigitsDataModule", "digits_two_view_augment"]

_NUM_CLASSES = 10
_IMAGE_SIDE = 8
# Pixel values in load_digits are integer counts in [0, 16].
_MAX_PIXEL = 16.0


def _to_tensor_dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    """Turn flat ``[N, 64]`` pixel counts into ``[N, 1, 8, 8]`` float32 images and int64 labels."""
    x = torch.from_numpy(images / _MAX_PIXEL).to(torch.float32)
    x = x.reshape(-1, 1, _IMAGE_SIDE, _IMAGE_SIDE)
    y = torch.from_numpy(labels).to(torch.int64)
    return TensorDataset(x, y)


class DigitsDataModule(SplitDataModule):
    """Lightning data module for scikit-learn's 8x8 handwritten digits.

    Images are scaled to ``[0, 1]`` and shaped ``[1, 8, 8]`` (float32); labels are int64 in
    ``0..9``. The 1797 images are split once, stratified by class, into train and validation parts
    with ``seed`` as the split's random state. The test set is the validation split: the data set
    is too small for three useful splits, so test metrics equal validation metrics and are not an
    independent estimate.

    The train loader draws its order from :class:`EpochSeededRandomSampler` (seeded with ``seed``)
    and drops the last incomplete batch; validation and test loaders are not shuffled.

    Args:
        batch_size: Samples per batch (>= 1).
        val_fraction: Fraction of the data held out for validation, in ``(0, 1)``.
        num_workers: DataLoader worker processes (>= 0).
        seed: Random state of the stratified split and base seed of the train sampler.

    Raises:
        ValueError: If an argument is out of range.

    Example::

        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> len(dm.train_dataset), len(dm.val_dataset), dm.num_classes
        (1437, 360, 10)
        >>> images, labels = next(iter(dm.train_dataloader()))
        >>> tuple(images.shape), images.dtype, labels.dtype
        ((32, 1, 8, 8), torch.float32, torch.int64)
    """

    def __init__(
        self,
        batch_size: int = 128,
        val_fraction: float = 0.2,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"`val_fraction` must be in the open interval (0, 1), got {val_fraction}."
            )
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {num_workers}.")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.seed = seed
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None
        self.test_dataset: TensorDataset | None = None

    @property
    def num_classes(self) -> int:
        """Number of digit classes (10).

        Example::

            >>> DigitsDataModule().num_classes
            10
        """
        return _NUM_CLASSES

    def setup(self, stage: str | None = None) -> None:
        """Load the bundled data and build the splits (idempotent; ``stage`` is not needed).

        Args:
            stage: Lightning stage (``"fit"``, ``"validate"``, ``"test"``, ``"predict"``) or
                ``None``. All splits are built regardless, since loading is cheap.

        Example::

            >>> dm = DigitsDataModule()
            >>> dm.setup("test")
            >>> dm.test_dataset is dm.val_dataset
            True
        """
        if self.train_dataset is not None:
            return
        images, labels = load_digits(return_X_y=True)
        train_x, val_x, train_y, val_y = train_test_split(
            images,
            labels,
            test_size=self.val_fraction,
            stratify=labels,
            random_state=self.seed,
        )
        self.train_dataset = _to_tensor_dataset(train_x, train_y)
        self.val_dataset = _to_tensor_dataset(val_x, val_y)
        self.test_dataset = self.val_dataset


def _check_augment_args(
    images: Tensor,
    generator: torch.Generator | None,
    max_shift: float,
    max_rotation_deg: float,
    noise_std: float,
) -> None:
    """Validate the inputs of :func:`digits_two_view_augment`."""
    if images.dim() != 4:
        raise ValueError(
            f"`images` must be 4-D with shape [batch, channels, height, width], "
            f"got shape {tuple(images.shape)}."
        )
    if not images.is_floating_point():
        raise ValueError(f"`images` must be a floating-point tensor, got dtype {images.dtype}.")
    if generator is not None and generator.device.type != images.device.type:
        raise ValueError(
            f"`generator` is on device {generator.device} but `images` are on {images.device}; "
            "create the generator on the images' device."
        )
    for name, value in (
        ("max_shift", max_shift),
        ("max_rotation_deg", max_rotation_deg),
        ("noise_std", noise_std),
    ):
        if not value >= 0:
            raise ValueError(f"`{name}` must be >= 0, got {value}.")


def digits_two_view_augment(
    images: Tensor,
    generator: torch.Generator | None = None,
    max_shift: float = 0.15,
    max_rotation_deg: float = 12.0,
    noise_std: float = 0.05,
) -> Tensor:
    """Return a randomly augmented copy of a batch of digit images.

    Each sample gets its own rotation angle, uniform in ``[-max_rotation_deg, max_rotation_deg]``
    degrees about the image centre, and its own translation, uniform in ``[-max_shift, max_shift]``
    times the image side along each axis, applied with bilinear resampling (``align_corners=False``,
    zero padding); then gaussian noise of standard deviation ``noise_std`` is added and the result
    is clamped to ``[0, 1]``. Calling it twice on the same batch gives the two views of a
    contrastive (SimCLR / SupCon) pair.

    All randomness comes from ``generator`` (or the global RNG when ``None``), on the images'
    device, and the same amount of random numbers is drawn whatever the magnitudes, so results are
    reproducible from the generator's seed. The input is not modified.

    Args:
        images: Float tensor of shape ``[B, C, H, W]`` (``[B, 1, 8, 8]`` for digits), in ``[0, 1]``.
        generator: Optional generator on the same device type as ``images``.
        max_shift: Largest translation as a fraction of the image side (>= 0).
        max_rotation_deg: Largest rotation in degrees (>= 0).
        noise_std: Standard deviation of the additive gaussian noise (>= 0).

    Returns:
        Augmented tensor with the shape, dtype and device of ``images``, values in ``[0, 1]``.

    Raises:
        ValueError: If ``images`` is not a 4-D float tensor, the generator is on another device,
            or a magnitude is negative.

    Example::

        >>> import torch
        >>> images = torch.rand(4, 1, 8, 8)
        >>> view_a = digits_two_view_augment(images, torch.Generator().manual_seed(0))
        >>> view_b = digits_two_view_augment(images, torch.Generator().manual_seed(0))
        >>> torch.equal(view_a, view_b), tuple(view_a.shape)
        (True, (4, 1, 8, 8))
        >>> same = digits_two_view_augment(images, max_shift=0, max_rotation_deg=0, noise_std=0)
        >>> torch.allclose(same, images, atol=1e-6)
        True
    """
    _check_augment_args(images, generator, max_shift, max_rotation_deg, noise_std)
    batch_size = images.shape[0]
    device, dtype = images.device, images.dtype

    def uniform_symmetric(*shape: int) -> Tensor:
        """Uniform samples in [-1, 1] from the shared generator."""
        return torch.rand(*shape, generator=generator, device=device, dtype=dtype) * 2.0 - 1.0

    angle = uniform_symmetric(batch_size) * math.radians(max_rotation_deg)
    # affine_grid works in normalised coordinates spanning 2 units per side, hence the factor 2.
    shift = uniform_symmetric(batch_size, 2) * (2.0 * max_shift)
    noise = torch.randn(images.shape, generator=generator, device=device, dtype=dtype)

    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        (
            torch.stack((cos, -sin, shift[:, 0]), dim=1),
            torch.stack((sin, cos, shift[:, 1]), dim=1),
        ),
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (warped + noise_std * noise).clamp(0.0, 1.0)
