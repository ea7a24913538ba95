"""The multi-digit multi-task recipe: data module, model, and the recipe through the CLI."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import UnitRowMean, predictions_by_hand
from helpers import make_trainer as make_quiet_trainer
from sklearn.datasets import load_digits

from lightning_mtl.cli import MultiObjectiveCLI, run_cli
from lightning_mtl.strategies import PGI, LinearScalarization
from lightning_mtl.tasks.common.samplers import EpochSeededRandomSampler
from lightning_mtl.tasks.multitask import delta_m
from lightning_mtl.tasks.multitask.data.multidigits import MultiDigitsDataModule
from lightning_mtl.tasks.multitask.models.multidigits import MultiDigitsModule

# Two epochs of 3000 composites in batches of 32 at lr 0.05 reach a mean validation accuracy
# of 0.899 with seed 0 (0.898–0.923 over seeds 0–3, every task ≥ 0.87; CPU); chance is 0.10.
QUICK_FIT_MIN_ACC = 0.80


pytestmark = pytest.mark.usefixtures("single_thread")


def _small(**kwargs: Any) -> MultiDigitsDataModule:
    dm = MultiDigitsDataModule(**{"train_size": 256, "val_size": 64, "batch_size": 32, **kwargs})
    dm.setup("fit")
    return dm


make_trainer = partial(make_quiet_trainer, deterministic=True)


# --- MultiDigitsDataModule --------------------------------------------------------------------


@pytest.fixture(scope="module")
def datamodule() -> MultiDigitsDataModule:
    dm = MultiDigitsDataModule(num_tasks=3, train_size=500, val_size=120, batch_size=64, seed=0)
    dm.setup("fit")
    return dm


def test_shapes_dtypes_and_range(datamodule: MultiDigitsDataModule) -> None:
    assert datamodule.train_dataset is not None and datamodule.val_dataset is not None
    images, labels = datamodule.train_dataset.tensors
    assert images.shape == (500, 1, 8, 24) and images.dtype == torch.float32
    assert labels.shape == (500, 3) and labels.dtype == torch.int64
    assert images.min() >= 0.0 and images.max() == 1.0
    assert labels.min() == 0 and labels.max() == 9
    assert datamodule.val_dataset.tensors[0].shape == (120, 1, 8, 24)
    assert datamodule.image_shape == (1, 8, 24) and datamodule.num_classes == 10
    four = _small(num_tasks=4)
    assert four.train_dataset is not None
    assert four.train_dataset.tensors[0].shape[1:] == (1, 8, 32)


def test_labels_match_the_composed_digits(datamodule: MultiDigitsDataModule) -> None:
    pixels, digit_labels = load_digits(return_X_y=True)
    source_images = torch.from_numpy(pixels / 16.0).float().view(-1, 8, 8)
    for dataset, sources in (
        (datamodule.train_dataset, datamodule.train_sources),
        (datamodule.val_dataset, datamodule.val_sources),
    ):
        assert dataset is not None and sources is not None
        images, labels = dataset.tensors
        for k in range(3):
            block = images[:, 0, :, 8 * k : 8 * (k + 1)]
            assert torch.equal(block, source_images[sources[:, k]])
            assert torch.equal(labels[:, k], torch.from_numpy(digit_labels)[sources[:, k]])


def test_image_pools_are_disjoint_between_splits(datamodule: MultiDigitsDataModule) -> None:
    assert datamodule.train_sources is not None and datamodule.val_sources is not None
    train = set(datamodule.train_sources.flatten().tolist())
    val = set(datamodule.val_sources.flatten().tolist())
    assert not train & val
    # The pools are the 1437 / 360 images of the stratified split; 1500 and 360 draws with
    # replacement reach about 63% of them.
    assert 800 < len(train) <= 1437 and 200 < len(val) <= 360
    assert max(train | val) < 1797


def test_composites_are_deterministic_by_seed() -> None:
    first, second, other = _small(seed=3), _small(seed=3), _small(seed=4)
    assert first.train_dataset is not None and second.train_dataset is not None
    assert other.train_dataset is not None
    assert torch.equal(first.train_dataset.tensors[0], second.train_dataset.tensors[0])
    assert torch.equal(first.val_sources, second.val_sources)  # type: ignore[arg-type]
    assert not torch.equal(first.train_dataset.tensors[0], other.train_dataset.tensors[0])


def test_one_split_size_does_not_change_the_other_split() -> None:
    base, bigger_val = _small(), _small(val_size=100)
    assert torch.equal(base.train_sources, bigger_val.train_sources)  # type: ignore[arg-type]
    assert torch.equal(base.val_sources, bigger_val.val_sources[:64])  # type: ignore[index]


def test_loaders(datamodule: MultiDigitsDataModule) -> None:
    loader = datamodule.train_dataloader()
    assert isinstance(loader.sampler, EpochSeededRandomSampler)
    batches = list(loader)
    assert len(batches) == 500 // 64  # the incomplete tail is dropped
    assert all(len(labels) == 64 for _, labels in batches)
    val_images = torch.cat([images for images, _ in datamodule.val_dataloader()])
    assert datamodule.val_dataset is not None
    assert torch.equal(val_images, datamodule.val_dataset.tensors[0])  # unshuffled, complete
    assert datamodule.test_dataset is datamodule.val_dataset


def test_hyperparameters_saved_and_loader_before_setup() -> None:
    dm = MultiDigitsDataModule(num_tasks=2, batch_size=8, train_size=16, val_size=4, seed=1)
    assert dict(dm.hparams) == {
        "num_tasks": 2,
        "batch_size": 8,
        "train_size": 16,
        "val_size": 4,
        "seed": 1,
        "num_workers": 0,
        "test_size": 0,
    }
    with pytest.raises(RuntimeError, match="call `setup"):
        dm.train_dataloader()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_tasks": 1}, "num_tasks"),
        ({"batch_size": 0}, "batch_size"),
        ({"val_size": 0}, "val_size"),
        ({"seed": -1}, "seed"),
        ({"num_workers": -1}, "num_workers"),
        ({"train_size": 100, "batch_size": 128}, "drops the last incomplete batch"),
    ],
)
def test_datamodule_argument_errors(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultiDigitsDataModule(**kwargs)


# --- MultiDigitsModule ------------------------------------------------------------------------


def test_two_epoch_fit_learns_every_task() -> None:
    pl.seed_everything(0, verbose=False)
    dm = MultiDigitsDataModule(batch_size=32, seed=0)
    model = MultiDigitsModule(lr=0.05)
    trainer = make_trainer(max_epochs=2, log_every_n_steps=50)
    trainer.fit(model, dm)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    assert metrics["val/acc_mean"] >= QUICK_FIT_MIN_ACC
    for k in range(3):
        assert metrics[f"val/acc_task{k}"] >= QUICK_FIT_MIN_ACC - 0.05
    per_task = [metrics[f"val/acc_task{k}"] for k in range(3)]
    assert metrics["val/acc_mean"] == pytest.approx(float(np.mean(per_task)), abs=1e-6)
    assert isinstance(model.balancing_strategy, LinearScalarization)
    assert "val/delta_m" not in metrics  # no baselines given


def test_single_task_leaves_the_other_heads_without_gradient() -> None:
    torch.manual_seed(0)
    model = MultiDigitsModule(single_task=1)
    batch = (torch.rand(8, 1, 8, 24), torch.randint(0, 10, (8, 3)))
    losses = model.compute_objectives(batch, 0)
    assert list(losses) == ["task1"]  # type: ignore[arg-type]
    losses["task1"].backward()  # type: ignore[index]
    for k, head in enumerate(model.heads):
        for parameter in head.parameters():
            grad = parameter.grad
            if k == 1:
                assert grad is not None and grad.abs().sum() > 0
            else:
                assert grad is None or not grad.any()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_single_task_fit_moves_only_its_head() -> None:
    # SGD skips parameters without a gradient, so weight decay and momentum leave them as well.
    model = MultiDigitsModule(single_task=0)
    before = [head.weight.detach().clone() for head in model.heads]
    make_trainer(max_steps=3, limit_val_batches=0).fit(model, _small())
    after = [head.weight.detach() for head in model.heads]
    assert not torch.equal(before[0], after[0])
    assert torch.equal(before[1], after[1]) and torch.equal(before[2], after[2])


@pytest.mark.parametrize("scope", ["shared", "representation"])
def test_gradient_strategy_trains_under_both_scopes(scope: str) -> None:
    model = MultiDigitsModule(strategy=UnitRowMean(), scope=scope)
    # One short epoch, so that validation runs at its end.
    trainer = make_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=2)
    data = _small()
    trainer.fit(model, data)
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    # Validation ran on two batches: the mean over tasks of each head's accuracy, recomputed.
    predicted, labels = predictions_by_hand(model, data.val_dataloader(), 2)
    expected = (predicted == labels).double().mean(0).mean().item()
    assert float(trainer.callback_metrics["val/acc_mean"]) == pytest.approx(expected)


def test_baselines_log_delta_m_on_validation() -> None:
    baselines = {"task0": 0.5, "task1": 0.25, "task2": 0.2}
    model = MultiDigitsModule(baselines=baselines)
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, _small())
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    per_task = {f"task{k}": metrics[f"val/acc_task{k}"] for k in range(3)}
    assert metrics["val/delta_m"] == pytest.approx(delta_m(per_task, baselines), abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_tasks": 1}, "num_tasks"),
        ({"single_task": 3}, r"single_task must be in 0\.\.2"),
        ({"single_task": 0, "strategy": PGI()}, "needs no balancing"),
        ({"single_task": 0, "groups": {"all": {"task0": 1.0}}}, "needs no balancing"),
        ({"baselines": {"task0": 0.9, "task1": 0.9}}, "one accuracy per task"),
        ({"baselines": {"task0": 0.9, "task1": 0.9, "task2": 0.0}}, r"in \(0, 1\]"),
    ],
)
def test_model_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultiDigitsModule(**kwargs)


def test_images_of_another_width_are_refused() -> None:
    with pytest.raises(ValueError, match="same num_tasks"):
        MultiDigitsModule(num_tasks=3)(torch.zeros(2, 1, 8, 16))


# --- the recipe through the CLI ---------------------------------------------------------------


def _run_recipe(tmp_path: Path, *extra: str) -> MultiObjectiveCLI:
    return run_cli(
        [
            "fit",
            "--config",
            "multidigits_mtl",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            *extra,
        ]
    )


def _table_value(printed: str, name: str) -> float:
    match = re.search(rf"{re.escape(name)}\s*│\s*(-?[0-9.]+)", printed)
    assert match is not None, f"{name} missing from the final table:\n{printed}"
    return float(match.group(1))


def test_recipe_prints_per_task_accuracies_and_delta_m(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = _run_recipe(
        tmp_path,
        "--trainer.max_epochs",
        "2",
        "--model.init_args.baselines",
        "{task0: 0.95, task1: 0.95, task2: 0.95}",
    )
    printed = capsys.readouterr().out
    assert isinstance(cli.model, MultiDigitsModule)
    assert isinstance(cli.model.balancing_strategy, LinearScalarization)
    assert cli.trainer.global_step == 2 * (3000 // 128)
    assert "Final metrics" in printed
    accuracies = {}
    for k in range(3):
        accuracies[f"task{k}"] = _table_value(printed, f"val/acc_task{k}")
        assert _table_value(printed, f"test/acc_task{k}") == accuracies[f"task{k}"]
    assert _table_value(printed, "val/acc_mean") > 0.3  # 0.535 after 2 epochs; chance is 0.1
    expected = delta_m(accuracies, {"task0": 0.95, "task1": 0.95, "task2": 0.95})
    assert _table_value(printed, "test/delta_m") == pytest.approx(expected, abs=0.02)


def test_pgi_balances_two_groups_of_the_recipe_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names_seen: list[tuple[str, ...]] = []
    setup = PGI.setup

    def recording_setup(pgi: PGI, names: Any) -> None:
        names_seen.append(tuple(names))
        setup(pgi, names)

    monkeypatch.setattr(PGI, "setup", recording_setup)
    cli = run_cli(
        [
            *("--config", "multidigits_mtl", "--trainer.logger", "false"),
            *("--trainer.max_steps", "1", "--trainer.log_every_n_steps", "1"),
            *("--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false"),
            *("--model.init_args.strategy", "lightning_mtl.strategies.PGI"),
            "--model.init_args.groups",
            '{"cls": {"task0": 1.0}, "rep": {"task1": 1.0, "task2": 1.0}}',
        ],
        save_config_callback=None,
        run=False,
    )
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 1
    assert names_seen == [("cls", "rep")]  # PGI saw the two groups, not the three tasks
    strategy = cli.model.balancing_strategy
    assert isinstance(strategy, PGI) and strategy.start == 0  # it weighed step 0
    logged = {name: float(value) for name, value in cli.trainer.callback_metrics.items()}
    assert logged["train/cls"] == pytest.approx(logged["train/task0"], rel=1e-6)
    rep = logged["train/task1"] + logged["train/task2"]
    assert logged["train/rep"] == pytest.approx(rep, rel=1e-6)
    assert logged["balancing/alpha"] == pytest.approx(0.5)  # α_max on PGI's first step


def test_recipe_strategy_is_chosen_on_the_command_line(tmp_path: Path) -> None:
    cli = _run_recipe(
        tmp_path,
        "--trainer.max_steps",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--model.init_args.strategy.class_path",
        "helpers.UnitRowMean",
        "--model.init_args.scope",
        "representation",
    )
    assert isinstance(cli.model, MultiDigitsModule)
    assert isinstance(cli.model.balancing_strategy, UnitRowMean)
    assert cli.model.balancing_scope == "representation"
    assert cli.trainer.global_step == 2
