"""The ``lightning-mtl`` command: the embedded recipe end to end, the final table, ``--help``."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_mtl.callbacks import WarmupThenSwitch
from lightning_mtl.cli import MultiObjectiveCLI, main, metrics_table

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "digits_pgi.yaml"

# At 6 epochs the recipe reaches val/acc 0.783 (deterministically, on CPU): below the 0.80 bar.
# 10 epochs reach about 0.86 and still take only a few seconds.
EPOCHS = 10
STEPS_PER_EPOCH = 1437 // 64  # training split of digits (1797 - 360), batch 64, last dropped
WARMUP_EPOCHS = 2  # the recipe's WarmupThenSwitch(warmup_epochs=2)


class RecordingCLI(MultiObjectiveCLI):
    """The package's CLI, keeping the metrics that ``fit`` left (``test`` replaces them)."""

    fitted: dict[str, Any]

    def after_fit(self) -> None:
        self.fitted = {name: float(value) for name, value in self.trainer.callback_metrics.items()}
        super().after_fit()


def hand_alpha(step: int) -> float:
    """PGI's alpha on ``step`` for the recipe: 0.5 → 0.35 over the steps left after warm-up."""
    start = WARMUP_EPOCHS * STEPS_PER_EPOCH
    total = EPOCHS * STEPS_PER_EPOCH - start
    return 0.35 + 0.5 * (0.5 - 0.35) * (1.0 + math.cos(math.pi * (step - start) / total))


def test_embedded_recipe_trains_logs_and_prints_the_final_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = RecordingCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=[
            "fit",
            "--config",
            str(RECIPE),
            "--trainer.max_epochs",
            str(EPOCHS),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
        ],
    )
    printed = capsys.readouterr().out
    fitted = cli.fitted
    total_steps = EPOCHS * STEPS_PER_EPOCH
    assert cli.trainer.global_step == total_steps

    # Learns: chance is 0.10.
    assert fitted["val/acc"] >= 0.80
    # The test split is the validation split and the weights have not moved since the last
    # validation, so the test accuracy that after_fit measured equals it.
    test_acc = float(cli.trainer.callback_metrics["test/acc"])
    assert test_acc == pytest.approx(fitted["val/acc"], abs=1e-6)

    # Gradient angles were measured and averaged per epoch.
    assert 0.0 < fitted["angle/cls~rep_epoch"] < 180.0
    assert -1.0 <= fitted["cos/cls~rep_epoch"] <= 1.0

    # Warm-up for 2 epochs, then PGI annealed over the remaining steps; alpha of the last step.
    warmup = next(cb for cb in cli.trainer.callbacks if isinstance(cb, WarmupThenSwitch))
    assert warmup.switched_at_epoch == WARMUP_EPOCHS
    assert warmup.switched_at_step == WARMUP_EPOCHS * STEPS_PER_EPOCH
    assert fitted["balancing/alpha"] == pytest.approx(hand_alpha(total_steps - 1), abs=1e-6)
    assert fitted["balancing/warmup"] == 0.0

    # The final table.
    assert "Final metrics" in printed
    assert "val/acc" in printed
    assert "test/acc" in printed
    assert f"{test_acc:.4f}" in printed
    assert "train/loss_step" not in printed

    # TensorBoard: one gradient-cosine heatmap per epoch, under the save_dir given on the line.
    runs = sorted(tmp_path.glob("digits_pgi/version_*"))
    assert len(runs) == 1
    assert list(runs[0].glob("events.out.tfevents.*"))
    events = EventAccumulator(str(runs[0]), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "gradient_cosines" in events.Tags()["images"]
    heatmaps = events.Images("gradient_cosines")
    assert [image.step for image in heatmaps] == list(range(EPOCHS))
    assert all(image.encoded_image_string.startswith(b"\x89PNG") for image in heatmaps)
    assert "val/acc" in events.Tags()["scalars"]
    assert (runs[0] / "config.yaml").is_file()


def test_metrics_table_keeps_epoch_means_and_bare_metrics_without_twins() -> None:
    table = metrics_table(
        {
            "val/acc": torch.tensor(0.912345),
            "lr": 0.1,
            "angle/a~b": 80.0,
            "angle/a~b_step": 79.0,
            "angle/a~b_epoch": torch.tensor(85.0),
            "train/loss_step": torch.tensor(2.0),
            "train/loss_epoch": 1.5,
            "grad_norm_step": 3.0,
        }
    )
    assert table.title == "Final metrics"
    names = list(table.columns[0].cells)
    values = list(table.columns[1].cells)
    assert names == ["angle/a~b_epoch", "lr", "train/loss_epoch", "val/acc"]
    assert values == ["85.0000", "0.1000", "1.5000", "0.9123"]


def test_metrics_table_of_nothing_is_empty() -> None:
    table = metrics_table({})
    assert table.row_count == 0
    assert [column.header for column in table.columns] == ["metric", "value"]


def test_console_help_exits_zero_and_lists_fit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-mtl", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "fit" in out
    assert "lightning-mtl" in out
    assert "validate" in out and "test" in out
