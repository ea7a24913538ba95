"""Argument checks and local-copy readers shared by the data modules (never a download)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from lightning_mtl.extras import optional_import

Labels = Sequence[int] | np.ndarray | Tensor

CIFAR_LAYOUT = {
    # name: (torchvision folder, files torchvision reads, images per class in the full train set)
    "cifar10": (
        "cifar-10-batches-py",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        5000,
    ),
    "cifar100": ("cifar-100-python", ("train", "test", "meta"), 500),
}
CIFAR_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` if it is an int (not a bool) ``>= minimum``, else a ValueError naming it.

    Example::

        >>> check_int("batch_size", 8, 1)
        8
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def labels_array(targets: Labels) -> np.ndarray:
    """Integer labels as a 1-D int64 NumPy array; ValueError for other shapes or dtypes.

    Example::

        >>> labels_array([2, 0, 1])
        array([2, 0, 1])
    """
    if isinstance(targets, Tensor):
        targets = targets.detach().cpu().numpy()
    array = np.asarray(targets)
    if array.ndim != 1:
        raise ValueError(f"`targets` must be 1-D, got shape {array.shape}.")
    if array.size and (array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"`targets` must be integer labels, got dtype {array.dtype}.")
    if array.size and array.min() < 0:
        raise ValueError(f"`targets` must be >= 0, got a label {int(array.min())}.")
    return array.astype(np.int64, copy=False)


def check_cifar_name(dataset: str) -> None:
    """ValueError unless ``dataset`` is ``"cifar10"`` or ``"cifar100"``."""
    if dataset not in CIFAR_LAYOUT:
        raise ValueError(f"`dataset` must be one of {sorted(CIFAR_LAYOUT)}, got {dataset!r}.")


def load_cifar(root: Path, dataset: str, train: bool, transform: object = None) -> Dataset:
    """torchvision's CIFAR data set from a local copy in its standard layout.

    Raises:
        FileNotFoundError: naming the expected layout when a file is missing.
        RuntimeError: when the files fail torchvision's MD5 check.
    """
    datasets = optional_import("torchvision.datasets", "all")
    folder, files, _ = CIFAR_LAYOUT[dataset]
    base = root / folder
    name = "CIFAR10" if dataset == "cifar10" else "CIFAR100"
    missing = [file for file in files if not (base / file).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name} not found under {str(root)!r}: expected the folder {str(base)!r} with the "
            f"files {', '.join(files)} (missing: {', '.join(missing)}). This module never "
            "downloads. Get the data once on a machine with internet access with "
            f"`torchvision.datasets.{name}({str(root)!r}, download=True)`, or extract the python "
            "version archive from https://www.cs.toronto.edu/~kriz/cifar.html into the root folder."
        )
    cls = getattr(datasets, name)
    try:
        return cls(str(root), train=train, transform=transform, download=False)
    except RuntimeError as error:
        raise RuntimeError(
            f"{name} files under {str(base)!r} exist but failed torchvision's integrity (MD5) "
            f"check; re-extract the original archive. ({error})"
        ) from error
