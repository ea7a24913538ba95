"""Every bundled recipe (lightning_mtl/recipes) parses with the package's CLI and instantiates its
classes; the CIFAR-LT recipes carry the paper's hyper-parameters and train a few steps on a fake
CIFAR folder.

CIFAR is never downloaded: the tests write tiny CIFAR folders in torchvision's pickle layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fake_cifar import write_cifar10, write_cifar100
from helpers import predictions_by_hand
from host_sync import watch_steps
from lightning.pytorch import LightningDataModule, LightningModule

from lightning_mtl.callbacks import TemporalMOO
from lightning_mtl.cli import MultiObjectiveCLI, bundled_recipes, run_cli
from lightning_mtl.strategies import PLOT, LinearScalarization
from lightning_mtl.tasks.long_tail import (
    CIFARLongTailDataModule,
    ClassifierRetraining,
    LongTailClassifier,
)
from lightning_mtl.tasks.long_tail.resnet_cifar import NormalizedLinear

RECIPES = list(bundled_recipes().values())
CIFAR_RECIPES = [path for path in RECIPES if path.name.startswith("cifar")]
FAKE_TRAIN_PER_CLASS = {"cifar10": 12, "cifar100": 5}


@pytest.fixture
def fake_cifar(tmp_path: Path, skip_cifar_md5: None) -> Path:
    """Tiny CIFAR-10 and CIFAR-100 folders (random images), accepted without their MD5 sums."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar"
    labels = rng.permutation(np.repeat(np.arange(10), FAKE_TRAIN_PER_CLASS["cifar10"])).tolist()
    images = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    write_cifar10(root, labels, images, list(range(10)) * 2, images[:20])
    fine = np.repeat(np.arange(100), FAKE_TRAIN_PER_CLASS["cifar100"]).tolist()
    pixels = rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
    write_cifar100(root, fine, pixels, list(range(100)), pixels[:100])
    return root


def parse(recipe: Path, *overrides: str) -> MultiObjectiveCLI:
    return run_cli(["--config", str(recipe), *overrides], save_config_callback=None, run=False)


class ParseOnlyCLI(MultiObjectiveCLI):
    """The package's CLI up to a validated configuration: nothing is instantiated."""

    def instantiate_classes(self) -> None:
        pass


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_every_recipe_parses_and_instantiates(recipe: Path) -> None:
    # jsonargparse checks every class path and init argument against the signatures here.
    config = ParseOnlyCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=["--config", str(recipe)],
        run=False,
    ).config
    assert config.model.class_path and config.data.class_path
    text = recipe.read_text()
    # The header: a one-line summary (what `lightning-mtl recipes` prints), then the command.
    assert text.startswith("# ") and f"lightning-mtl fit --config {recipe.stem}\n" in text
    try:
        cli = parse(recipe, "--trainer.logger", "false")
    except (FileNotFoundError, ValueError) as error:
        # jsonargparse wraps a missing local file (e.g. pretrained weights, never downloaded).
        if "not found" not in str(error):
            raise
        pytest.skip(f"instantiating {recipe.name} needs local files: {str(error)[:200]}")
    assert isinstance(cli.model, LightningModule)
    assert isinstance(cli.datamodule, LightningDataModule)


def _callback(cli: MultiObjectiveCLI, kind: type) -> Any:
    found = [callback for callback in cli.trainer.callbacks if isinstance(callback, kind)]
    return found[0] if found else None


@pytest.mark.parametrize("recipe", CIFAR_RECIPES, ids=lambda path: path.stem)
def test_cifar_lt_recipes_carry_the_papers_setting(recipe: Path, fake_cifar: Path) -> None:
    dataset, _, method = recipe.stem.partition("_lt_")
    plot = method.endswith("_plot")
    base = method.removesuffix("_plot")
    cli = parse(recipe, "--trainer.logger", "false", "--data.init_args.root", str(fake_cifar))
    model, data = cli.model, cli.datamodule
    assert isinstance(model, LongTailClassifier) and isinstance(data, CIFARLongTailDataModule)
    classes = 10 if dataset == "cifar10" else 100
    hp = model.hparams
    # ResNet-32, SGD 0.1 / 0.9 / 2e-4, 5 warm-up epochs, x0.1 at 160 and 180, batch 64, 200 epochs.
    assert (hp.backbone, hp.num_classes, data.dataset, data.num_classes) == (
        "resnet32",
        classes,
        dataset,
        classes,
    )
    assert (hp.lr, hp.momentum, hp.weight_decay) == (0.1, 0.9, 2e-4)
    assert (hp.lr_schedule, hp.warmup_epochs, list(hp.milestones), hp.lr_decay) == (
        "warmup_multistep",
        5,
        [160, 180],
        0.1,
    )
    assert (data.batch_size, data.imbalance_ratio, str(data.root)) == (64, 100, str(fake_cifar))
    assert (hp.many_threshold, hp.few_threshold) == (100, 20)
    assert model.net.layer3 is not None  # PLOT's scope
    assert model.balancing_scope == ["net.layer3"]

    crt = _callback(cli, ClassifierRetraining)
    assert cli.trainer.max_epochs == (230 if base == "crt_mixup" else 200)
    if base == "crt_mixup":
        assert (crt.epoch, crt.classifier, crt.lr, crt.class_balanced) == (
            200,
            "net.fc",
            0.01,
            True,
        )
        assert (hp.loss, hp.mixup_alpha) == ("ce", 1.0)
    else:
        assert crt is None and hp.mixup_alpha == 0.0
    expected_loss = {"ce": "ce", "ldam_drw": "ldam", "balanced_softmax": "balanced_softmax"}
    if base in expected_loss:
        assert hp.loss == expected_loss[base]
    if base == "ldam_drw":
        assert (hp.ldam_max_m, hp.ldam_s, hp.drw_start_epoch, hp.drw_beta) == (
            0.5,
            30.0,
            160,
            0.9999,
        )
        assert isinstance(model.net.fc, NormalizedLinear)
    else:
        assert isinstance(model.net.fc, torch.nn.Linear)

    temporal = _callback(cli, TemporalMOO)
    strategy = model.balancing_strategy
    if plot:
        assert isinstance(strategy, PLOT)
        assert temporal is not None  # E, ρ, c, the kept perturbation and the variability
        # weight are pinned to the authors' configs in tests/test_recipe_values.py.
    else:
        assert isinstance(strategy, LinearScalarization) and temporal is None

    # The data module reads the fake folder (a smaller profile: the fake has few images).
    small = CIFARLongTailDataModule(
        fake_cifar, dataset, imbalance_ratio=4, max_per_class=FAKE_TRAIN_PER_CLASS[dataset]
    )
    small.setup()
    assert small.train_targets is not None
    assert np.bincount(small.train_targets).max() == FAKE_TRAIN_PER_CLASS[dataset]


@pytest.mark.parametrize(
    "name", ["cifar10_lt_crt_mixup_plot", "cifar100_lt_ldam_drw_plot"], ids=str
)
def test_cifar_lt_recipes_train_a_few_steps(
    name: str, fake_cifar: Path, single_thread: None, accelerator_paths: None
) -> None:
    recipe = next(path for path in CIFAR_RECIPES if path.stem == name)
    dataset = name.partition("_lt_")[0]
    cli = parse(
        recipe,
        *("--trainer.logger", "false", "--trainer.enable_checkpointing", "false"),
        *("--trainer.default_root_dir", str(fake_cifar)),
        *("--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"),
        *("--trainer.max_epochs", "3", "--trainer.limit_train_batches", "2"),
        *("--trainer.limit_val_batches", "1", "--model.init_args.drw_start_epoch", "1"),
        *("--data.init_args.root", str(fake_cifar), "--data.init_args.imbalance_ratio", "4"),
        *("--data.init_args.max_per_class", str(FAKE_TRAIN_PER_CLASS[dataset])),
        *("--data.init_args.batch_size", "8", "--data.init_args.num_workers", "0"),
    )
    temporal = _callback(cli, TemporalMOO)
    temporal.epochs = 1
    crt = _callback(cli, ClassifierRetraining)
    if crt is not None:
        crt.epoch = 2
    steps = watch_steps(cli.model)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 6
    # The step's reads of the device: the classes present in the batch
    # (tasks/long_tail/models.py), PLOT's Gramian for its host solve on the steps it balances
    # (strategies/host_solvers.py) and whether the step was finite (mixin.py).
    # Mixup's seed comes from a CPU generator (tasks/long_tail/losses.py): no wait for a GPU.
    expected = [("_local_scalar_dense", "mixin.py"), ("tolist", "tasks/long_tail/models.py")]
    for found in steps[1:]:
        calls = sorted((sync.call, sync.where.split(":")[0]) for sync in found)
        calls = [call for call in calls if call[1] != "tasks/long_tail/losses.py"]
        assert calls in (expected, sorted([*expected, ("numpy", "strategies/host_solvers.py")]))
    assert temporal.switched_at_epoch == 1
    if crt is not None:
        assert crt.switched_at_epoch == 2 and cli.datamodule.class_balanced
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
    # Validation ran on one batch (limit_val_batches 1): its accuracy, recomputed.
    predicted, labels = predictions_by_hand(cli.model, cli.datamodule.val_dataloader(), 1)
    expected = (predicted == labels).double().mean().item()
    assert float(cli.trainer.callback_metrics["val/acc"]) == pytest.approx(expected)
