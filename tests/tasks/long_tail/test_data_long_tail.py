"""Tests for the long-tail profile, the class-balanced sampler and the long-tailed data modules.

CIFAR is never downloaded: the tests write a tiny fake CIFAR folder in torchvision's pickle layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fake_cifar import write_cifar10, write_cifar100

from lightning_mtl.tasks.common.samplers import EpochSeededRandomSampler
from lightning_mtl.tasks.long_tail.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    CIFARLongTailDataModule,
    ClassBalancedSampler,
    DigitsLongTailDataModule,
    LongTailTrainSampler,
    long_tail_counts,
    long_tail_indices,
)

# --- long_tail_counts ---------------------------------------------------------------------------


def test_cifar10_profile_by_hand() -> None:
    # n_c = int(5000 · 0.01^{c/9}); e.g. c = 1: 0.01^{1/9} = e^{−0.5117} = 0.59948 → 2997.
    assert long_tail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert long_tail_counts(5000, 10, 50)[-1] == 100
    assert long_tail_counts(5000, 10, 200)[-1] == 25


def test_published_cifar_lt_sizes() -> None:
    # Training-set sizes of CIFAR-10/100-LT reported in the literature (LDAM-DRW protocol).
    sizes = {(5000, 10, 50): 13996, (5000, 10, 100): 12406, (5000, 10, 200): 11203}
    sizes |= {(500, 100, 50): 12608, (500, 100, 100): 10847, (500, 100, 200): 9502}
    for args, size in sizes.items():
        assert sum(long_tail_counts(*args)) == size, args


def test_profile_edge_cases() -> None:
    assert long_tail_counts(7, 3, 1) == [7, 7, 7]  # ρ = 1 is balanced
    counts = long_tail_counts(500, 100, 37.5)  # any ratio > 1
    assert counts[0] == 500 and counts[-1] == 13 and counts == sorted(counts, reverse=True)
    for bad in (0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="imbalance_ratio"):
            long_tail_counts(100, 10, bad)
    with pytest.raises(ValueError, match="tail class"):
        long_tail_counts(10, 10, 20)
    with pytest.raises(ValueError, match="num_classes"):
        long_tail_counts(10, 1, 2)


# --- long_tail_indices --------------------------------------------------------------------------


def test_indices_pick_the_first_of_each_class() -> None:
    targets = [2, 0, 1, 0, 2, 2, 1, 0, 0, 2]
    picked = long_tail_indices(targets, [3, 1, 2])
    # class 0 at 1, 3, 7, 8 → 1, 3, 7; class 1 at 2, 6 → 2; class 2 at 0, 4, 5, 9 → 0, 4.
    assert picked.tolist() == [0, 1, 2, 3, 4, 7]
    assert picked.dtype == np.int64
    assert long_tail_indices(torch.tensor(targets), [0, 0, 0]).tolist() == []


def test_indices_on_a_larger_random_set_match_a_loop() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, size=500)
    counts = [50, 40, 30, 20, 10]
    expected = sorted(
        i for c in range(5) for i in [j for j, t in enumerate(targets) if t == c][: counts[c]]
    )
    assert long_tail_indices(targets, counts).tolist() == expected


def test_indices_validation() -> None:
    with pytest.raises(ValueError, match="class 1 has 1 samples but 2"):
        long_tail_indices([0, 1, 0], [1, 2])
    with pytest.raises(ValueError, match="label 2"):
        long_tail_indices([0, 2], [1, 1])
    with pytest.raises(ValueError, match="integer"):
        long_tail_indices([0.0, 1.0], [1, 1])


# --- ClassBalancedSampler -----------------------------------------------------------------------


def test_class_balanced_sampler_is_near_uniform_over_classes() -> None:
    targets = np.repeat([0, 1, 2, 3], [1000, 100, 10, 1])
    sampler = ClassBalancedSampler(targets, num_samples=40_000, seed=0)
    drawn = np.array(list(sampler))
    per_class = np.bincount(targets[drawn], minlength=4)
    # Binomial(40000, 1/4): sd ≈ 87, so ±500 is far beyond chance.
    assert np.abs(per_class - 10_000).max() < 500
    # Within the 10-sample class every instance is drawn about equally often (≈ 1000 each).
    tail = np.bincount(drawn[targets[drawn] == 2] - 1100, minlength=10)
    assert tail.min() > 800 and tail.max() < 1200
    assert set(drawn[targets[drawn] == 3].tolist()) == {1110}


def test_class_balanced_sampler_epochs_and_absent_classes() -> None:
    targets = [0, 0, 0, 2, 2, 5]  # classes 1, 3, 4 absent: never drawn
    sampler = ClassBalancedSampler(targets, seed=1)
    assert len(sampler) == 6
    first = list(sampler)
    assert first == list(sampler)
    sampler.set_epoch(1)
    orders = {tuple(first)} | {tuple(sampler)}
    sampler.set_epoch(2)
    orders.add(tuple(sampler))
    assert len(orders) > 1
    big = ClassBalancedSampler(targets, num_samples=3000, seed=0)
    labels = np.asarray(targets)[list(big)]
    assert set(np.unique(labels).tolist()) == {0, 2, 5}
    assert np.abs(np.bincount(labels)[[0, 2, 5]] - 1000).max() < 120
    with pytest.raises(ValueError, match="epoch"):
        sampler.set_epoch(-1)
    with pytest.raises(ValueError, match="empty"):
        ClassBalancedSampler([])


# --- CIFARLongTailDataModule on a fake CIFAR folder ---------------------------------------------

TRAIN_PER_CLASS, TEST_PER_CLASS = 10, 2


def _fake_cifar10(root: Path) -> list[int]:
    """Write a tiny CIFAR-10; return the training labels in file order."""
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), TRAIN_PER_CLASS)).tolist()
    images = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    test_labels = np.repeat(np.arange(10), TEST_PER_CLASS).tolist()
    # All-zero test images, so the normalised values are exactly −mean/std.
    write_cifar10(root, labels, images, test_labels, np.zeros((20, 3072), np.uint8))
    return labels


def test_cifar_lt_module_on_fake_cifar10(tmp_path: Path, skip_cifar_md5: None) -> None:
    labels = _fake_cifar10(tmp_path)
    dm = CIFARLongTailDataModule(
        tmp_path, "cifar10", imbalance_ratio=5, batch_size=7, max_per_class=10
    )
    expected_counts = long_tail_counts(10, 10, 5)
    assert dm.class_counts == expected_counts == [10, 8, 6, 5, 4, 4, 3, 2, 2, 2]
    dm.setup("fit")
    assert dm.train_dataset is not None and dm.train_targets is not None
    assert list(dm.train_dataset.indices) == long_tail_indices(labels, expected_counts).tolist()
    assert np.bincount(dm.train_targets, minlength=10).tolist() == expected_counts
    assert len(dm.train_dataset) == sum(expected_counts) == 46

    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, LongTailTrainSampler) and not loader.sampler.class_balanced
    assert list(loader.sampler) == list(EpochSeededRandomSampler(46, seed=0))
    images, targets = next(iter(loader))
    assert images.shape == (7, 3, 32, 32) and images.dtype == torch.float32
    assert targets.dtype == torch.int64
    assert sum(len(y) for _, y in loader) == 46  # drop_last=False, the reference's choice

    test_images, test_targets = next(iter(dm.test_dataloader()))
    expected = -torch.tensor(CIFAR_MEAN) / torch.tensor(CIFAR_STD)
    assert torch.allclose(test_images[0], expected.view(3, 1, 1).expand(3, 32, 32))
    assert dm.val_dataset is dm.test_dataset
    assert sum(len(y) for _, y in dm.val_dataloader()) == 20  # the balanced test set, unchanged
    assert test_targets.tolist()[:4] == [0, 0, 1, 1]

    balanced = CIFARLongTailDataModule(
        tmp_path, imbalance_ratio=5, class_balanced=True, max_per_class=10, seed=3
    )
    balanced.setup()
    sampler = balanced.train_dataloader().sampler
    assert isinstance(sampler, LongTailTrainSampler) and sampler.class_balanced
    assert list(sampler) == list(ClassBalancedSampler(balanced.train_targets, seed=3))


def test_cifar_lt_module_on_fake_cifar100(tmp_path: Path, skip_cifar_md5: None) -> None:
    labels = np.repeat(np.arange(100), 3).tolist()
    zeros = np.zeros((300, 3072), np.uint8)
    write_cifar100(tmp_path, labels, zeros, list(range(100)), zeros[:100])
    dm = CIFARLongTailDataModule(tmp_path, "cifar100", imbalance_ratio=3, max_per_class=3)
    dm.setup()
    assert dm.num_classes == 100 and dm.train_targets is not None
    assert np.bincount(dm.train_targets, minlength=100).tolist() == long_tail_counts(3, 100, 3)


def test_cifar_lt_module_needs_enough_images(tmp_path: Path, skip_cifar_md5: None) -> None:
    _fake_cifar10(tmp_path)
    with pytest.raises(ValueError, match="class 0 has 10 samples but 5000"):
        CIFARLongTailDataModule(tmp_path).setup()


def test_cifar_lt_missing_folder_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        CIFARLongTailDataModule(tmp_path / "nowhere").setup()
    message = str(info.value)
    assert "cifar-10-batches-py" in message and "data_batch_1" in message
    assert "torchvision.datasets.CIFAR10" in message and "download=True" in message
    assert "never downloads" in message
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        CIFARLongTailDataModule(tmp_path, dataset="cifar100").setup()


def test_cifar_lt_partial_and_corrupt_folders(tmp_path: Path) -> None:
    _fake_cifar10(tmp_path)
    # Fake files exist but fail torchvision's MD5 check (no monkeypatch here).
    with pytest.raises(RuntimeError, match="integrity"):
        CIFARLongTailDataModule(tmp_path, max_per_class=10, imbalance_ratio=5).setup()
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing: data_batch_3"):
        CIFARLongTailDataModule(tmp_path).setup()


def test_cifar_lt_argument_validation() -> None:
    with pytest.raises(ValueError, match="dataset"):
        CIFARLongTailDataModule(".", dataset="cifar20")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="imbalance_ratio"):
        CIFARLongTailDataModule(".", imbalance_ratio=0.5)
    with pytest.raises(ValueError, match="batch_size"):
        CIFARLongTailDataModule(".", batch_size=0)
    assert CIFARLongTailDataModule(".").batch_size == 64  # PLOT's CIFAR batch size


# --- DigitsLongTailDataModule -------------------------------------------------------------------


def test_digits_long_tail_follows_the_profile() -> None:
    dm = DigitsLongTailDataModule(imbalance_ratio=20)
    assert dm.class_counts == long_tail_counts(140, 10, 20)
    dm.setup()
    assert dm.train_dataset is not None and dm.val_dataset is not None
    train_y, val_y = dm.train_dataset.tensors[1], dm.val_dataset.tensors[1]
    assert torch.bincount(train_y, minlength=10).tolist() == dm.class_counts
    assert torch.bincount(val_y, minlength=10).tolist() == [30] * 10  # balanced
    assert dm.train_indices is not None and dm.val_indices is not None
    assert not set(dm.train_indices.tolist()) & set(dm.val_indices.tolist())
    images = dm.train_dataset.tensors[0]
    assert images.shape[1:] == (1, 8, 8) and images.min() >= 0.0 and images.max() <= 1.0
    assert dm.test_dataset is dm.val_dataset


def test_digits_long_tail_seed_ratio_and_loaders() -> None:
    for ratio in (10, 50):
        dm = DigitsLongTailDataModule(imbalance_ratio=ratio, seed=2)
        dm.setup()
        assert dm.train_dataset is not None
        counts = torch.bincount(dm.train_dataset.tensors[1], minlength=10).tolist()
        assert counts == long_tail_counts(140, 10, ratio)
        assert counts[0] == 140 and counts[-1] == int(140 / ratio)  # 14, 2 (truncated)
    a, b = DigitsLongTailDataModule(seed=0), DigitsLongTailDataModule(seed=1)
    a.setup()
    b.setup()
    assert a.train_indices is not None and b.train_indices is not None
    assert a.train_indices.tolist() != b.train_indices.tolist()
    balanced = DigitsLongTailDataModule(class_balanced=True)
    balanced.setup()
    assert balanced.train_dataloader().sampler is balanced.train_order
    assert balanced.train_order is not None and balanced.train_order.class_balanced
    assert a.train_dataloader().sampler is a.train_order
    assert a.train_order is not None and not a.train_order.class_balanced
    assert sorted(a.train_order) == list(range(472))  # instance sampling: a permutation
    with pytest.raises(ValueError, match="exceeds"):
        DigitsLongTailDataModule(max_per_class=150, val_per_class=30)
    with pytest.raises(ValueError, match="tail class"):
        DigitsLongTailDataModule(imbalance_ratio=500)


def test_class_balanced_switch_reaches_the_live_sampler() -> None:
    """Setting ``class_balanced`` on the module between epochs switches the DataLoader that was
    already built: cRT's second stage needs no reload."""
    dm = DigitsLongTailDataModule(imbalance_ratio=20, batch_size=50, seed=0)
    dm.setup()
    loader = dm.train_dataloader()
    labels = dm.train_dataset.tensors[1]  # type: ignore[union-attr]

    def epoch_counts(epoch: int) -> np.ndarray:
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        drawn = torch.cat([y for _, y in loader])
        return np.bincount(drawn.numpy(), minlength=10)

    # Instance sampling: every image once per epoch (drop_last=False), so the profile exactly.
    assert epoch_counts(0).tolist() == [140, 100, 71, 51, 36, 26, 19, 13, 9, 7]
    dm.class_balanced = True
    totals = sum(epoch_counts(epoch) for epoch in range(1, 21))
    # 20 epochs x 472 draws, each class with probability 1/10: 944 expected, sd ≈ 29.
    assert np.abs(totals - 944).max() < 150
    assert len(loader.sampler) == len(labels) == 472  # type: ignore[arg-type]
    dm.class_balanced = False
    assert epoch_counts(21).tolist() == [140, 100, 71, 51, 36, 26, 19, 13, 9, 7]
