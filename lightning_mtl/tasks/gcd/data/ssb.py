"""GCD data modules for the fine-grained benchmarks: CUB-200-2011, Stanford Cars, FGVC-Aircraft
(the Semantic Shift Benchmark, SSB) and Herbarium19, each read from a local copy in the data set's
standard layout. Nothing is ever downloaded here.

Every module numbers the classes of its data set ``0 … K − 1`` in the same order as the GCD /
SimGCD reference code (Vaze et al., 2022; Wen et al., 2023), so that the class ids of the SSB
split files apply unchanged:

* CUB-200-2011 and Stanford Cars: the 1-based class ids of the annotation files minus one (the
  reference shifts them the same way, and adds 1 to the split file's ids before matching them to
  the files, so the split files hold 0-based ids);
* FGVC-Aircraft: the rank of the variant name in the sorted list of variant names (the
  reference's ``np.unique`` of the names);
* Herbarium19: the rank of the category folder name in the sorted list of folder names as
  *strings* (torchvision's ``ImageFolder``, which the reference uses), so category ``10`` comes
  before category ``2``.

The old (known) classes are, in order of precedence, ``old_classes`` (ids in the numbering
above) or the split file of the Semantic Shift Benchmark given as ``split_file`` (the reference's
``ssb_splits/{cub,scars,aircraft}_osr_splits.pkl``, key ``"known_classes"``, and
``herbarium_19_class_splits.pkl``, key ``"Old"``; all 0-based ids in the numbering above). Without
either, the first half of the classes is old (CUB 100 of 200, Cars 98 of 196, Aircraft 50 of 100,
Herbarium19 341 of 683: the counts of the SSB splits): this is **not** the SSB split, and results
are then not comparable with published numbers; a warning says so.

Only the training images are read (the GCD accuracy is scored on the unlabeled training images);
the split, the loaders and the transforms are those of
:class:`~lightning_mtl.tasks.gcd.GCDDataModule` and :func:`~lightning_mtl.tasks.gcd.gcd_transforms`.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import Tensor

from lightning_mtl.extras import optional_import
from lightning_mtl.tasks.common.files import check_int
from lightning_mtl.tasks.gcd.data.splits import GCDDataModule, gcd_transforms

__all__ = [
    "AircraftGCDDataModule",
    "CUBGCDDataModule",
    "Herbarium19GCDDataModule",
    "StanfordCarsGCDDataModule",
]

# File extensions torchvision's ImageFolder accepts (Herbarium19's class-folder layout).
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class _ImageFiles:
    """Training image ``i`` opened lazily as an RGB PIL image (picklable for worker processes)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __call__(self, index: int) -> Any:
        Image = optional_import("PIL.Image", "gcd")
        with Image.open(self.paths[index]) as image:
            return image.convert("RGB")


def _read_split_file(split_file: Path, key: str, dataset: str) -> list[int]:
    """The old class ids stored under ``key`` in an SSB split pickle."""
    if not split_file.is_file():
        raise FileNotFoundError(
            f"{dataset} split file {str(split_file)!r} not found: expected the Semantic Shift "
            f"Benchmark pickle (a dict whose {key!r} entry lists the 0-based old class ids), as "
            "shipped in the `data/ssb_splits/` folder of the GCD / SimGCD code."
        )
    with open(split_file, "rb") as handle:  # the user's own file: pickle runs code on load
        content = pickle.load(handle)
    if not isinstance(content, dict) or key not in content:
        keys = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise ValueError(
            f"{dataset} split file {str(split_file)!r} has no {key!r} entry (found: {keys})."
        )
    values = np.asarray(content[key]).ravel()
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(
            f"{dataset} split file {str(split_file)!r}: {key!r} must hold integer class ids, "
            f"got dtype {values.dtype}."
        )
    return [int(value) for value in values]


def _missing_layout(dataset: str, root: Path, missing: Sequence[Path], layout: str) -> None:
    """Raise the FileNotFoundError of a data set whose expected files are absent."""
    if missing:
        raise FileNotFoundError(
            f"{dataset} not found under {str(root)!r}: missing {', '.join(map(str, missing))}. "
            f"Expected layout: {layout} This module never downloads; extract the original "
            "archive into the root folder."
        )


def _key_value_lines(path: Path) -> list[tuple[str, str]]:
    """``(first field, rest of the line)`` of every non-empty line of a text file."""
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not value.strip():
            raise ValueError(f"{str(path)!r}, line {number}: expected two fields, got {line!r}.")
        pairs.append((key, value.strip()))
    return pairs


class _SSBGCDDataModule(GCDDataModule):
    """Shared constructor, image reading and transforms of the fine-grained GCD modules."""

    dataset_name: ClassVar[str]
    standard_num_classes: ClassVar[int]
    split_key: ClassVar[str] = "known_classes"
    layout: ClassVar[str]

    def __init__(
        self,
        root: str | Path,
        old_classes: Sequence[int] | None = None,
        split_file: str | Path | None = None,
        labeled_fraction: float = 0.5,
        batch_size: int = 128,
        image_size: int = 224,
        color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        num_classes = self.standard_num_classes
        if old_classes is not None and split_file is not None:
            raise ValueError("Give `old_classes` or `split_file`, not both.")
        if split_file is not None:
            old = _read_split_file(Path(split_file), self.split_key, self.dataset_name)
            source = "split_file"
        elif old_classes is not None:
            old = [int(c) for c in old_classes]
            source = "old_classes"
        else:
            old = list(range(num_classes // 2))
            source = "fallback"
            warnings.warn(
                f"{type(self).__name__}: no `split_file` or `old_classes` given, so the old "
                f"classes are the first {len(old)} of {num_classes}. This is NOT the Semantic "
                "Shift Benchmark split; results are not comparable with published numbers.",
                UserWarning,
                stacklevel=2,
            )
        if any(not 0 <= c < num_classes for c in old):
            raise ValueError(
                f"{self.dataset_name} old classes must be 0-based ids in [0, {num_classes}), "
                f"got {sorted(old)} (from {source})."
            )
        super().__init__(old, labeled_fraction, batch_size, num_workers, seed)
        self.save_hyperparameters()
        self.root = Path(root)
        self.split_file = None if split_file is None else Path(split_file)
        self.old_class_source = source
        self.image_size = check_int("image_size", image_size, 1)
        self.color_jitter = tuple(color_jitter)
        gcd_transforms(self.image_size, self.color_jitter)  # validate the arguments now
        self.image_paths: list[Path] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes ``K`` of the full data set."""
        return self.standard_num_classes

    @abstractmethod
    def _read(self) -> tuple[list[Path], list[int]]:
        """``(image paths, 0-based class ids)`` of the training images, in a fixed order."""

    def _load(self) -> tuple[Callable[[int], Any], np.ndarray]:
        paths, classes = self._read()
        labels = np.asarray(classes, dtype=np.int64).reshape(-1)
        if labels.size == 0:
            raise ValueError(f"{self.dataset_name} under {str(self.root)!r} has no training image.")
        out_of_range = labels[(labels < 0) | (labels >= self.num_classes)]
        if out_of_range.size:
            raise ValueError(
                f"{self.dataset_name} under {str(self.root)!r}: class id {int(out_of_range[0])} "
                f"(0-based) is outside [0, {self.num_classes})."
            )
        missing = [path for path in paths if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.dataset_name}: {len(missing)} of {len(paths)} training images listed in "
                f"the annotations are missing, e.g. {str(missing[0])!r}. Expected layout: "
                f"{self.layout}"
            )
        self.image_paths = list(paths)
        return _ImageFiles(paths), labels

    def _train_transform(self) -> Callable[[Any], Tensor]:
        return gcd_transforms(self.image_size, self.color_jitter)[0]

    def _eval_transform(self) -> Callable[[Any], Tensor]:
        return gcd_transforms(self.image_size, self.color_jitter)[1]


_COMMON_ARGS = """
    Args:
        root: The folder described above.{extra}
        old_classes: Old class ids (0-based, in the numbering above); excludes ``split_file``.
        split_file: Path of the Semantic Shift Benchmark split pickle (see the module
            docstring); excludes ``old_classes``. Without both, the first half of the classes is
            old, which is NOT the SSB split (a warning says so).
        labeled_fraction: Fraction of each old class that is labeled; 0.5 in GCD / SimGCD.
        batch_size: Samples per batch; 128 in SimGCD.
        image_size: Side of the crops of :func:`~lightning_mtl.tasks.gcd.gcd_transforms`; 224 in
            GCD / SimGCD.
        color_jitter: ``(brightness, contrast, saturation, hue)`` of the training jitter; the
            default is the reference's no-op ``ColorJitter()``.
        num_workers: DataLoader worker processes.
        seed: Seed of the split and of the training sampler.

    Attributes:
        old_class_source: ``"old_classes"``, ``"split_file"`` or ``"fallback"``.
        image_paths: After :meth:`setup`, the path of every training image, aligned with
            ``train_dataset`` (and ``train_targets``).

    Raises:
        FileNotFoundError: At :meth:`setup`, naming the expected layout, when a folder,
            annotation file or listed image is missing; at construction when ``split_file`` is.
        ValueError: If an argument is out of range, the split file lacks its entry, or an
            annotation is malformed.

"""


def _document(extra_args: str = "") -> Callable[[type], type]:
    """Insert the arguments shared by the modules before a class docstring's example."""

    def decorate(cls: type) -> type:
        common = _COMMON_ARGS.format(extra=extra_args)
        cls.__doc__ = (cls.__doc__ or "").replace("\n    Example::", common + "    Example::", 1)
        return cls

    return decorate


@_document()
class CUBGCDDataModule(_SSBGCDDataModule):
    """GCD on CUB-200-2011 (200 bird species) from a local copy in its standard layout.

    ``root`` must contain the extracted ``CUB_200_2011.tgz``::

        root/CUB_200_2011/images.txt              # <image id> <relative path>
        root/CUB_200_2011/image_class_labels.txt  # <image id> <class id, 1 … 200>
        root/CUB_200_2011/train_test_split.txt    # <image id> <1 = training, 0 = test>
        root/CUB_200_2011/images/<relative path>

    Only the training images (``is_training_image == 1``, 5994 of them) are used, in the order of
    ``images.txt``. Class ``c`` of the files becomes ``c − 1``. Items, batches and the split are
    those of :class:`~lightning_mtl.tasks.gcd.GCDDataModule`; with the default ``image_size``
    training batches are ``(views [B, 2, 3, 224, 224], labels, is_labeled)`` and evaluation batches
    ``(images [B, 3, 224, 224], labels, is_old)``.

    Example::

        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")  # the not-the-SSB-split warning
        ...     dm = CUBGCDDataModule("/data")
        >>> dm.num_classes, dm.num_old, dm.old_class_source
        (200, 100, 'fallback')
        >>> CUBGCDDataModule("/nonexistent", old_classes=[0, 1]).setup()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: CUB-200-2011 not found under '/nonexistent': missing ...

    With the SSB split of the reference code (a file on disk, so not run here)::

        dm = CUBGCDDataModule("/data", split_file="ssb_splits/cub_osr_splits.pkl")
    """

    dataset_name = "CUB-200-2011"
    standard_num_classes = 200
    layout = (
        "root/CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt} and the "
        "images under root/CUB_200_2011/images/ (the extracted CUB_200_2011.tgz)."
    )

    def _read(self) -> tuple[list[Path], list[int]]:
        base = self.root / "CUB_200_2011"
        names = ("images.txt", "image_class_labels.txt", "train_test_split.txt")
        files = [base / name for name in names]
        _missing_layout(
            self.dataset_name, self.root, [f for f in files if not f.is_file()], self.layout
        )
        classes, training = (dict(_key_value_lines(file)) for file in files[1:])
        paths, labels = [], []
        for image_id, relative in _key_value_lines(files[0]):
            if image_id not in classes or image_id not in training:
                raise ValueError(
                    f"{self.dataset_name}: image id {image_id} of images.txt is missing from "
                    "image_class_labels.txt or train_test_split.txt."
                )
            if training[image_id] not in ("0", "1"):
                raise ValueError(
                    f"{self.dataset_name}: train_test_split.txt flag of image {image_id} must be "
                    f"0 or 1, got {training[image_id]!r}."
                )
            if training[image_id] == "1":
                paths.append(base / "images" / relative)
                labels.append(int(classes[image_id]) - 1)  # files count classes from 1
        return paths, labels


@_document()
class StanfordCarsGCDDataModule(_SSBGCDDataModule):
    """GCD on Stanford Cars (196 car models) from a local copy in its classic layout.

    ``root`` must contain the training images and the devkit's training annotations::

        root/devkit/cars_train_annos.mat  # struct `annotations`: fields `class` (1 … 196), `fname`
        root/cars_train/<fname>

    (torchvision's layout, the same under ``root/stanford_cars/``, is accepted too). The ``.mat``
    file is read with ``scipy.io.loadmat``; its order is the training-set order (8144 images).
    Class ``c`` of the file becomes ``c − 1``. Items, batches and the split are those of
    :class:`~lightning_mtl.tasks.gcd.GCDDataModule`.

    Example::

        >>> dm = StanfordCarsGCDDataModule("/data", old_classes=range(98))
        >>> dm.num_classes, dm.num_old, dm.old_class_source
        (196, 98, 'old_classes')
    """

    dataset_name = "Stanford Cars"
    standard_num_classes = 196
    layout = (
        "root/devkit/cars_train_annos.mat and the images root/cars_train/*.jpg (or the same "
        "under root/stanford_cars/)."
    )

    def _read(self) -> tuple[list[Path], list[int]]:
        from scipy.io import loadmat

        base = self.root
        if not (base / "devkit").is_dir() and (base / "stanford_cars" / "devkit").is_dir():
            base = base / "stanford_cars"
        annotations_file = base / "devkit" / "cars_train_annos.mat"
        images = base / "cars_train"
        missing = [] if annotations_file.is_file() else [annotations_file]
        missing += [] if images.is_dir() else [images]
        _missing_layout(self.dataset_name, self.root, missing, self.layout)
        content = loadmat(str(annotations_file))
        if "annotations" not in content:
            raise ValueError(f"{str(annotations_file)!r} has no `annotations` struct.")
        records = np.asarray(content["annotations"]).ravel()
        fields = records.dtype.names or ()
        if "class" not in fields or "fname" not in fields:
            raise ValueError(
                f"{str(annotations_file)!r}: `annotations` must have the fields `class` and "
                f"`fname`, got {list(fields)}."
            )
        paths, labels = [], []
        for record in records:
            paths.append(images / str(np.asarray(record["fname"]).squeeze()))
            labels.append(int(np.asarray(record["class"]).squeeze()) - 1)  # 1-based in the file
        return paths, labels


@_document()
class AircraftGCDDataModule(_SSBGCDDataModule):
    """GCD on FGVC-Aircraft (100 aircraft variants) from a local copy in its standard layout.

    ``root`` must contain the extracted ``fgvc-aircraft-2013b.tar.gz``::

        root/fgvc-aircraft-2013b/data/variants.txt                  # one variant name a line
        root/fgvc-aircraft-2013b/data/images_variant_trainval.txt   # <image id> <variant name>
        root/fgvc-aircraft-2013b/data/images/<image id>.jpg

    The training set is the ``trainval`` split (6667 images, in file order), as in GCD / SimGCD.
    Class ids are the ranks of the variant names of ``variants.txt`` in sorted order (Python's
    code-point order, the reference's ``np.unique``). The images keep the copyright banner at
    their bottom, as in the reference. Items, batches and the split are those of
    :class:`~lightning_mtl.tasks.gcd.GCDDataModule`.

    Example::

        >>> AircraftGCDDataModule("/data", old_classes=[3, 1]).old_classes
        [3, 1]
    """

    dataset_name = "FGVC-Aircraft"
    standard_num_classes = 100
    layout = (
        "root/fgvc-aircraft-2013b/data/{variants.txt, images_variant_trainval.txt} and the "
        "images root/fgvc-aircraft-2013b/data/images/<image id>.jpg (the extracted "
        "fgvc-aircraft-2013b.tar.gz)."
    )

    def _read(self) -> tuple[list[Path], list[int]]:
        base = self.root / "fgvc-aircraft-2013b" / "data"
        variants_file = base / "variants.txt"
        trainval_file = base / "images_variant_trainval.txt"
        _missing_layout(
            self.dataset_name,
            self.root,
            [f for f in (variants_file, trainval_file) if not f.is_file()],
            self.layout,
        )
        names = sorted({line.strip() for line in variants_file.read_text().splitlines()} - {""})
        if len(names) > self.num_classes:
            raise ValueError(
                f"{str(variants_file)!r} lists {len(names)} variants, more than {self.num_classes}."
            )
        class_of = {name: index for index, name in enumerate(names)}
        paths, labels = [], []
        for image_id, name in _key_value_lines(trainval_file):
            if name not in class_of:
                raise ValueError(
                    f"{str(trainval_file)!r}: variant {name!r} of image {image_id} is not in "
                    "variants.txt."
                )
            paths.append(base / "images" / f"{image_id}.jpg")
            labels.append(class_of[name])
        return paths, labels


@_document(
    '\n        folder: Name of the training folder under ``root``; ``"small-train"`` or '
    '``"train"``.'
)
class Herbarium19GCDDataModule(_SSBGCDDataModule):
    """GCD on Herbarium19 (683 melastome species) from a local copy of the FGVC6 challenge data.

    ``root/<folder>`` (``folder`` = ``"small-train"``, the resized training set the reference
    reads, or ``"train"``) holds either the challenge's class-folder layout::

        root/small-train/<category>/<id>.jpg

    or, when ``root/<folder>/metadata.json`` exists, a COCO-style description of it: ``images``
    (``id``, ``file_name`` relative to ``root/<folder>``) and ``annotations`` (``image_id``,
    ``category_id``), the category of an image being ``str(category_id)``. Either way the class
    ids are the ranks of the category names in sorted *string* order, as torchvision's
    ``ImageFolder`` (used by the reference) numbers the folders, which is the numbering of the
    ``herbarium_19_class_splits.pkl`` split (key ``"Old"``); with ``metadata.json`` this assumes
    its category ids are the folder names of the challenge data. Every category folder (or entry
    of ``categories`` in ``metadata.json``) takes an id, even without images. The sample order is
    ``ImageFolder``'s (class folders, then file names, sorted) or that of ``images`` in
    ``metadata.json``. Items, batches and the split are those of
    :class:`~lightning_mtl.tasks.gcd.GCDDataModule`.

    Example::

        >>> dm = Herbarium19GCDDataModule("/data", old_classes=range(341), folder="train")
        >>> dm.num_classes, dm.num_old, dm.folder
        (683, 341, 'train')
    """

    dataset_name = "Herbarium19"
    standard_num_classes = 683
    split_key = "Old"
    layout = (
        "root/<folder>/<category>/<id>.jpg (the extracted small-train.tar.gz of the Herbarium "
        "2019 FGVC6 challenge, or train.tar.gz with folder='train'), or root/<folder>/"
        "metadata.json (COCO-style `images` with `file_name` relative to root/<folder>, and "
        "`annotations` with `image_id`, `category_id`)."
    )

    def __init__(
        self,
        root: str | Path,
        old_classes: Sequence[int] | None = None,
        split_file: str | Path | None = None,
        labeled_fraction: float = 0.5,
        batch_size: int = 128,
        image_size: int = 224,
        color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
        num_workers: int = 0,
        seed: int = 0,
        folder: str = "small-train",
    ) -> None:
        if not isinstance(folder, str) or not folder or Path(folder).is_absolute():
            raise ValueError(f"`folder` must be a folder name under `root`, got {folder!r}.")
        self.folder = folder
        super().__init__(
            root,
            old_classes,
            split_file,
            labeled_fraction,
            batch_size,
            image_size,
            color_jitter,
            num_workers,
            seed,
        )

    def _read(self) -> tuple[list[Path], list[int]]:
        base = self.root / self.folder
        _missing_layout(self.dataset_name, self.root, [] if base.is_dir() else [base], self.layout)
        metadata = base / "metadata.json"
        if metadata.is_file():
            paths, categories, declared = self._read_metadata(base, metadata)
        else:
            paths, categories, declared = self._scan_folders(base)
        # every category gets an id, even one without images, as in ImageFolder; string order
        names = sorted(set(categories) | set(declared))
        if len(names) > self.num_classes:
            raise ValueError(
                f"{self.dataset_name} under {str(base)!r} has {len(names)} categories, more than "
                f"{self.num_classes}."
            )
        class_of = {name: index for index, name in enumerate(names)}
        return paths, [class_of[name] for name in categories]

    def _scan_folders(self, base: Path) -> tuple[list[Path], list[str], list[str]]:
        """``(paths, category of each, every category folder)`` in ImageFolder's order."""
        paths: list[Path] = []
        categories: list[str] = []
        folders = sorted(entry.name for entry in os.scandir(base) if entry.is_dir())
        for name in folders:
            for directory, _, files in sorted(os.walk(base / name, followlinks=True)):
                for file in sorted(files):
                    if file.lower().endswith(_IMAGE_EXTENSIONS):
                        paths.append(Path(directory) / file)
                        categories.append(name)
        if not paths:
            raise FileNotFoundError(
                f"{self.dataset_name}: no image in category folders under {str(base)!r}. "
                f"Expected layout: {self.layout}"
            )
        return paths, categories, folders

    def _read_metadata(self, base: Path, metadata: Path) -> tuple[list[Path], list[str], list[str]]:
        """``(paths, category of each, the categories of `categories`)`` in file order."""
        content = json.loads(metadata.read_text())
        try:
            category_of = {a["image_id"]: a["category_id"] for a in content["annotations"]}
            files = [(image["id"], image["file_name"]) for image in content["images"]]
            declared = [str(category["id"]) for category in content.get("categories", [])]
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"{str(metadata)!r} must hold COCO-style `images` (`id`, `file_name`) and "
                f"`annotations` (`image_id`, `category_id`); missing {error}."
            ) from None
        paths, categories = [], []
        for image_id, file_name in files:
            if image_id not in category_of:
                raise ValueError(f"{str(metadata)!r}: image {image_id!r} has no annotation.")
            paths.append(base / file_name)
            categories.append(str(category_of[image_id]))
        return paths, categories, declared
