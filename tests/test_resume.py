"""A run resumed from a mid-epoch checkpoint ends bit-identical to the uninterrupted run, on every
embedded recipe (issue 13).

Each case trains 2 epochs of 4 batches while a :class:`ModelCheckpoint` saves after step 6 (the
middle of the second epoch), then fits a fresh CLI from that checkpoint to the same end. Weights,
buffers, the balancing strategy's state and the optimizer's state must be equal bit for bit: the
training loader resumes at the next batch (tasks/common/loader.py), and every other draw of a step
comes from a generator seeded by the step. The global RNG is reseeded before the resumed fit, so
anything drawing from it during training would show up as a difference. Before the loader kept
its position, every case differed (multidigits with Nash-MTL: weights by up to 0.0079, Nash-MTL's
state by up to 2.4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_mtl.callbacks.switch import StrategySwitch
from lightning_mtl.cli import MultiObjectiveCLI, run_cli

RECIPES = Path(__file__).resolve().parents[1] / "lightning_mtl" / "recipes"
BATCHES_PER_EPOCH = 4
EPOCHS = 2
SAVED_STEP = 6  # epoch 1, after 2 of its 4 batches


def _cli(recipe: str, root: Path, *overrides: str, checkpoint: bool) -> MultiObjectiveCLI:
    cli = run_cli(
        [
            *("--config", str(RECIPES / f"{recipe}.yaml")),
            *("--trainer.logger=false", f"--trainer.enable_checkpointing={checkpoint}"),
            *("--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"),
            *("--trainer.accelerator=cpu", f"--trainer.default_root_dir={root}"),
            *(
                f"--trainer.max_epochs={EPOCHS}",
                f"--trainer.limit_train_batches={BATCHES_PER_EPOCH}",
            ),
            "--trainer.limit_val_batches=0",
            *overrides,
        ],
        save_config_callback=None,
        run=False,
    )
    for callback in cli.trainer.callbacks:
        if isinstance(callback, StrategySwitch):
            callback.epochs = 1  # the recipe's own strategy in the second epoch, around the save
    return cli


def _assert_same(resumed: Any, uninterrupted: Any, where: str) -> None:
    if isinstance(uninterrupted, torch.Tensor):
        assert isinstance(resumed, torch.Tensor), where
        assert torch.equal(resumed, uninterrupted), f"{where}: max difference " + str(
            (resumed.double() - uninterrupted.double()).abs().max().item()
        )
    elif isinstance(uninterrupted, dict):
        assert resumed.keys() == uninterrupted.keys(), where
        for key in uninterrupted:
            _assert_same(resumed[key], uninterrupted[key], f"{where}.{key}")
    elif isinstance(uninterrupted, list | tuple):
        assert len(resumed) == len(uninterrupted), where
        for index, (a, b) in enumerate(zip(resumed, uninterrupted, strict=True)):
            _assert_same(a, b, f"{where}[{index}]")
    else:
        assert resumed == uninterrupted, where


def _resume_matches(recipe: str, root: Path, *overrides: str) -> None:
    uninterrupted = _cli(recipe, root / "full", *overrides, checkpoint=True)
    saver = ModelCheckpoint(
        dirpath=root / "checkpoints",
        filename="{step}",
        every_n_train_steps=SAVED_STEP,
        save_top_k=-1,
    )
    callbacks = uninterrupted.trainer.callbacks
    callbacks[:] = [c for c in callbacks if not isinstance(c, ModelCheckpoint)] + [saver]
    uninterrupted.trainer.fit(uninterrupted.model, uninterrupted.datamodule)
    assert uninterrupted.trainer.global_step == EPOCHS * BATCHES_PER_EPOCH
    checkpoint = root / "checkpoints" / f"step={SAVED_STEP}.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (1, SAVED_STEP)  # inside the second epoch

    resumed = _cli(recipe, root / "resumed", *overrides, checkpoint=False)
    torch.manual_seed(12345)  # a global RNG unlike the uninterrupted run's at step 6
    resumed.trainer.fit(resumed.model, resumed.datamodule, ckpt_path=checkpoint)
    assert resumed.trainer.global_step == EPOCHS * BATCHES_PER_EPOCH

    _assert_same(resumed.model.state_dict(), uninterrupted.model.state_dict(), "weights")
    _assert_same(
        resumed.model.active_strategy_state(),
        uninterrupted.model.active_strategy_state(),
        "strategy",
    )
    _assert_same(
        resumed.trainer.optimizers[0].state_dict(),
        uninterrupted.trainer.optimizers[0].state_dict(),
        "optimizer",
    )


@pytest.mark.parametrize(
    ("recipe", "overrides"),
    [
        ("digits_pgi", ()),
        ("digits_gcd_pgi", ()),
        ("digits_gcd_eagc", ("--model.reference_epochs=1",)),
        ("digits_lt_plot", ()),
        ("multidigits_mtl", ()),
        ("multidigits_mtl", ("--model.strategy=NashMTL",)),  # the case of issue 13
        ("multidigits_mtl", ("--data.num_workers=2",)),  # persistent worker processes
    ],
    ids=lambda value: value if isinstance(value, str) else "-".join(v[2:] for v in value),
)
def test_mid_epoch_resume_is_bit_identical(
    recipe: str, overrides: tuple[str, ...], tmp_path: Path, single_thread: None
) -> None:
    _resume_matches(recipe, tmp_path, *overrides)
