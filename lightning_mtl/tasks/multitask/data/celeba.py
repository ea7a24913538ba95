"""CelebA (Liu et al., 2015) as 40 binary attribute-classification tasks, from a local copy.

Nothing is downloaded: the module reads the standard layout of the official release,

.. code-block:: text

    root/
      img_align_celeba/000001.jpg … 202599.jpg   (aligned and cropped faces, 178×218)
      list_attr_celeba.txt                        (line 1: image count; line 2: the 40 names;
                                                   then "000001.jpg  -1  1 …", one per image)
      list_eval_partition.txt                     ("000001.jpg 0"; 0 train, 1 val, 2 test)

and parses the two text files itself (no torchvision download path, no pandas).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from lightning_mtl.tasks.common.datamodule import SplitDataModule
from lightning_mtl.tasks.common.files import check_int

__all__ = [
    "CELEBA_ATTRIBUTES",
    "CelebADataModule",
    "CelebADataset",
    "center_square_resize",
    "parse_attribute_lines",
    "parse_partition_lines",
]

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
"""The 40 attribute names of ``list_attr_celeba.txt``, in file order."""

# ImageNet statistics: the trunks are trained from scratch here, but these keep the inputs
# compatible with ImageNet-pretrained weights should someone load them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_FOLDER = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
SPLITS = {"train": 0, "val": 1, "test": 2}

EXPECTED_LAYOUT = (
    f"root/{IMAGE_FOLDER}/*.jpg, root/{ATTRIBUTE_FILE} (count line, attribute-names line, then "
    f"'filename ±1 …' rows) and root/{PARTITION_FILE} ('filename split', 0 train / 1 val / "
    "2 test), as in the official CelebA release (Align&Cropped images)"
)


def _rows(lines: Iterable[str]) -> list[list[str]]:
    """Whitespace-split, non-blank lines (the files separate columns by one or two spaces)."""
    return [fields for fields in (line.split() for line in lines) if fields]


def parse_attribute_lines(lines: Iterable[str]) -> tuple[list[str], list[str], Tensor]:
    """Parse ``list_attr_celeba.txt``: the attribute names, the file names and the targets.

    Args:
        lines: the file's lines: the image count, the attribute names, then one row per image,
            ``filename`` followed by one ``1`` or ``-1`` per attribute.

    Returns:
        ``(names, filenames, targets)`` with ``targets`` an int64 ``[N, A]`` tensor in ``{0, 1}``
        (``1`` → 1, ``-1`` → 0), rows in file order.

    Raises:
        ValueError: if the count disagrees with the rows, a row has the wrong length, or a value
            is not ±1.

    Example::

        >>> names, files, targets = parse_attribute_lines(
        ...     ["2", "Bald Smiling", "a.jpg  1 -1", "b.jpg -1  1"])
        >>> names, files, targets.tolist()
        (['Bald', 'Smiling'], ['a.jpg', 'b.jpg'], [[1, 0], [0, 1]])
    """
    rows = _rows(lines)
    if len(rows) < 2 or len(rows[0]) != 1 or not rows[0][0].isdigit():
        raise ValueError(
            f"{ATTRIBUTE_FILE} must start with the image count on its own line, then the "
            "attribute names; the first lines do not look like that."
        )
    count, names, body = int(rows[0][0]), rows[1], rows[2:]
    if len(body) != count:
        raise ValueError(
            f"{ATTRIBUTE_FILE} announces {count} images but has {len(body)} rows; the file is "
            "truncated or corrupt."
        )
    bad = next((row for row in body if len(row) != len(names) + 1), None)
    if bad is not None:
        raise ValueError(
            f"{ATTRIBUTE_FILE}: the row of {bad[0]!r} has {len(bad) - 1} values for "
            f"{len(names)} attributes."
        )
    values = np.array([row[1:] for row in body], dtype=np.int64).reshape(count, len(names))
    if not np.isin(values, (-1, 1)).all():
        raise ValueError(f"{ATTRIBUTE_FILE}: every attribute value must be 1 or -1.")
    targets = torch.from_numpy((values + 1) // 2)
    return names, [row[0] for row in body], targets


def parse_partition_lines(lines: Iterable[str]) -> dict[str, int]:
    """Parse ``list_eval_partition.txt``: file name → split (0 train, 1 val, 2 test).

    Raises:
        ValueError: if a row is not ``filename split`` with split 0, 1 or 2.

    Example::

        >>> parse_partition_lines(["a.jpg 0", "b.jpg 2", ""])
        {'a.jpg': 0, 'b.jpg': 2}
    """
    partition: dict[str, int] = {}
    for row in _rows(lines):
        if len(row) != 2 or row[1] not in ("0", "1", "2"):
            raise ValueError(
                f"{PARTITION_FILE}: expected 'filename split' with split 0, 1 or 2; got "
                f"{' '.join(row)!r}."
            )
        partition[row[0]] = int(row[1])
    return partition


def center_square_resize(image: Image.Image, size: int) -> Image.Image:
    """Crop the largest centred square, then resize it to ``size × size`` (bilinear).

    Cropping first keeps the faces' aspect ratio (the aligned images are 178×218, so resizing
    straight to a square would squash them vertically); it removes a band of 20 pixels at the
    top and bottom, mostly hair and background.

    Example::

        >>> center_square_resize(Image.new("RGB", (178, 218)), 64).size
        (64, 64)
    """
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.BILINEAR)


def _normalise(image: Image.Image) -> Tensor:
    """``[3, H, W]`` float32, scaled to ``[0, 1]`` and normalised with the ImageNet statistics."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(array).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pixels - mean) / std


class CelebADataset(Dataset[tuple[Tensor, Tensor]]):
    """Images of one split and their attribute targets.

    Each item is ``(image, target)``: ``image`` float32 ``[3, image_size, image_size]``
    (:func:`center_square_resize`, then normalised with the ImageNet statistics), ``target`` int64
    ``[A]`` in ``{0, 1}``.

    Args:
        image_folder: the folder of the images.
        filenames: the images of this split.
        targets: ``[len(filenames), A]`` targets.
        image_size: side of the square images returned.
    """

    def __init__(
        self, image_folder: Path, filenames: Sequence[str], targets: Tensor, image_size: int
    ) -> None:
        if targets.shape[0] != len(filenames):
            raise ValueError(
                f"got {len(filenames)} file names but {targets.shape[0]} rows of targets."
            )
        self.image_folder = Path(image_folder)
        self.filenames = list(filenames)
        self.targets = targets
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.filenames)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        with Image.open(self.image_folder / self.filenames[index]) as image:
            resized = center_square_resize(image.convert("RGB"), self.image_size)
        return _normalise(resized), self.targets[index]


class CelebADataModule(SplitDataModule):
    """CelebA's 40 binary attributes as 40 tasks, read from a local copy in the standard layout.

    ``root`` holds ``img_align_celeba/`` (the aligned and cropped JPEGs), ``list_attr_celeba.txt``
    and ``list_eval_partition.txt`` (see the module docstring); nothing is downloaded. The splits
    are the official ones (162 770 / 19 867 / 19 962 images). Images are centre-cropped to a
    square (178×178 for the aligned images, see :func:`center_square_resize`), resized to
    ``image_size`` and normalised with the ImageNet statistics; targets are int64 ``[40]`` in
    ``{0, 1}`` (the files' ``-1`` is 0). There is no augmentation, as in the FAMO CelebA setup the
    RGB paper reuses (which resizes to 64×64 without the crop).

    The training order comes from :class:`EpochSeededRandomSampler` seeded with ``seed``; the
    last incomplete training batch is dropped (a batch of one would break batch norm).
    Validation and test loaders are unshuffled and keep every image.

    Args:
        root: the CelebA folder.
        image_size: side of the square images (≥ 8); 64 in the multi-task literature.
        batch_size: images per batch (≥ 1); 256 as in FAMO.
        num_workers: DataLoader worker processes (≥ 0); JPEG decoding dominates, so use some.
        seed: seed of the training order (≥ 0).

    Raises:
        ValueError: if an argument is out of range.

    Example::

        >>> dm = CelebADataModule("/data/celeba", image_size=64, batch_size=256)
        >>> dm.image_shape, dm.num_tasks
        ((3, 64, 64), 40)
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 64,
        batch_size: int = 256,
        num_workers: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_int("image_size", image_size, 8)
        check_int("batch_size", batch_size, 1)
        check_int("num_workers", num_workers, 0)
        check_int("seed", seed, 0)
        self.save_hyperparameters()
        self.root = Path(root)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._names: list[str] | None = None
        self.train_dataset: CelebADataset | None = None
        self.val_dataset: CelebADataset | None = None
        self.test_dataset: CelebADataset | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(3, image_size, image_size)``."""
        return (3, self.image_size, self.image_size)

    @property
    def attribute_names(self) -> list[str]:
        """The attribute names of ``list_attr_celeba.txt``, in file (and target) order.

        Read from the file's header after :meth:`setup`, or when the file is there; otherwise
        the standard :data:`CELEBA_ATTRIBUTES`.
        """
        if self._names is None:
            path = self.root / ATTRIBUTE_FILE
            if not path.is_file():
                return list(CELEBA_ATTRIBUTES)
            with path.open() as handle:
                handle.readline()
                self._names = handle.readline().split()
        return list(self._names)

    @property
    def num_tasks(self) -> int:
        """Number of attributes, that is tasks (40 for CelebA)."""
        return len(self.attribute_names)

    def check_layout(self) -> None:
        """Raise a FileNotFoundError naming the expected layout when part of it is missing.

        Example::

            >>> CelebADataModule("/nonexistent").check_layout()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            FileNotFoundError: CelebA not found under '/nonexistent' (missing: ...
        """
        missing = [f"{IMAGE_FOLDER}/"] if not (self.root / IMAGE_FOLDER).is_dir() else []
        missing += [name for name in (ATTRIBUTE_FILE, PARTITION_FILE) if not self._has(name)]
        if missing:
            raise FileNotFoundError(
                f"CelebA not found under {str(self.root)!r} (missing: {', '.join(missing)}). "
                f"Expected {EXPECTED_LAYOUT}. This module never downloads: get the files once "
                "from the CelebA site (or torchvision.datasets.CelebA(download=True) elsewhere, "
                "whose 'celeba' folder has this layout) and point `root` at that folder."
            )

    def _has(self, name: str) -> bool:
        return (self.root / name).is_file()

    def setup(self, stage: str | None = None) -> None:
        """Parse the two text files and build the three splits (idempotent; any ``stage``).

        Raises:
            FileNotFoundError: if the layout is incomplete or listed images are missing.
            ValueError: if the files disagree or are malformed, or the training split is smaller
                than ``batch_size``.
        """
        if self.train_dataset is not None:
            return
        self.check_layout()
        with (self.root / ATTRIBUTE_FILE).open() as handle:
            names, filenames, targets = parse_attribute_lines(handle)
        with (self.root / PARTITION_FILE).open() as handle:
            partition = parse_partition_lines(handle)
        unlisted = [name for name in filenames if name not in partition]
        if unlisted or len(partition) != len(filenames):
            raise ValueError(
                f"{ATTRIBUTE_FILE} and {PARTITION_FILE} must list the same images; "
                f"{len(filenames)} vs {len(partition)} rows, {len(unlisted)} images without a "
                f"split (e.g. {unlisted[:3]})."
            )
        self._check_images(filenames)
        self._names = names
        splits = torch.tensor([partition[name] for name in filenames])
        datasets = {}
        for split, code in SPLITS.items():
            rows = torch.nonzero(splits == code).flatten()
            datasets[split] = CelebADataset(
                self.root / IMAGE_FOLDER,
                [filenames[i] for i in rows.tolist()],
                targets[rows],
                self.image_size,
            )
        if len(datasets["train"]) < self.batch_size:
            raise ValueError(
                f"the training split has {len(datasets['train'])} images, fewer than "
                f"`batch_size` ({self.batch_size}); the train loader drops the incomplete batch."
            )
        self.train_dataset = datasets["train"]
        self.val_dataset = datasets["val"]
        self.test_dataset = datasets["test"]

    def _check_images(self, filenames: list[str]) -> None:
        """Fail now, not mid-epoch, when listed images are missing (one directory listing)."""
        present = {path.name for path in (self.root / IMAGE_FOLDER).iterdir()}
        absent = [name for name in filenames if name not in present]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} of the {len(filenames)} images listed in {ATTRIBUTE_FILE} are "
                f"not in {str(self.root / IMAGE_FOLDER)!r} (e.g. {absent[:3]}). Expected "
                f"{EXPECTED_LAYOUT}."
            )
