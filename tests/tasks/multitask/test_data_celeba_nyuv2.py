"""CelebA and NYUv2 data modules on tiny fake copies of their standard layouts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_mtl.tasks.multitask.data.celeba import (
    CELEBA_ATTRIBUTES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CelebADataModule,
    parse_attribute_lines,
)
from lightning_mtl.tasks.multitask.data.nyuv2 import (
    NYUv2DataModule,
    flip_horizontally,
    random_scale_crop,
)

# --- fake CelebA ------------------------------------------------------------------------------

FAKE_ATTRIBUTES = ["Bald", "Smiling", "Young"]
# file → (±1 per attribute, split); rows deliberately interleave the splits.
FAKE_ROWS = {
    "000001.jpg": ((1, -1, 1), 0),
    "000002.jpg": ((-1, -1, -1), 1),
    "000003.jpg": ((-1, 1, 1), 0),
    "000004.jpg": ((1, 1, -1), 2),
    "000005.jpg": ((1, 1, 1), 0),
    "000006.jpg": ((-1, 1, -1), 1),
}
# Aligned CelebA images are taller than wide (178×218); the fakes are 20 wide, 24 high.
FAKE_SIZE = (20, 24)
BLUE, RED = (10, 20, 230), (230, 10, 10)


def write_fake_celeba(
    root: Path,
    rows: dict[str, tuple[tuple[int, ...], int]] | None = None,
    attributes: list[str] | None = None,
    images: dict[str, Image.Image] | None = None,
) -> Path:
    """The standard CelebA layout under ``root``: JPEGs and the two text files.

    Every image is blue, with two red rows at the top and bottom that the centre crop removes,
    unless ``images`` gives it. The attribute file uses the original's double spaces.
    """
    rows = FAKE_ROWS if rows is None else rows
    attributes = FAKE_ATTRIBUTES if attributes is None else attributes
    folder = root / "img_align_celeba"
    folder.mkdir(parents=True, exist_ok=True)
    for name in rows:
        image = (images or {}).get(name)
        if image is None:
            image = Image.new("RGB", FAKE_SIZE, BLUE)
            image.paste(RED, (0, 0, FAKE_SIZE[0], 2))
            image.paste(RED, (0, FAKE_SIZE[1] - 2, FAKE_SIZE[0], FAKE_SIZE[1]))
        # Quality 100 without chroma subsampling keeps the colours within a few levels.
        image.save(folder / name, quality=100, subsampling=0)
    lines = [str(len(rows)), " ".join(attributes)]
    lines += [
        f"{name} " + " ".join(f"{v:2d}" for v in values) for name, (values, _) in rows.items()
    ]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    partition = [f"{name} {split}" for name, (_, split) in rows.items()]
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    return root


def test_celeba_splits_and_targets_parse(tmp_path: Path) -> None:
    dm = CelebADataModule(write_fake_celeba(tmp_path), image_size=16, batch_size=2, num_workers=0)
    assert dm.attribute_names == FAKE_ATTRIBUTES  # read from the header, before setup
    dm.setup("fit")
    assert dm.train_dataset is not None and dm.val_dataset is not None
    assert dm.test_dataset is not None
    # By hand from FAKE_ROWS: -1 → 0, 1 → 1, file order kept within each split.
    assert dm.train_dataset.filenames == ["000001.jpg", "000003.jpg", "000005.jpg"]
    assert dm.train_dataset.targets.tolist() == [[1, 0, 1], [0, 1, 1], [1, 1, 1]]
    assert dm.val_dataset.filenames == ["000002.jpg", "000006.jpg"]
    assert dm.val_dataset.targets.tolist() == [[0, 0, 0], [0, 1, 0]]
    assert dm.test_dataset.filenames == ["000004.jpg"]
    assert dm.test_dataset.targets.tolist() == [[1, 1, 0]]
    assert dm.train_dataset.targets.dtype == torch.int64
    assert dm.num_tasks == 3 and dm.image_shape == (3, 16, 16)


def test_celeba_images_are_center_cropped_resized_and_normalised(tmp_path: Path) -> None:
    dm = CelebADataModule(write_fake_celeba(tmp_path), image_size=10, batch_size=2, num_workers=0)
    dm.setup()
    assert dm.train_dataset is not None
    image, target = dm.train_dataset[0]
    assert image.shape == (3, 10, 10) and image.dtype == torch.float32
    assert target.tolist() == [1, 0, 1] and target.dtype == torch.int64
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = image * std + mean
    # The red rows at the top and bottom fell to the centre crop: the whole image is blue.
    expected = torch.tensor(BLUE, dtype=torch.float32).view(3, 1, 1) / 255
    assert (pixels - expected).abs().max() < 6 / 255
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 10, 10) and targets.shape == (2, 3)


def test_celeba_center_crop_keeps_the_middle_square(tmp_path: Path) -> None:
    # Left half black, right half white: the 20×20 crop keeps both halves, unsquashed.
    image = Image.new("RGB", FAKE_SIZE, (0, 0, 0))
    image.paste((255, 255, 255), (10, 0, 20, 24))
    root = write_fake_celeba(tmp_path, images={"000001.jpg": image})
    dm = CelebADataModule(root, image_size=20, batch_size=1, num_workers=0)
    dm.setup()
    assert dm.train_dataset is not None
    pixels = dm.train_dataset[0][0] * torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels += torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert pixels[:, :, :9].max() < 0.05 and pixels[:, :, 11:].min() > 0.95


def test_celeba_standard_header_gives_the_40_names(tmp_path: Path) -> None:
    rows = {"000001.jpg": ((1,) * 40, 0)}
    root = write_fake_celeba(tmp_path, rows=rows, attributes=list(CELEBA_ATTRIBUTES))
    dm = CelebADataModule(root, batch_size=1, num_workers=0)
    dm.setup()
    assert dm.attribute_names == list(CELEBA_ATTRIBUTES) and dm.num_tasks == 40
    assert dm.train_dataset is not None and dm.train_dataset.targets.shape == (1, 40)


def test_celeba_missing_layout_names_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        CelebADataModule(tmp_path / "absent", num_workers=0).setup()
    message = str(error.value)
    for part in ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"):
        assert part in message
    assert "never downloads" in message
    root = write_fake_celeba(tmp_path / "partial")
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: list_eval_partition\.txt\)"):
        CelebADataModule(root, batch_size=1, num_workers=0).setup()


def test_celeba_inconsistent_files_fail_clearly(tmp_path: Path) -> None:
    root = write_fake_celeba(tmp_path)
    (root / "img_align_celeba" / "000004.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of the 6 images .*000004\.jpg"):
        CelebADataModule(root, batch_size=1, num_workers=0).setup()
    with pytest.raises(ValueError, match="announces 3 images but has 2 rows"):
        parse_attribute_lines(["3", "A B", "x.jpg 1 -1", "y.jpg -1 1"])
    with pytest.raises(ValueError, match="must be 1 or -1"):
        parse_attribute_lines(["1", "A B", "x.jpg 1 0"])
    with pytest.raises(ValueError, match="fewer than `batch_size`"):
        CelebADataModule(write_fake_celeba(tmp_path / "ok"), batch_size=4, num_workers=0).setup()
    with pytest.raises(ValueError, match="image_size"):
        CelebADataModule(root, image_size=4)


# --- fake NYUv2 -------------------------------------------------------------------------------

HEIGHT, WIDTH = 8, 12


def fake_nyuv2_arrays(index: int) -> dict[str, np.ndarray]:
    """One sample in MTAN's channel-last layout, distinct per index, with missing pixels."""
    rng = np.random.default_rng(index)
    label = rng.integers(0, 13, (HEIGHT, WIDTH)).astype(np.float32)
    label[0, :3] = -1
    depth = rng.uniform(0.5, 5.0, (HEIGHT, WIDTH, 1)).astype(np.float32)
    depth[1, :2] = 0
    normal = rng.normal(size=(HEIGHT, WIDTH, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[2, :4] = 0
    image = rng.uniform(0, 1, (HEIGHT, WIDTH, 3)).astype(np.float32)
    return {"image": image, "label": label, "depth": depth, "normal": normal}


def write_fake_nyuv2(root: Path, train: int = 3, val: int = 2) -> Path:
    """MTAN's preprocessed layout under ``root`` with ``train`` and ``val`` samples."""
    for split, count, offset in (("train", train, 0), ("val", val, 100)):
        for index in range(count):
            for kind, array in fake_nyuv2_arrays(offset + index).items():
                folder = root / split / kind
                folder.mkdir(parents=True, exist_ok=True)
                np.save(folder / f"{index}.npy", array)
    return root


@pytest.fixture
def nyuv2(tmp_path: Path) -> Iterator[NYUv2DataModule]:
    dm = NYUv2DataModule(write_fake_nyuv2(tmp_path), batch_size=2, num_workers=0)
    dm.setup("fit")
    yield dm


def test_nyuv2_shapes_dtypes_and_values(nyuv2: NYUv2DataModule) -> None:
    assert nyuv2.train_dataset is not None and nyuv2.val_dataset is not None
    assert len(nyuv2.train_dataset) == 3 and len(nyuv2.val_dataset) == 2
    assert nyuv2.test_dataset is nyuv2.val_dataset
    image, label, depth, normal = nyuv2.train_dataset[1]
    assert image.shape == (3, HEIGHT, WIDTH) and image.dtype == torch.float32
    assert label.shape == (HEIGHT, WIDTH) and label.dtype == torch.int64
    assert depth.shape == (1, HEIGHT, WIDTH) and depth.dtype == torch.float32
    assert normal.shape == (3, HEIGHT, WIDTH) and normal.dtype == torch.float32
    arrays = fake_nyuv2_arrays(1)
    assert torch.equal(image, torch.from_numpy(arrays["image"]).permute(2, 0, 1))
    assert torch.equal(label, torch.from_numpy(arrays["label"]).long())
    assert torch.equal(depth[0], torch.from_numpy(arrays["depth"][..., 0]))
    assert torch.equal(normal, torch.from_numpy(arrays["normal"]).permute(2, 0, 1))
    assert label[0, :3].tolist() == [-1, -1, -1] and label.max() < 13
    val_image = nyuv2.val_dataset[0][0]
    assert torch.equal(
        val_image, torch.from_numpy(fake_nyuv2_arrays(100)["image"]).permute(2, 0, 1)
    )
    batch = next(iter(nyuv2.train_dataloader()))
    assert [tuple(t.shape) for t in batch] == [
        (2, 3, HEIGHT, WIDTH),
        (2, HEIGHT, WIDTH),
        (2, 1, HEIGHT, WIDTH),
        (2, 3, HEIGHT, WIDTH),
    ]
    assert len(nyuv2.train_dataloader()) == 1 and len(nyuv2.val_dataloader()) == 1


def test_nyuv2_reads_channel_first_copies(tmp_path: Path) -> None:
    root = write_fake_nyuv2(tmp_path, train=2, val=1)
    for kind in ("image", "depth", "normal"):
        path = root / "train" / kind / "0.npy"
        np.save(path, np.moveaxis(np.load(path), -1, 0))
    dm = NYUv2DataModule(root, batch_size=1, num_workers=0)
    dm.setup()
    assert dm.train_dataset is not None
    first, second = dm.train_dataset[0], dm.train_dataset[1]
    assert [tuple(t.shape) for t in first] == [tuple(t.shape) for t in second]


def test_nyuv2_missing_layout_names_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        NYUv2DataModule(tmp_path / "absent", num_workers=0).setup()
    message = str(error.value)
    assert "train/image/" in message and "{image,label,depth,normal}/<index>.npy" in message
    assert "never downloads" in message
    root = write_fake_nyuv2(tmp_path / "partial")
    (root / "val" / "depth" / "1.npy").unlink()
    with pytest.raises(FileNotFoundError, match="depth/ and image/ differ"):
        NYUv2DataModule(root, batch_size=1, num_workers=0).setup()


def test_nyuv2_augmentation_keeps_shapes_labels_and_flips_normals(tmp_path: Path) -> None:
    dm = NYUv2DataModule(write_fake_nyuv2(tmp_path), batch_size=1, num_workers=0, augment=True)
    dm.setup()
    assert dm.train_dataset is not None and dm.train_dataset.augment
    assert dm.val_dataset is not None and not dm.val_dataset.augment
    for _ in range(5):
        image, label, depth, normal = dm.train_dataset[0]
        assert image.shape == (3, HEIGHT, WIDTH) and label.dtype == torch.int64
        assert set(label.unique().tolist()) <= set(range(-1, 13))
        assert depth.shape == (1, HEIGHT, WIDTH) and normal.shape == (3, HEIGHT, WIDTH)
    sample = dm.val_dataset[0]
    flipped = flip_horizontally(sample)
    assert torch.equal(flipped[1], sample[1].flip(-1))
    assert torch.equal(flipped[3][0], -sample[3][0].flip(-1))
    assert torch.equal(flipped[3][1:], sample[3][1:].flip(-1))
    zoomed = random_scale_crop(sample, 2.0, 0, 0)
    # Nearest-neighbour ×2: pixel (2i, 2j) of the zoom is pixel (i, j) of the crop; depth halves.
    assert torch.equal(zoomed[1][::2, ::2], sample[1][:4, :6])
    assert torch.allclose(zoomed[2][:, ::2, ::2], sample[2][:, :4, :6] / 2)
