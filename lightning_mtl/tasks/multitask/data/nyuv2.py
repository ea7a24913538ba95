"""NYUv2 (Silberman et al., 2012) for 3-task dense prediction, in MTAN's preprocessed layout.

Nothing is downloaded: the module reads the ``.npy`` files that MTAN (Liu et al., 2019,
``im2im_pred/create_dataset.py``) introduced and that LibMTL, Nash-MTL, FAMO and ConsMTL reuse,

.. code-block:: text

    root/
      train/image/0.npy … 794.npy    RGB in [0, 1], 288×384×3
            label/<i>.npy            13-class segmentation, 288×384, -1 where unlabelled
            depth/<i>.npy            depth in metres, 288×384×1, 0 where missing
            normal/<i>.npy           unit surface normals, 288×384×3, 0 where missing
      val/ (the same four folders; 654 images, the standard NYUv2 test set)

MTAN stores the arrays channel-last and moves the channel axis first when loading; this module
does the same, and also accepts channel-first arrays (``3×288×384``, ``1×288×384``) or a 2-D
depth map, so copies re-saved either way work. Only file names ``<integer>.npy`` are read.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from lightning_mtl.tasks.common.datamodule import SplitDataModule
from lightning_mtl.tasks.common.files import check_int

__all__ = [
    "NYUV2_NUM_CLASSES",
    "NYUv2DataModule",
    "NYUv2Dataset",
    "channels_first",
    "flip_horizontally",
    "random_scale_crop",
]

NYUV2_NUM_CLASSES = 13
FOLDERS = ("image", "label", "depth", "normal")
_CHANNELS = {"image": 3, "depth": 1, "normal": 3}
# MTAN's random-scale-crop factors.
SCALES = (1.0, 1.2, 1.5)

EXPECTED_LAYOUT = (
    "root/{train,val}/{image,label,depth,normal}/<index>.npy, as produced by MTAN's "
    "preprocessing (image 288×384×3 in [0, 1], label 288×384 with -1 unlabelled and 13 classes, "
    "depth 288×384×1, normal 288×384×3)"
)

NYUv2Sample = tuple[Tensor, Tensor, Tensor, Tensor]


def channels_first(array: np.ndarray, channels: int) -> np.ndarray:
    """``[C, H, W]`` from a channel-last ``[H, W, C]`` (MTAN's files) or channel-first array.

    A 2-D array is one channel. Channel-last wins when both readings fit (an image 3 pixels
    high is no NYUv2 image).

    Example::

        >>> channels_first(np.zeros((4, 5, 3)), 3).shape  # MTAN's channel-last files
        (3, 4, 5)
        >>> channels_first(np.zeros((3, 4, 5)), 3).shape, channels_first(np.zeros((4, 5)), 1).shape
        ((3, 4, 5), (1, 4, 5))
    """
    if array.ndim == 2 and channels == 1:
        return array[None]
    if array.ndim == 3 and array.shape[-1] == channels:
        return np.moveaxis(array, -1, 0)
    if array.ndim == 3 and array.shape[0] == channels:
        return array
    raise ValueError(
        f"expected an array of {channels} channel(s), [H, W, {channels}] or [{channels}, H, W]; "
        f"got shape {array.shape}."
    )


def flip_horizontally(sample: NYUv2Sample) -> NYUv2Sample:
    """Mirror every map left–right; the normals' x component changes sign with the mirror.

    Example::

        >>> normal = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 1, 2)
        >>> sample = (torch.zeros(3, 1, 2), torch.tensor([[0, 1]]), torch.zeros(1, 1, 2), normal)
        >>> flipped = flip_horizontally(sample)
        >>> flipped[1].tolist(), flipped[3][:, 0, 0].tolist()
        ([[1, 0]], [-1.0, 0.0, 0.0])
    """
    image, label, depth, normal = (tensor.flip(-1) for tensor in sample)
    normal = torch.cat([-normal[:1], normal[1:]])
    return image, label, depth, normal


def random_scale_crop(sample: NYUv2Sample, scale: float, top: int, left: int) -> NYUv2Sample:
    """Crop a window ``1/scale`` of the size at ``(top, left)`` and resize it back (MTAN's zoom).

    The image is resized bilinearly; labels, depth and normals by nearest neighbour, so the
    ignore label and the zero "missing" markers stay exact (MTAN interpolates normals
    bilinearly, which blends missing pixels into valid ones). Depth is divided by ``scale``: a
    zoomed view looks as if the camera were ``scale`` times closer.

    Example::

        >>> sample = (torch.zeros(3, 4, 4), torch.zeros(4, 4, dtype=torch.long),
        ...           torch.full((1, 4, 4), 3.0), torch.zeros(3, 4, 4))
        >>> zoomed = random_scale_crop(sample, 2.0, 1, 1)
        >>> [tuple(t.shape) for t in zoomed], zoomed[2].max().item()
        ([(3, 4, 4), (4, 4), (1, 4, 4), (3, 4, 4)], 1.5)
    """
    image, label, depth, normal = sample
    height, width = image.shape[-2:]
    crop_h, crop_w = int(height / scale), int(width / scale)
    rows, cols = slice(top, top + crop_h), slice(left, left + crop_w)
    size = (height, width)
    image = F.interpolate(image[None, :, rows, cols], size=size, mode="bilinear")
    label = F.interpolate(label[None, None, rows, cols].float(), size=size, mode="nearest")
    depth = F.interpolate(depth[None, :, rows, cols], size=size, mode="nearest")
    normal = F.interpolate(normal[None, :, rows, cols], size=size, mode="nearest")
    return image[0], label[0, 0].long(), depth[0] / scale, normal[0]


class NYUv2Dataset(Dataset[NYUv2Sample]):
    """One split of the preprocessed NYUv2: ``(image, label, depth, normal)`` per item.

    ``image`` float32 ``[3, H, W]``; ``label`` int64 ``[H, W]`` in ``{-1, 0 … 12}``; ``depth``
    float32 ``[1, H, W]`` (0 where missing); ``normal`` float32 ``[3, H, W]`` (0 where missing).
    With ``augment``, each item is mirrored with probability 1/2 and zoomed by a scale drawn from
    ``(1.0, 1.2, 1.5)`` at a random position (:func:`random_scale_crop`), from Python's
    ``random`` module (seeded per worker by PyTorch's DataLoader).

    Args:
        folder: the split's folder (holding ``image/``, ``label/``, ``depth/``, ``normal/``).
        indices: the file indices to read, in order.
        augment: apply the random flip and scale-crop.
    """

    def __init__(self, folder: Path, indices: list[int], augment: bool = False) -> None:
        self.folder = Path(folder)
        self.indices = list(indices)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, kind: str, index: int) -> np.ndarray:
        return np.load(self.folder / kind / f"{index}.npy")

    def __getitem__(self, position: int) -> NYUv2Sample:
        index = self.indices[position]
        image, depth, normal = (
            torch.from_numpy(np.ascontiguousarray(channels_first(self._load(k, index), c))).float()
            for k, c in _CHANNELS.items()
        )
        label_array = self._load("label", index)
        if label_array.ndim != 2:
            raise ValueError(
                f"{self.folder / 'label' / f'{index}.npy'} must be a 2-D label map; got shape "
                f"{label_array.shape}."
            )
        # MTAN stores labels as floats; -1 marks unlabelled pixels.
        label = torch.from_numpy(label_array).round().long()
        sample = (image, label, depth, normal)
        if self.augment:
            sample = self._augment(sample)
        return sample

    def _augment(self, sample: NYUv2Sample) -> NYUv2Sample:
        height, width = sample[0].shape[-2:]
        scale = random.choice(SCALES)
        top = random.randint(0, height - int(height / scale))
        left = random.randint(0, width - int(width / scale))
        sample = random_scale_crop(sample, scale, top, left)
        return flip_horizontally(sample) if random.random() < 0.5 else sample


class NYUv2DataModule(SplitDataModule):
    """NYUv2 segmentation, depth and surface normals from MTAN's preprocessed ``.npy`` files.

    ``root`` holds ``train/`` (795 images) and ``val/`` (654) with the folders ``image``,
    ``label``, ``depth`` and ``normal`` (see the module docstring); nothing is downloaded. As in
    MTAN and LibMTL, the ``val`` split is both the validation and the test set (NYUv2 has no
    third split), so test metrics equal validation metrics. Batches are
    ``(image, label, depth, normal)`` as described in :class:`NYUv2Dataset`.

    The training order comes from :class:`EpochSeededRandomSampler` seeded with ``seed``; the
    last incomplete training batch is dropped. ``augment`` (off by default) turns on MTAN's
    random scale-crop and horizontal flip for the training split only.

    Args:
        root: the folder with ``train/`` and ``val/``.
        batch_size: images per batch (≥ 1); 8 as in LibMTL.
        num_workers: DataLoader worker processes (≥ 0).
        seed: seed of the training order (≥ 0).
        augment: random scale-crop (×1, ×1.2, ×1.5) and flip of the training images.

    Raises:
        ValueError: if an argument is out of range.

    Example::

        >>> dm = NYUv2DataModule("/data/nyuv2", batch_size=8)
        >>> dm.num_classes, dm.augment
        (13, False)
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int = 8,
        num_workers: int = 4,
        seed: int = 0,
        augment: bool = False,
    ) -> None:
        super().__init__()
        check_int("batch_size", batch_size, 1)
        check_int("num_workers", num_workers, 0)
        check_int("seed", seed, 0)
        self.save_hyperparameters()
        self.root = Path(root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.augment = augment
        self.train_dataset: NYUv2Dataset | None = None
        self.val_dataset: NYUv2Dataset | None = None
        self.test_dataset: NYUv2Dataset | None = None

    @property
    def num_classes(self) -> int:
        """Segmentation classes (13)."""
        return NYUV2_NUM_CLASSES

    def split_indices(self, split: str) -> list[int]:
        """The sorted file indices of ``split`` (``"train"`` or ``"val"``), checked across folders.

        Raises:
            FileNotFoundError: if a folder is missing or empty, or the four folders hold
                different indices.

        Example::

            >>> NYUv2DataModule("/nonexistent").split_indices("train")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            FileNotFoundError: NYUv2 not found under '/nonexistent': missing train/image/, ...
        """
        folder = self.root / split
        missing = [f"{split}/{kind}/" for kind in FOLDERS if not (folder / kind).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"NYUv2 not found under {str(self.root)!r}: missing {', '.join(missing)}. "
                f"Expected {EXPECTED_LAYOUT}. This module never downloads: get MTAN's "
                "preprocessed NYUv2 (linked from github.com/lorenmt/mtan) and point `root` at "
                "the folder holding train/ and val/."
            )
        found = {kind: _npy_indices(folder / kind) for kind in FOLDERS}
        if not found["image"]:
            raise FileNotFoundError(f"{str(folder / 'image')!r} holds no <index>.npy file.")
        differ = [kind for kind in FOLDERS[1:] if found[kind] != found["image"]]
        if differ:
            lacking = sorted(found["image"] ^ found[differ[0]])[:3]
            raise FileNotFoundError(
                f"the folders of {str(folder)!r} hold different indices: {differ[0]}/ and image/ "
                f"differ (e.g. {lacking}). Expected {EXPECTED_LAYOUT}."
            )
        return sorted(found["image"])

    def setup(self, stage: str | None = None) -> None:
        """Index both splits (idempotent; any ``stage``); the arrays are read lazily.

        Raises:
            FileNotFoundError: if the layout is incomplete.
            ValueError: if the training split is smaller than ``batch_size``.
        """
        if self.train_dataset is not None:
            return
        train = self.split_indices("train")
        val = self.split_indices("val")
        if len(train) < self.batch_size:
            raise ValueError(
                f"the training split has {len(train)} images, fewer than `batch_size` "
                f"({self.batch_size}); the train loader drops the incomplete batch."
            )
        self.train_dataset = NYUv2Dataset(self.root / "train", train, augment=self.augment)
        self.val_dataset = NYUv2Dataset(self.root / "val", val)
        self.test_dataset = self.val_dataset


def _npy_indices(folder: Path) -> set[int]:
    """The integer stems of the ``<index>.npy`` files in ``folder``."""
    return {int(path.stem) for path in folder.glob("*.npy") if path.stem.isdigit()}
