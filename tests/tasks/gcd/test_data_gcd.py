"""Tests for the GCD split, the labeled/unlabeled balanced sampler and the GCD data modules.

CIFAR is never downloaded: the tests write a tiny fake CIFAR folder in torchvision's pickle layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_cifar import write_cifar10, write_cifar100
from sklearn.datasets import load_digits

from lightning_mtl.tasks.gcd.data.splits import (
    GCD_IMAGENET_MEAN,
    GCD_IMAGENET_STD,
    BalancedLabeledSampler,
    CIFARGCDDataModule,
    DigitsGCDDataModule,
    gcd_split,
)


def _collect(loader: Iterable) -> tuple[torch.Tensor, ...]:
    """Concatenate every batch of an evaluation loader, item by item."""
    batches = list(loader)
    return tuple(torch.cat([batch[i] for batch in batches]) for i in range(len(batches[0])))


# --- gcd_split ----------------------------------------------------------------------------------


def test_split_by_hand() -> None:
    # class 0: 5 samples → 2 labeled; class 1: 4 → 2; class 2: 1 → 0; classes 3, 4 new.
    targets = [0, 1, 3, 0, 4, 1, 0, 2, 3, 1, 0, 1, 0]
    split = gcd_split(targets, old_classes=[0, 1, 2], seed=0)
    labeled, unlabeled = split.labeled_indices, split.unlabeled_indices
    labels = np.asarray(targets)
    assert np.bincount(labels[labeled], minlength=5).tolist() == [2, 2, 0, 0, 0]
    assert not set(labeled.tolist()) & set(unlabeled.tolist())
    assert sorted(labeled.tolist() + unlabeled.tolist()) == list(range(len(targets)))
    assert labeled.tolist() == sorted(labeled.tolist()) and labeled.dtype == np.int64
    assert split.class_map == {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}
    assert (split.num_old, split.num_classes, split.num_samples) == (3, 5, 13)
    assert split.labeled_mask()[labeled].all() and split.labeled_mask().sum() == 4
    # determinism, and a different seed picks other samples of the same sizes
    again = gcd_split(targets, [0, 1, 2], seed=0)
    assert again.labeled_indices.tolist() == labeled.tolist()
    others = {tuple(gcd_split(targets, [0, 1, 2], seed=s).labeled_indices) for s in range(10)}
    assert len(others) > 1


def test_split_remaps_old_classes_first() -> None:
    targets = [9, 2, 5, 7, 2, 9, 0, 5]
    split = gcd_split(targets, old_classes=[7, 2], seed=1)
    assert split.class_map == {2: 0, 7: 1, 0: 2, 5: 3, 9: 4}
    assert split.remap(targets).tolist() == [4, 0, 3, 1, 0, 4, 2, 3]
    # labeled samples only from old classes, ⌊2/2⌋ + ⌊1/2⌋ = 1 of them
    assert [targets[i] for i in split.labeled_indices] == [2]
    with pytest.raises(ValueError, match="label 3"):
        split.remap([3])


def test_split_rounding_and_fraction() -> None:
    targets = [0] * 100 + [1] * 7
    assert len(gcd_split(targets, [0], labeled_fraction=0.29).labeled_indices) == 29  # not 28
    assert len(gcd_split(targets, [1], labeled_fraction=0.5).labeled_indices) == 3  # ⌊3.5⌋
    assert len(gcd_split(targets, [0, 1], labeled_fraction=1.0).unlabeled_indices) == 0
    empty_old = gcd_split(targets, [])
    assert empty_old.num_old == 0 and len(empty_old.labeled_indices) == 0


def test_split_validation() -> None:
    with pytest.raises(ValueError, match="labeled_fraction"):
        gcd_split([0, 1], [0], labeled_fraction=0.0)
    with pytest.raises(ValueError, match="labeled_fraction"):
        gcd_split([0, 1], [0], labeled_fraction=1.5)
    with pytest.raises(ValueError, match="distinct"):
        gcd_split([0, 1], [0, 0])
    with pytest.raises(ValueError, match="integer"):
        gcd_split([0.0, 1.0], [0])
    with pytest.raises(ValueError, match="1-D"):
        gcd_split([[0, 1]], [0])
    with pytest.raises(ValueError, match="seed"):
        gcd_split([0, 1], [0], seed=-1)


# --- BalancedLabeledSampler ---------------------------------------------------------------------


def test_sampler_balances_a_10_to_90_split() -> None:
    mask = np.array([True] * 10 + [False] * 90)
    sampler = BalancedLabeledSampler(mask, num_samples=20_000, seed=0)
    drawn = np.array(list(sampler))
    assert len(drawn) == len(sampler) == 20_000
    # Binomial(20000, 1/2): sd ≈ 71, so ±0.02 (400 draws) is far beyond chance.
    assert abs(mask[drawn].mean() - 0.5) < 0.02
    per_labeled = np.bincount(drawn[mask[drawn]], minlength=10)
    assert per_labeled.min() > 800 and per_labeled.max() < 1200  # ≈ 1000 each


def test_sampler_epochs_and_default_length() -> None:
    sampler = BalancedLabeledSampler([True, False, False, False, False, False], seed=2)
    assert len(sampler) == 6
    first = list(sampler)
    assert first == list(sampler)  # same epoch, same order
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first
    orders = {tuple(first), tuple(second)}
    for epoch in (2, 3):
        sampler.set_epoch(epoch)
        orders.add(tuple(sampler))
    assert len(orders) > 1
    only_unlabeled = BalancedLabeledSampler([False] * 4, num_samples=400)
    assert set(only_unlabeled) == {0, 1, 2, 3}  # one part empty: uniform over the other
    with pytest.raises(ValueError, match="epoch"):
        sampler.set_epoch(-1)
    with pytest.raises(ValueError, match="non-empty"):
        BalancedLabeledSampler([])
    with pytest.raises(ValueError, match="num_samples"):
        BalancedLabeledSampler([True], num_samples=0)


# --- DigitsGCDDataModule ------------------------------------------------------------------------


def test_digits_gcd_module() -> None:
    dm = DigitsGCDDataModule(batch_size=64, seed=0)
    dm.setup()
    assert dm.split is not None and dm.train_dataset is not None and dm.val_dataset is not None
    assert dm.train_targets is not None
    split = dm.split
    assert (split.num_old, split.num_classes, dm.num_old) == (5, 10, 5)
    assert split.class_map == {c: c for c in range(10)}  # digits 0–4 already come first
    labeled_labels = dm.train_targets[split.labeled_indices]
    assert labeled_labels.max() < 5  # labeled only from old classes
    counts = np.bincount(dm.train_targets, minlength=10)
    assert np.bincount(labeled_labels, minlength=5).tolist() == (counts[:5] // 2).tolist()

    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, BalancedLabeledSampler)
    images, labels, is_labeled = next(iter(loader))
    assert images.shape == (64, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < 10
    assert is_labeled.dtype == torch.bool
    assert (labels[is_labeled] < 5).all()
    assert len(loader) == 1797 // 64

    # evaluation = exactly the unlabeled training set, in order, with true labels and is_old
    assert dm.test_dataset is dm.val_dataset
    assert len(dm.val_dataset) == len(split.unlabeled_indices) == 1797 - len(split.labeled_indices)
    eval_images, eval_labels, is_old = _collect(dm.val_dataloader())
    train_images = dm.train_dataset[list(range(1797))][0]  # stored tensor, raw images
    assert torch.equal(eval_images, train_images[torch.from_numpy(split.unlabeled_indices)])
    assert eval_labels.tolist() == dm.train_targets[split.unlabeled_indices].tolist()
    assert torch.equal(is_old, eval_labels < 5)
    assert 0 < is_old.sum() < len(is_old)

    other = DigitsGCDDataModule(seed=1)
    other.setup()
    assert other.split is not None
    assert other.split.labeled_indices.tolist() != split.labeled_indices.tolist()
    with pytest.raises(ValueError, match="batch_size"):
        DigitsGCDDataModule(batch_size=0)
    with pytest.raises(ValueError, match="labeled_fraction"):
        DigitsGCDDataModule(labeled_fraction=0)


def test_labeled_dataloader_yields_exactly_the_labeled_samples() -> None:
    dm = DigitsGCDDataModule(batch_size=64, seed=2)
    with pytest.raises(RuntimeError, match="setup"):
        dm.labeled_dataloader()
    dm.setup()
    assert dm.split is not None
    labeled = dm.split.labeled_indices
    # expected values straight from scikit-learn, not from the module
    digits = load_digits()
    raw = torch.from_numpy(digits.data / 16.0).to(torch.float32).reshape(-1, 1, 8, 8)
    expected_count = int((np.bincount(digits.target)[:5] // 2).sum())
    assert len(labeled) == expected_count == 449

    loader = dm.labeled_dataloader()
    assert loader.batch_size == 64 and not loader.drop_last and len(loader) == -(-449 // 64)
    images, labels, is_labeled = _collect(loader)
    assert torch.equal(images, raw[torch.from_numpy(labeled)])  # ascending index order
    assert labels.tolist() == digits.target[labeled].tolist()  # digits: identity renumbering
    assert is_labeled.dtype == torch.bool and bool(is_labeled.all())
    assert sorted(set(labels.tolist())) == [0, 1, 2, 3, 4]
    # each item is the training set's item at that index
    first = dm.train_dataset[int(labeled[0])]  # type: ignore[index]
    assert torch.equal(images[0], first[0]) and labels[0] == first[1] and first[2]

    # shuffled: the same samples in another order, reproducible from the seed
    shuffled = dm.labeled_dataloader(batch_size=500, shuffle=True)
    assert shuffled.batch_size == 500 and len(shuffled) == 1
    mixed, mixed_labels, _ = next(iter(shuffled))
    again = next(iter(dm.labeled_dataloader(batch_size=500, shuffle=True)))[0]
    assert torch.equal(mixed, again)
    assert not torch.equal(mixed, images)
    assert sorted(mixed_labels.tolist()) == sorted(labels.tolist())
    as_rows = sorted(map(tuple, mixed.reshape(449, -1).tolist()))
    assert as_rows == sorted(map(tuple, images.reshape(449, -1).tolist()))
    second_pass = next(iter(shuffled))[0]  # a new order on every pass over the loader
    assert not torch.equal(second_pass, mixed)
    with pytest.raises(ValueError, match="batch_size"):
        dm.labeled_dataloader(batch_size=0)


# --- CIFARGCDDataModule on a fake CIFAR folder --------------------------------------------------

PER_CLASS = 4


def _fake_cifar10(root: Path) -> list[int]:
    """Write a tiny CIFAR-10; return the training labels in file order."""
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), PER_CLASS)).tolist()
    images = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    images[labels.index(7)] = 0  # one all-black image of a new class: known normalised values
    write_cifar10(root, labels, images, list(range(10)), np.zeros((10, 3072), np.uint8))
    return labels


def test_cifar_gcd_module_on_fake_cifar10(tmp_path: Path, skip_cifar_md5: None) -> None:
    labels = _fake_cifar10(tmp_path)
    dm = CIFARGCDDataModule(tmp_path, "cifar10", batch_size=6)
    assert (dm.num_classes, dm.num_old) == (10, 5)
    dm.setup("fit")
    assert dm.split is not None and dm.train_targets is not None and dm.val_dataset is not None
    split = dm.split
    assert dm.train_targets.tolist() == labels  # classes 0–4 old: the renumbering is the identity
    assert np.bincount(np.asarray(labels)[split.labeled_indices], minlength=10).tolist() == (
        [2] * 5 + [0] * 5
    )
    assert len(split.unlabeled_indices) == 30

    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, BalancedLabeledSampler) and len(loader.sampler) == 40
    views, targets, is_labeled = next(iter(loader))
    assert views.shape == (6, 2, 3, 32, 32) and views.dtype == torch.float32
    assert targets.dtype == torch.int64 and is_labeled.dtype == torch.bool
    assert (targets[is_labeled] < 5).all()

    assert dm.test_dataset is dm.val_dataset and len(dm.val_dataset) == 30
    images, eval_labels, is_old = _collect(dm.val_dataloader())
    assert images.shape == (30, 3, 32, 32)
    assert eval_labels.tolist() == [labels[i] for i in split.unlabeled_indices]
    assert torch.equal(is_old, eval_labels < 5) and int(is_old.sum()) == 10
    black = split.unlabeled_indices.tolist().index(labels.index(7))
    expected = -torch.tensor(GCD_IMAGENET_MEAN) / torch.tensor(GCD_IMAGENET_STD)
    assert torch.allclose(images[black], expected.view(3, 1, 1).expand(3, 32, 32), atol=1e-5)


def test_cifar_gcd_module_on_fake_cifar100(tmp_path: Path, skip_cifar_md5: None) -> None:
    labels = np.repeat(np.arange(100), 2)[::-1].tolist()
    zeros = np.zeros((200, 3072), np.uint8)
    write_cifar100(tmp_path, labels, zeros, [0], zeros[:1])
    dm = CIFARGCDDataModule(tmp_path, "cifar100", old_classes=[90, 10], seed=3)
    dm.setup()
    assert dm.split is not None and dm.train_targets is not None
    assert dm.split.class_map[10] == 0 and dm.split.class_map[90] == 1
    assert dm.split.class_map[0] == 2 and dm.split.class_map[99] == 99
    assert sorted(np.asarray(labels)[dm.split.labeled_indices].tolist()) == [10, 90]
    assert len(dm.val_dataset) == 198  # type: ignore[arg-type]


def test_cifar_gcd_missing_folder_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        CIFARGCDDataModule(tmp_path / "nowhere").setup()
    message = str(info.value)
    assert "cifar-10-batches-py" in message and "data_batch_1" in message
    assert "torchvision.datasets.CIFAR10" in message and "download=True" in message
    assert "never downloads" in message
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        CIFARGCDDataModule(tmp_path, dataset="cifar100").setup()
    with pytest.raises(ValueError, match="dataset"):
        CIFARGCDDataModule(tmp_path, dataset="cifar20")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="old_classes"):
        CIFARGCDDataModule(tmp_path, old_classes=[10])
