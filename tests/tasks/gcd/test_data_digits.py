"""Tests for the digits data module, the epoch-seeded sampler and the augmentation."""

from __future__ import annotations

import pytest
import torch

from lightning_mtl.tasks.common import EpochSeededRandomSampler
from lightning_mtl.tasks.gcd import DigitsDataModule, digits_two_view_augment


@pytest.fixture(scope="module")
def datamodule() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")
    return dm


# --- DigitsDataModule -------------------------------------------------------------------------


def test_split_sizes_and_stratification(datamodule: DigitsDataModule) -> None:
    assert datamodule.train_dataset is not None and datamodule.val_dataset is not None
    train_y = datamodule.train_dataset.tensors[1]
    val_y = datamodule.val_dataset.tensors[1]
    assert len(train_y) + len(val_y) == 1797
    assert len(val_y) == 360  # ceil(0.2 * 1797)
    assert datamodule.num_classes == 10
    assert set(train_y.tolist()) == set(range(10))
    assert set(val_y.tolist()) == set(range(10))
    # Stratified: class proportions agree between splits to within one sample per class.
    train_counts = torch.bincount(train_y, minlength=10).double()
    val_counts = torch.bincount(val_y, minlength=10).double()
    expected_val = (train_counts + val_counts) * 360 / 1797
    assert (val_counts - expected_val).abs().max() <= 1.0


def test_split_is_deterministic_and_seed_dependent() -> None:
    first, second, other = DigitsDataModule(), DigitsDataModule(), DigitsDataModule(seed=1)
    for dm in (first, second, other):
        dm.setup("fit")
    assert first.val_dataset is not None and second.val_dataset is not None
    assert other.val_dataset is not None
    assert torch.equal(first.val_dataset.tensors[0], second.val_dataset.tensors[0])
    assert not torch.equal(first.val_dataset.tensors[0], other.val_dataset.tensors[0])


def test_values_shapes_and_dtypes(datamodule: DigitsDataModule) -> None:
    assert datamodule.train_dataset is not None
    images, labels = datamodule.train_dataset.tensors
    assert images.shape[1:] == (1, 8, 8)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.max() == 1.0  # pixel value 16 exists, so scaling is by 16
    assert labels.min() == 0 and labels.max() == 9


def test_train_loader_drops_last_and_covers_epoch(datamodule: DigitsDataModule) -> None:
    loader = datamodule.train_dataloader()
    assert isinstance(loader.sampler, EpochSeededRandomSampler)
    batches = list(loader)
    assert len(batches) == 1437 // 64
    assert all(len(labels) == 64 for _, labels in batches)
    # The loader serves exactly the sampler's order, without replacement, minus the tail.
    order = list(loader.sampler)
    assert sorted(order) == list(range(1437))
    assert datamodule.train_dataset is not None
    expected_labels = datamodule.train_dataset.tensors[1][order[: len(batches) * 64]]
    assert torch.equal(torch.cat([labels for _, labels in batches]), expected_labels)


def test_train_loader_order_follows_epoch(datamodule: DigitsDataModule) -> None:
    def first_labels(epoch: int) -> torch.Tensor:
        loader = datamodule.train_dataloader()
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        return next(iter(loader))[1]

    assert torch.equal(first_labels(3), first_labels(3))
    assert not torch.equal(first_labels(0), first_labels(1))


def test_val_and_test_loaders_are_unshuffled(datamodule: DigitsDataModule) -> None:
    assert datamodule.val_dataset is not None
    val_images = torch.cat([images for images, _ in datamodule.val_dataloader()])
    assert torch.equal(val_images, datamodule.val_dataset.tensors[0])
    datamodule.setup("test")
    test_labels = torch.cat([labels for _, labels in datamodule.test_dataloader()])
    assert torch.equal(test_labels, datamodule.val_dataset.tensors[1])


def test_hyperparameters_saved() -> None:
    dm = DigitsDataModule(batch_size=16, val_fraction=0.25, num_workers=0, seed=5)
    assert dict(dm.hparams) == {"batch_size": 16, "val_fraction": 0.25, "num_workers": 0, "seed": 5}


def test_loader_before_setup_raises() -> None:
    with pytest.raises(RuntimeError, match="call `setup"):
        DigitsDataModule().train_dataloader()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_datamodule_argument_errors(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)  # type: ignore[arg-type]


# --- EpochSeededRandomSampler -----------------------------------------------------------------


def test_sampler_same_epoch_same_permutation() -> None:
    a, b = EpochSeededRandomSampler(100, seed=42), EpochSeededRandomSampler(100, seed=42)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b)
    assert list(a) == list(a)  # re-iterating does not advance the order


def test_sampler_covers_all_indices_and_len() -> None:
    sampler = EpochSeededRandomSampler(257, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(257))
        assert len(sampler) == 257
    assert list(EpochSeededRandomSampler(0)) == []


def test_set_epoch_changes_order() -> None:
    sampler = EpochSeededRandomSampler(100, seed=0)
    orders = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert len({tuple(order) for order in orders}) == 4
    assert list(EpochSeededRandomSampler(100, seed=1)) != orders[0]


def test_sampler_resume_matches_uninterrupted_run() -> None:
    uninterrupted = EpochSeededRandomSampler(50, seed=9)
    full_run = []
    for epoch in range(4):
        uninterrupted.set_epoch(epoch)
        full_run.append(list(uninterrupted))

    # A fresh sampler (as after loading a checkpoint) told the resumed epoch replays it; the
    # global RNG state must not matter.
    torch.manual_seed(12345)
    resumed = EpochSeededRandomSampler(50, seed=9)
    resumed.set_epoch(2)
    assert list(resumed) == full_run[2]


@pytest.mark.parametrize(
    ("args", "match"),
    [((-1,), "num_samples"), ((2.5,), "num_samples"), ((3, 0.5), "seed")],
)
def test_sampler_argument_errors(args: tuple[float, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EpochSeededRandomSampler(*args)  # type: ignore[arg-type]


def test_set_epoch_rejects_negative() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        EpochSeededRandomSampler(3).set_epoch(-1)


# --- digits_two_view_augment ------------------------------------------------------------------


def _batch() -> torch.Tensor:
    dm = DigitsDataModule()
    dm.setup("fit")
    assert dm.train_dataset is not None
    return dm.train_dataset.tensors[0][:32].clone()


def test_augment_is_deterministic_with_seeded_generator() -> None:
    images = _batch()
    first = digits_two_view_augment(images, torch.Generator().manual_seed(0))
    second = digits_two_view_augment(images, torch.Generator().manual_seed(0))
    other = digits_two_view_augment(images, torch.Generator().manual_seed(1))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_augment_changes_images_keeps_shape_range_and_input() -> None:
    images = _batch()
    original = images.clone()
    augmented = digits_two_view_augment(images, torch.Generator().manual_seed(0))
    assert augmented.shape == images.shape
    assert augmented.dtype == images.dtype
    assert augmented.min() >= 0.0 and augmented.max() <= 1.0
    assert (augmented - images).abs().mean() > 1e-2
    assert torch.equal(images, original)  # input untouched


def test_augment_geometry_only_changes_images() -> None:
    images = _batch()
    shifted = digits_two_view_augment(
        images, torch.Generator().manual_seed(0), max_rotation_deg=0.0, noise_std=0.0
    )
    rotated = digits_two_view_augment(
        images, torch.Generator().manual_seed(0), max_shift=0.0, noise_std=0.0
    )
    assert not torch.allclose(shifted, images, atol=1e-3)
    assert not torch.allclose(rotated, images, atol=1e-3)


def test_augment_identity_when_all_magnitudes_zero() -> None:
    images = _batch()
    out = digits_two_view_augment(
        images,
        torch.Generator().manual_seed(0),
        max_shift=0.0,
        max_rotation_deg=0.0,
        noise_std=0.0,
    )
    torch.testing.assert_close(out, images, atol=1e-6, rtol=0.0)


def test_augment_uses_global_rng_without_generator() -> None:
    images = _batch()
    torch.manual_seed(3)
    first = digits_two_view_augment(images)
    torch.manual_seed(3)
    assert torch.equal(first, digits_two_view_augment(images))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_shift": -0.1}, "max_shift"),
        ({"max_rotation_deg": -1.0}, "max_rotation_deg"),
        ({"noise_std": -0.01}, "noise_std"),
    ],
)
def test_augment_argument_errors(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        digits_two_view_augment(torch.rand(2, 1, 8, 8), **kwargs)


def test_augment_rejects_bad_images() -> None:
    with pytest.raises(ValueError, match="4-D"):
        digits_two_view_augment(torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="floating-point"):
        digits_two_view_augment(torch.zeros(2, 1, 8, 8, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_rejects_generator_on_other_device() -> None:
    with pytest.raises(ValueError, match="generator"):
        digits_two_view_augment(torch.rand(2, 1, 8, 8, device="cuda"), torch.Generator())
