"""Tests for the fine-grained GCD data modules (CUB-200-2011, Stanford Cars, FGVC-Aircraft,
Herbarium19) and the shared GCD transforms.

Nothing is downloaded: every test writes a tiny fake copy of the data set's standard layout in
``tmp_path``. Each image is one solid colour whose red channel encodes its class and whose blue
channel marks training (100) or test (250) images, so the label of every loaded image can be
checked against the file it came from.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_mtl.tasks.gcd import (
    AircraftGCDDataModule,
    CIFARGCDDataModule,
    CUBGCDDataModule,
    Herbarium19GCDDataModule,
    StanfordCarsGCDDataModule,
    gcd_transforms,
)
from lightning_mtl.tasks.gcd.data.splits import GCD_IMAGENET_MEAN, GCD_IMAGENET_STD

SIZE = 8  # image_size of the modules under test: Resize(9), crop 8
TRAIN_BLUE, TEST_BLUE = 100, 250


def _image(path: Path, red: int, blue: int = TRAIN_BLUE, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (red, 60, blue)).save(path, format="JPEG", quality=95)


def _pickle(path: Path, obj: object) -> Path:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)
    return path


def _colours(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3]`` mean RGB (0–255) of normalised ``[B, 3, H, W]`` images."""
    mean = torch.tensor(GCD_IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(GCD_IMAGENET_STD).view(1, 3, 1, 1)
    return ((images * std + mean) * 255).mean(dim=(2, 3))


def _collect(loader: Iterable) -> tuple[torch.Tensor, ...]:
    batches = list(loader)
    return tuple(torch.cat([batch[i] for batch in batches]) for i in range(len(batches[0])))


def _red(original_class: int) -> int:
    return 10 + 20 * original_class


def _class_from_red(colours: torch.Tensor) -> list[int]:
    return [round((float(r) - 10) / 20) for r in colours[:, 0]]


# --- gcd_transforms -----------------------------------------------------------------------------


def test_gcd_transforms_recipe_and_sharing() -> None:
    from torchvision import transforms

    train, evaluate = gcd_transforms(224)
    kinds = [type(t) for t in train.transforms]
    assert kinds == [
        transforms.Resize,
        transforms.RandomCrop,
        transforms.RandomHorizontalFlip,
        transforms.ColorJitter,
        transforms.ToTensor,
        transforms.Normalize,
    ]
    assert [type(t) for t in evaluate.transforms] == [
        transforms.Resize,
        transforms.CenterCrop,
        transforms.ToTensor,
        transforms.Normalize,
    ]
    for resize in (train.transforms[0], evaluate.transforms[0]):
        assert resize.size == 256  # int(224 / 0.875)
        assert resize.interpolation == transforms.InterpolationMode.BICUBIC
    assert tuple(train.transforms[1].size) == (224, 224)
    assert tuple(evaluate.transforms[1].size) == (224, 224)
    assert train.transforms[2].p == 0.5
    assert list(evaluate.transforms[3].mean) == [0.485, 0.456, 0.406]
    assert list(evaluate.transforms[3].std) == [0.229, 0.224, 0.225]
    # the reference's argument-less ColorJitter() is a no-op: none of its ranges is set
    jitter = train.transforms[3]
    assert jitter.brightness is None and jitter.contrast is None and jitter.hue is None
    assert gcd_transforms(32)[1].transforms[0].size == 36
    # CIFAR builds the same recipe at 32 through the shared function
    cifar = CIFARGCDDataModule("/nowhere", color_jitter=(0.4, 0.4, 0.4, 0.1))
    shared = gcd_transforms(32, (0.4, 0.4, 0.4, 0.1))
    assert repr(cifar._train_transform()) == repr(shared[0])
    assert repr(cifar._eval_transform()) == repr(shared[1])
    with pytest.raises(ValueError, match="image_size"):
        gcd_transforms(0)
    with pytest.raises(ValueError, match="color_jitter"):
        gcd_transforms(8, (0.1, 0.1))


# --- CUB-200-2011 -------------------------------------------------------------------------------


def _fake_cub(root: Path, classes: int = 5, train: int = 4, test: int = 2) -> list[tuple[str, int]]:
    """Write a tiny CUB_200_2011; return ``(relative path, 1-based class)`` of the training
    images in images.txt order."""
    base = root / "CUB_200_2011"
    rows = []
    for c in range(1, classes + 1):
        for k in range(train + test):
            relative = f"{c:03d}.Bird_{c}/Bird_{c}_{k:04d}.jpg"
            is_train = int(k < train)
            _image(base / "images" / relative, _red(c), TRAIN_BLUE if is_train else TEST_BLUE)
            rows.append((relative, c, is_train))
    order = np.random.default_rng(0).permutation(len(rows))
    rows = [rows[i] for i in order]  # classes and train/test interleaved, as in the real files
    ids = range(1, len(rows) + 1)
    (base / "images.txt").write_text(
        "".join(f"{i} {r[0]}\n" for i, r in zip(ids, rows, strict=True))
    )
    # the label and split files list the ids in another order: they are joined on the id
    labels = [f"{i} {r[1]}\n" for i, r in zip(ids, rows, strict=True)]
    (base / "image_class_labels.txt").write_text("".join(reversed(labels)))
    (base / "train_test_split.txt").write_text(
        "".join(f"{i} {r[2]}\n" for i, r in zip(ids, rows, strict=True))
    )
    return [(r[0], r[1]) for r in rows if r[2]]


def test_cub_reads_training_images_with_the_ssb_split_file(tmp_path: Path) -> None:
    expected = _fake_cub(tmp_path)
    # SSB ids are 0-based: file classes 4 and 1 are old
    split_file = _pickle(
        tmp_path / "cub_osr_splits.pkl",
        {"known_classes": [3, 0], "unknown_classes": {"Easy": [1], "Medium": [2], "Hard": [4]}},
    )
    dm = CUBGCDDataModule(tmp_path, split_file=split_file, image_size=SIZE, batch_size=4)
    assert (dm.num_classes, dm.num_old, dm.old_class_source) == (200, 2, "split_file")
    dm.setup()
    assert dm.split is not None and dm.train_targets is not None and dm.image_paths is not None
    # only the 5 × 4 training images (train_test_split.txt honoured), in images.txt order
    base = tmp_path / "CUB_200_2011" / "images"
    assert dm.image_paths == [base / relative for relative, _ in expected]
    assert len(dm.train_dataset) == 20  # type: ignore[arg-type]
    # old classes (file ids 1, 4) → 0, 1; new classes 2, 3, 5 → 2, 3, 4
    renumber = {1: 0, 4: 1, 2: 2, 3: 3, 5: 4}
    assert dm.train_targets.tolist() == [renumber[c] for _, c in expected]
    assert dm.split.class_map == {0: 0, 3: 1, 1: 2, 2: 3, 4: 4}
    labeled = dm.train_targets[dm.split.labeled_indices]
    assert np.bincount(labeled, minlength=5).tolist() == [2, 2, 0, 0, 0]  # ⌊4 / 2⌋ per old class

    views, label, is_labeled = dm.train_dataset[0]  # type: ignore[index]
    assert views.shape == (2, 3, SIZE, SIZE) and views.dtype == torch.float32
    assert int(label) == renumber[expected[0][1]] and bool(is_labeled) == (
        0 in dm.split.labeled_indices
    )
    images, labels, is_old = _collect(dm.val_dataloader())
    assert images.shape == (16, 3, SIZE, SIZE)  # 20 training images − 4 labeled
    colours = _colours(images)
    assert torch.allclose(colours[:, 2], torch.full((16,), float(TRAIN_BLUE)), atol=3)  # no test
    assert labels.tolist() == [renumber[c] for c in _class_from_red(colours)]
    assert torch.equal(is_old, labels < 2) and int(is_old.sum()) == 4

    # the labeled loader: exactly the labeled images, old classes only
    lab_images, lab_labels, lab_flags = _collect(dm.labeled_dataloader())
    assert lab_images.shape == (4, 2, 3, SIZE, SIZE) and bool(lab_flags.all())
    assert lab_labels.tolist() == labeled.tolist()
    lab_colours = _colours(lab_images[:, 0])  # views differ by flips only: same solid colour
    assert lab_labels.tolist() == [renumber[c] for c in _class_from_red(lab_colours)]


def test_cub_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        CUBGCDDataModule(tmp_path, old_classes=[0]).setup()
    message = str(info.value)
    assert str(tmp_path / "CUB_200_2011" / "images.txt") in message
    assert "train_test_split.txt" in message and "never downloads" in message
    _fake_cub(tmp_path, classes=2)
    (tmp_path / "CUB_200_2011" / "images" / "001.Bird_1" / "Bird_1_0000.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 8 training images"):
        CUBGCDDataModule(tmp_path, old_classes=[0]).setup()
    herbarium_style = _pickle(tmp_path / "wrong.pkl", {"Old": [0]})
    with pytest.raises(ValueError, match="known_classes"):
        CUBGCDDataModule(tmp_path, split_file=herbarium_style)
    one_based = _pickle(tmp_path / "one_based.pkl", {"known_classes": [1, 200]})
    with pytest.raises(ValueError, match=r"0-based ids in \[0, 200\)"):
        CUBGCDDataModule(tmp_path, split_file=one_based)
    with pytest.raises(FileNotFoundError, match="split file"):
        CUBGCDDataModule(tmp_path, split_file=tmp_path / "absent.pkl")
    with pytest.raises(ValueError, match="not both"):
        CUBGCDDataModule(tmp_path, old_classes=[0], split_file=one_based)
    with pytest.raises(ValueError, match="image_size"):
        CUBGCDDataModule(tmp_path, old_classes=[0], image_size=0)


def test_fallback_old_classes_are_the_first_half_with_a_warning() -> None:
    expected = {
        CUBGCDDataModule: (200, 100),
        StanfordCarsGCDDataModule: (196, 98),
        AircraftGCDDataModule: (100, 50),
        Herbarium19GCDDataModule: (683, 341),
    }
    for cls, (num_classes, num_old) in expected.items():
        with pytest.warns(UserWarning, match="NOT the Semantic Shift Benchmark split"):
            dm = cls("/nowhere")
        assert (dm.num_classes, dm.num_old, dm.old_class_source) == (
            num_classes,
            num_old,
            "fallback",
        )
        assert dm.old_classes == list(range(num_old))


# --- Stanford Cars ------------------------------------------------------------------------------


def _fake_cars(root: Path, classes: int = 4, per_class: int = 3) -> list[tuple[str, int]]:
    """Write cars_train/ and devkit/cars_train_annos.mat; return ``(fname, 1-based class)`` in
    annotation order."""
    from scipy.io import savemat

    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(1, classes + 1), per_class))
    rows = [(f"{i + 1:05d}.jpg", int(c)) for i, c in enumerate(labels)]
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    annotations = np.zeros((1, len(rows)), dtype=[(name, "O") for name in fields])
    for j, (fname, c) in enumerate(rows):
        _image(root / "cars_train" / fname, _red(c))
        box = [np.array([[v]], dtype=np.uint16) for v in (1, 2, 9, 8)]
        annotations[0, j] = (*box, np.array([[c]], dtype=np.uint8), np.array([fname]))
    (root / "devkit").mkdir(parents=True)
    savemat(str(root / "devkit" / "cars_train_annos.mat"), {"annotations": annotations})
    return rows


def test_stanford_cars_reads_the_devkit_annotations(tmp_path: Path) -> None:
    rows = _fake_cars(tmp_path)
    dm = StanfordCarsGCDDataModule(tmp_path, old_classes=[2, 0], image_size=SIZE, batch_size=5)
    dm.setup()
    assert dm.split is not None and dm.train_targets is not None
    assert dm.image_paths == [tmp_path / "cars_train" / fname for fname, _ in rows]
    # 0-based old classes 2, 0 = file classes 3, 1 → 0, 1; file classes 2, 4 → 2, 3
    renumber = {1: 0, 3: 1, 2: 2, 4: 3}
    assert dm.train_targets.tolist() == [renumber[c] for _, c in rows]
    labeled = dm.train_targets[dm.split.labeled_indices]
    assert np.bincount(labeled, minlength=4).tolist() == [1, 1, 0, 0]  # ⌊3 / 2⌋ per old class
    images, labels, is_old = _collect(dm.val_dataloader())
    assert images.shape == (10, 3, SIZE, SIZE)
    assert labels.tolist() == [renumber[c] for c in _class_from_red(_colours(images))]
    assert torch.equal(is_old, labels < 2)

    # torchvision's layout (everything under root/stanford_cars/) is accepted as well
    other = tmp_path / "tv"
    _fake_cars(other / "stanford_cars", classes=2, per_class=2)
    dm = StanfordCarsGCDDataModule(other, old_classes=[0], image_size=SIZE)
    dm.setup()
    assert dm.image_paths is not None and len(dm.image_paths) == 4
    assert dm.image_paths[0].parent == other / "stanford_cars" / "cars_train"


def test_stanford_cars_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        StanfordCarsGCDDataModule(tmp_path, old_classes=[0]).setup()
    message = str(info.value)
    assert str(tmp_path / "devkit" / "cars_train_annos.mat") in message
    assert str(tmp_path / "cars_train") in message and "scipy" not in message
    with pytest.raises(ValueError, match=r"\[0, 196\)"):
        StanfordCarsGCDDataModule(tmp_path, old_classes=[196])


# --- FGVC-Aircraft ------------------------------------------------------------------------------

_VARIANTS = ["707-320", "A300B4", "Cessna 172", "F/A-18", "DHC-1", "Tu-154", "MD-80", "BAE 146-200"]
_VARIANTS += [f"Variant {i:02d}" for i in range(92)]


def _fake_aircraft(root: Path, per_variant: int = 2) -> list[tuple[str, str]]:
    """Write fgvc-aircraft-2013b/data; return ``(image id, variant)`` of trainval in file order."""
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    shuffled = [_VARIANTS[i] for i in np.random.default_rng(2).permutation(len(_VARIANTS))]
    (data / "variants.txt").write_text("".join(f"{name}\n" for name in shuffled))
    rows = [
        (f"{1000 + 10 * i + k:07d}", name)
        for i, name in enumerate(shuffled)
        for k in range(per_variant)
    ]
    rows = [rows[i] for i in np.random.default_rng(3).permutation(len(rows))]
    colour_of = {name: rank % 12 for rank, name in enumerate(np.unique(_VARIANTS))}
    for image_id, name in rows:
        _image(data / "images" / f"{image_id}.jpg", _red(colour_of[name]), size=(8, 8))
    (data / "images_variant_trainval.txt").write_text("".join(f"{i} {n}\n" for i, n in rows))
    (data / "images_variant_test.txt").write_text("9999999 707-320\n")  # must not be read
    return rows


def test_aircraft_sorted_variant_ids_and_the_fallback_split(tmp_path: Path) -> None:
    rows = _fake_aircraft(tmp_path)
    with pytest.warns(UserWarning, match="first 50 of 100"):
        dm = AircraftGCDDataModule(tmp_path, image_size=SIZE, batch_size=50)
    dm.setup()
    assert dm.split is not None and dm.train_targets is not None and dm.image_paths is not None
    assert len(dm.image_paths) == 200 and dm.image_paths[0].name == f"{rows[0][0]}.jpg"
    # class id = rank in sorted names (the reference's np.unique); old = the first 50 of them
    rank = {name: i for i, name in enumerate(np.unique(_VARIANTS).tolist())}
    assert rank["707-320"] == 0 and rank["A300B4"] == 1 and rank["BAE 146-200"] == 2
    assert dm.train_targets.tolist() == [rank[name] for _, name in rows]  # renumbering: identity
    assert dm.split.class_map == {c: c for c in range(100)}
    labeled = dm.train_targets[dm.split.labeled_indices]
    assert np.bincount(labeled, minlength=100).tolist() == [1] * 50 + [0] * 50
    images, labels, is_old = _collect(dm.val_dataloader())
    assert images.shape == (150, 3, SIZE, SIZE) and int(is_old.sum()) == 50
    assert [c % 12 for c in labels.tolist()] == _class_from_red(_colours(images))

    split_file = _pickle(tmp_path / "aircraft_osr_splits.pkl", {"known_classes": [99, 5]})
    dm = AircraftGCDDataModule(tmp_path, split_file=split_file, image_size=SIZE)
    dm.setup()
    assert dm.split is not None and dm.split.class_map[5] == 0 and dm.split.class_map[99] == 1
    assert dm.split.class_map[0] == 2


def test_aircraft_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        AircraftGCDDataModule(tmp_path, old_classes=[0]).setup()
    message = str(info.value)
    assert str(tmp_path / "fgvc-aircraft-2013b" / "data" / "variants.txt") in message
    assert "images_variant_trainval.txt" in message
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("A\nB\n")
    (data / "images_variant_trainval.txt").write_text("0000001 C\n")
    with pytest.raises(ValueError, match=r"'C'.*not in variants\.txt"):
        AircraftGCDDataModule(tmp_path, old_classes=[0]).setup()


# --- Herbarium19 --------------------------------------------------------------------------------

_CATEGORIES = ["0", "1", "2", "10", "11"]
# ImageFolder sorts the folder names as strings: "0", "1", "10", "11", "2"
_IMAGEFOLDER_ID = {"0": 0, "1": 1, "10": 2, "11": 3, "2": 4}


def test_herbarium_class_folders_follow_imagefolder(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    train = tmp_path / "small-train"
    for name in _CATEGORIES:
        for file in ("00002.jpg", "00000.jpg", "00001.jpg"):  # written out of order
            _image(train / name / file, _red(int(name)))
    (train / "0" / "notes.txt").write_text("not an image")
    split_file = _pickle(tmp_path / "herbarium_19_class_splits.pkl", {"Old": [3, 0], "New": [1]})
    dm = Herbarium19GCDDataModule(tmp_path, split_file=split_file, image_size=SIZE, batch_size=4)
    assert (dm.num_classes, dm.num_old) == (683, 2)
    dm.setup()
    assert dm.split is not None and dm.train_targets is not None
    reference = ImageFolder(str(train))
    assert dm.image_paths == [Path(path) for path, _ in reference.samples]
    # old: ImageFolder ids 0 ("0"), 3 ("11") → 0, 1; new ids 1, 2, 4 → 2, 3, 4
    renumber = {0: 0, 3: 1, 1: 2, 2: 3, 4: 4}
    assert dm.train_targets.tolist() == [renumber[t] for t in reference.targets]
    labeled = dm.train_targets[dm.split.labeled_indices]
    assert np.bincount(labeled, minlength=5).tolist() == [1, 1, 0, 0, 0]
    images, labels, _ = _collect(dm.val_dataloader())
    folder_names = [str(c) for c in _class_from_red(_colours(images))]
    assert labels.tolist() == [renumber[_IMAGEFOLDER_ID[name]] for name in folder_names]

    # an empty category folder still takes its id, as in ImageFolder: "100" shifts "11" and "2"
    (train / "100").mkdir()
    dm = Herbarium19GCDDataModule(tmp_path, old_classes=[4], image_size=SIZE)
    dm.setup()
    assert dm.train_targets is not None and dm.split is not None
    with_empty = ImageFolder(str(train), allow_empty=True)
    assert with_empty.class_to_idx["11"] == 4
    assert sorted(dm.split.class_map) == [0, 1, 2, 4, 5]  # no label 3: folder "100" is empty
    assert dm.train_targets.tolist() == [dm.split.class_map[t] for t in with_empty.targets]


def test_herbarium_metadata_json(tmp_path: Path) -> None:
    train = tmp_path / "train"
    images, annotations = [], []
    for index, name in enumerate(_CATEGORIES * 2):
        file_name = f"images/{name}/{index:05d}.jpg"
        _image(train / file_name, _red(int(name)))
        images.append({"id": 100 + index, "file_name": file_name})
        annotations.append({"image_id": 100 + index, "category_id": int(name), "id": index})
    metadata = {"images": images, "annotations": annotations[::-1], "categories": []}
    (train / "metadata.json").write_text(json.dumps(metadata))
    dm = Herbarium19GCDDataModule(tmp_path, old_classes=[4], folder="train", image_size=SIZE)
    dm.setup()
    assert dm.train_targets is not None and dm.split is not None
    assert dm.image_paths == [train / image["file_name"] for image in images]
    # category "2" (ImageFolder id 4) is old → 0; ids 0, 1, 2, 3 → 1, 2, 3, 4
    expected = [{4: 0, 0: 1, 1: 2, 2: 3, 3: 4}[_IMAGEFOLDER_ID[n]] for n in _CATEGORIES * 2]
    assert dm.train_targets.tolist() == expected
    assert [int(dm.train_targets[i]) for i in dm.split.labeled_indices] == [0]


def test_herbarium_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        Herbarium19GCDDataModule(tmp_path, old_classes=[0]).setup()
    assert str(tmp_path / "small-train") in str(info.value) and "metadata.json" in str(info.value)
    (tmp_path / "small-train" / "3").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no image"):
        Herbarium19GCDDataModule(tmp_path, old_classes=[0]).setup()
    wrong_key = _pickle(tmp_path / "split.pkl", {"known_classes": [0]})
    with pytest.raises(ValueError, match="'Old'"):
        Herbarium19GCDDataModule(tmp_path, split_file=wrong_key)
    with pytest.raises(ValueError, match="folder"):
        Herbarium19GCDDataModule(tmp_path, old_classes=[0], folder="")
