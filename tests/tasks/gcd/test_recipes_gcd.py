"""The GCD paper recipes: each parses with the CLI and builds the model and data module it
describes (a small ViT and no weights file stand in for DINO ViT-B/16, which is not here)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from helpers import cluster_accuracy_by_hand
from test_recipe_values import CLASSES

from lightning_mtl.callbacks import GradientAngleLogger, WarmupThenSwitch
from lightning_mtl.cli import bundled_recipes, run_cli
from lightning_mtl.strategies import PGI, LinearScalarization

RECIPES = [path for name, path in bundled_recipes().items() if name.startswith("gcd_")]
DATASETS = ("cub", "scars", "aircraft", "herbarium19")


def test_every_dataset_has_the_three_recipes() -> None:
    names = {path.stem for path in RECIPES}
    expected = {f"gcd_{d}_{m}" for d in DATASETS for m in ("simgcd", "pgi", "eagc")}
    assert names == expected


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds_what_it_describes(path: Path, tmp_path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    written = config["model"]["init_args"]
    # A stand-in for the SSB split file: the last old classes, so that the fallback (the first
    # half) would be told apart.
    known = list(range(written["num_classes"] - written["num_old"], written["num_classes"]))
    split_file = tmp_path / "split.pkl"
    split_file.write_bytes(pickle.dumps({"known_classes": known, "Old": known}))
    args = ["--config", str(path), "--trainer.accelerator", "cpu"]
    args += ["--trainer.precision", "32-true", "--trainer.logger", "false"]
    args += ["--model.init_args.backbone", "vit_tiny_patch16_224"]
    args += ["--model.init_args.backbone_weights", "null"]
    args += ["--data.init_args.split_file", str(split_file)]
    if "eagc" in config["model"]["init_args"]:
        args += ["--model.init_args.eagc.init_args.feature_dim", "192"]
    cli = run_cli(args, run=False)
    model, data = cli.model, cli.datamodule
    dataset, _, method = path.stem.removeprefix("gcd_").rpartition("_")
    classes, old = CLASSES[dataset]  # the published values: tests/test_recipe_values.py
    assert (model.hparams.num_classes, model.hparams.num_old) == (classes, old)
    assert model.prototypes.out_features == data.num_classes == classes
    assert data.old_classes == known
    # The optimiser that is built: SimGCD's 0.1 for every parameter; EAGC's scripts 0.1 for the
    # backbone and 1.0 for the heads behind their extra Linear(D, D) (here 192 for ViT-tiny),
    # all decayed to 1e-3 of the heads' rate (train.py / methods/SimGCD.py eta_min).
    model.trainer = cli.trainer
    config_optim = model.configure_optimizers()
    rates = sorted({group["initial_lr"] for group in config_optim["optimizer"].param_groups})
    assert rates == ([0.1, 1.0] if method == "eagc" else [0.1])
    schedule = config_optim["lr_scheduler"]["scheduler"].lr_lambdas[-1]
    assert max(rates) * schedule(200) == pytest.approx(max(rates) * 1e-3)
    # PGI's warm-up raises the rate linearly over its 10 epochs (appendix A.2).
    assert schedule(0) == (1 / 10 if method == "pgi" else 1.0)
    assert isinstance(model.adapter, torch.nn.Sequential) == (method == "eagc")
    # Only the last ViT block of the backbone trains, as in SimGCD.
    trainable = {n.split(".")[1] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"11"}
    method = path.stem.rsplit("_", 1)[1]
    strategy = model.balancing_strategy
    if method == "pgi":
        assert isinstance(strategy, PGI)
        callbacks = {type(c) for c in cli.trainer.callbacks}
        assert {WarmupThenSwitch, GradientAngleLogger} <= callbacks
    else:
        assert isinstance(strategy, LinearScalarization)
    assert (model.eagc is not None) == (method == "eagc")
    assert cli.trainer.max_epochs == 200


def _fake_cub(root: Path, classes: int = 4, per_class: int = 4) -> None:
    """A CUB-200-2011 layout with ``classes × per_class`` training images (solid colours)."""
    from PIL import Image

    folder = root / "CUB_200_2011"
    (folder / "images").mkdir(parents=True)
    rows, labels, split = [], [], []
    for index in range(classes * per_class):
        image_id, label = index + 1, index // per_class + 1
        relative = f"{label:03d}.bird/{image_id}.jpg"
        (folder / "images" / relative).parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 32), (20 * label, 10 * index, 90)).save(folder / "images" / relative)
        rows.append(f"{image_id} {relative}")
        labels.append(f"{image_id} {label}")
        split.append(f"{image_id} 1")
    for name, lines in (
        ("images", rows),
        ("image_class_labels", labels),
        ("train_test_split", split),
    ):
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("method", ["pgi", "eagc"])
def test_cub_recipe_trains_end_to_end_on_a_fake_copy(
    method: str, tmp_path: Path, single_thread: None
) -> None:
    _fake_cub(tmp_path / "cub")
    split_file = tmp_path / "split.pkl"
    split_file.write_bytes(pickle.dumps({"known_classes": [0, 1]}))
    args = ["fit", "--config", f"gcd_cub_{method}", "--trainer.accelerator", "cpu"]
    args += ["--trainer.precision", "32-true", "--trainer.logger", "false"]
    args += ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    args += ["--trainer.limit_val_batches", "1", "--trainer.enable_checkpointing", "false"]
    args += ["--trainer.log_every_n_steps", "1"]
    args += ["--model.init_args.backbone", "vit_tiny_patch16_224"]
    args += ["--model.init_args.backbone_weights", "null", "--model.init_args.num_old", "2"]
    args += ["--data.init_args.root", str(tmp_path / "cub"), "--data.init_args.num_workers", "0"]
    args += ["--data.init_args.split_file", str(split_file), "--data.init_args.batch_size", "4"]
    if method == "eagc":
        args += ["--model.init_args.eagc.init_args.feature_dim", "192"]
        args += ["--model.init_args.reference_epochs", "1"]
    cli = run_cli(args, save_config_callback=None)
    # The CLI tests after fitting: the metrics are the All / Old / New of that test.
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 2
    expected = cluster_accuracy_by_hand(cli.model, cli.datamodule.test_dataloader(), num_old=2)
    for group in ("all", "old", "new"):
        assert float(metrics[f"test/{group}"]) == pytest.approx(expected[group])
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
    if method == "pgi":
        (angles,) = [c for c in cli.trainer.callbacks if isinstance(c, GradientAngleLogger)]
        assert len(angles.history) == 1 and math.isfinite(angles.history[0]["angle/cls_vs_rep"])
    else:
        assert cli.model.eagc is not None and bool(cli.model.eagc.initialised)
