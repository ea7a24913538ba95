"""Real-run safety: no non-finite value reaches the weights, the optimizer state, the strategy's
state or a checkpoint; skipping is bounded; distributed processes decide alike; the strategy
survives ``load_from_checkpoint``; sharded training strategies are refused where they would be
wrong; the ``16-mixed`` loss-scaling path runs on the CPU."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from helpers import DATA, TinyModule, flat_params, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_mtl import NonFiniteObjectiveError
from lightning_mtl.mixin import check_training_strategy
from lightning_mtl.strategies import DWA, MGDA, PGI, RGB, NashMTL, PCGrad, SharpnessAware


class Poisoned(TinyModule):
    """TinyModule whose ``cls`` objective is replaced by ``value`` on the given batches."""

    def __init__(self, strategy: Any, batches: dict[int, float], **balancing: Any) -> None:
        super().__init__(strategy, lr=0.1, momentum=0.9)
        self.batches = batches
        if balancing:
            self.configure_balancing(strategy, **balancing)

    def compute_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        output = super().compute_objectives(batch, batch_idx)
        if batch_idx in self.batches:
            losses = dict(output.losses)
            losses["cls"] = losses["cls"] * 0 + self.batches[batch_idx]
            return type(output)(losses, representation=output.representation)
        return output


def _finite_checkpoints(folder: Path) -> int:
    count = 0
    for path in sorted(folder.glob("*.ckpt")):
        checkpoint = torch.load(path, weights_only=True)
        tensors = list(checkpoint["state_dict"].values())
        for state in checkpoint["optimizer_states"][0]["state"].values():
            tensors += [value for value in state.values() if isinstance(value, Tensor)]
        strategy_state = checkpoint["lightning_mtl"]["strategy"]
        tensors += [value for value in strategy_state.values() if isinstance(value, Tensor)]
        assert all(torch.isfinite(tensor).all() for tensor in tensors), path.name
        count += 1
    return count


@pytest.mark.parametrize("strategy", [PGI(alpha=0.3), MGDA(), RGB(alpha_steps=3), DWA()])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_skip_keeps_every_checkpoint_and_the_weights_finite(
    tmp_path: Path, strategy: Any, bad: float
) -> None:
    module = Poisoned(strategy, {2: bad, 3: bad, 6: bad}, nonfinite="skip")
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_train_steps=1)
    trainer = make_trainer(max_epochs=2, enable_checkpointing=True, callbacks=[checkpoints])
    with pytest.warns(UserWarning, match=r"\['cls'\] not finite at step 2.*skipped"):
        trainer.fit(module, DataLoader(DATA, batch_size=4))  # 8 batches per epoch
    assert trainer.global_step == 16 - 2 * 3  # three batches of each epoch did not step
    assert torch.isfinite(flat_params(module)).all()
    assert _finite_checkpoints(tmp_path) == 10


def test_a_skipped_step_changes_nothing() -> None:
    """Weights, optimizer state and the strategy's state are those of the step before."""
    states: list[tuple[Tensor, dict[str, Any]]] = []

    class Recorder(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            states.append((flat_params(pl_module), pl_module.balancing_strategy.state_dict()))

    module = Poisoned(RGB(alpha_steps=3), {2: math.nan}, nonfinite="skip")
    with pytest.warns(UserWarning, match="skipped"):
        make_trainer(max_steps=4, callbacks=[Recorder()]).fit(
            module, DataLoader(DATA, batch_size=8)
        )
    (before, state_before), (after, state_after) = states[1], states[2]
    assert torch.equal(before, after)
    assert torch.equal(state_before["ema_direction"], state_after["ema_direction"])
    assert not torch.equal(states[3][0], after)  # and training went on


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_raise_names_the_objective_and_the_step_and_applies_nothing(
    tmp_path: Path, bad: float
) -> None:
    module = Poisoned(PCGrad(), {3: bad})
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_train_steps=1)
    trainer = make_trainer(max_steps=6, enable_checkpointing=True, callbacks=[checkpoints])
    with pytest.raises(NonFiniteObjectiveError, match=r"\['cls'\] not finite at step 3"):
        trainer.fit(module, DataLoader(DATA, batch_size=4))
    assert torch.isfinite(flat_params(module)).all()
    assert _finite_checkpoints(tmp_path) == 3


def test_non_finite_gradients_of_finite_objectives_are_caught() -> None:
    class SqrtAtZero(TinyModule):
        def compute_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            output = super().compute_objectives(batch, batch_idx)
            # sqrt'(0) is infinite: a finite objective with an infinite gradient.
            edge = (self.net.trunk[0].weight * 0).sum().sqrt()
            return {"cls": output.losses["cls"] + edge, "rep": output.losses["rep"]}

    with pytest.raises(NonFiniteObjectiveError, match=r"gradients are not finite .* at step 0"):
        make_trainer(max_steps=2).fit(SqrtAtZero(MGDA()), DataLoader(DATA, batch_size=8))


def test_skip_gives_up_after_max_consecutive_skips() -> None:
    module = Poisoned(MGDA(), dict.fromkeys(range(1, 8), math.inf), nonfinite="skip")
    module.configure_balancing(MGDA(), nonfinite="skip", max_consecutive_skips=4)
    with (
        pytest.warns(UserWarning, match="skipped"),
        pytest.raises(NonFiniteObjectiveError, match=r"4 consecutive steps were skipped.*step 1"),
    ):
        make_trainer(max_steps=10).fit(module, DataLoader(DATA, batch_size=4))


def test_sharpness_aware_with_a_nan_perturbing_loss_leaves_the_weights_finite() -> None:
    class NanPerturbation(TinyModule):
        def compute_perturbation_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            output = self.compute_objectives(batch, batch_idx)
            if batch_idx == 1:
                return {"total": sum(output.losses.values()) * math.nan}
            return output

    module = NanPerturbation(SharpnessAware(MGDA(), rho=0.1), scope=["net.trunk"])
    module.configure_balancing(module.balancing_strategy, scope=["net.trunk"], nonfinite="skip")
    with pytest.warns(UserWarning, match="skipped"):
        make_trainer(max_steps=3).fit(module, DataLoader(DATA, batch_size=8))
    assert torch.isfinite(flat_params(module)).all() and module.trainer.global_step == 3


class HalvesPerRank(pl.LightningDataModule):
    """Each of two processes trains on its own half of the 32 samples."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        half = slice(16 * self.trainer.global_rank, 16 * (self.trainer.global_rank + 1))
        x, y = DATA.tensors
        dataset = torch.utils.data.TensorDataset(x[half], y[half])
        return DataLoader(dataset, batch_size=self.batch_size)


class PoisonRankOne(TinyModule):
    def compute_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        output = super().compute_objectives(batch, batch_idx)
        if self.trainer.global_rank == 1 and batch_idx == 1:
            losses = dict(output.losses)
            losses["rep"] = losses["rep"] * math.nan
            return type(output)(losses, representation=output.representation)
        return output

    def on_train_end(self) -> None:
        path = Path(self.folder) / f"rank{self.trainer.global_rank}.pt"
        torch.save((flat_params(self), self.trainer.global_step), path)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [PGI(alpha=0.3), MGDA()], ids=["loss-only", "gramian"])
def test_a_nan_on_one_rank_skips_the_step_on_both(tmp_path: Path, strategy: Any) -> None:
    module = PoisonRankOne(strategy, lr=0.1)
    module.configure_balancing(strategy, nonfinite="skip")
    module.folder = str(tmp_path)
    trainer = make_trainer(
        max_epochs=1, devices=2, strategy="ddp_spawn", use_distributed_sampler=False
    )
    trainer.fit(module, datamodule=HalvesPerRank(batch_size=4))
    (weights_0, steps_0), (weights_1, steps_1) = (
        torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)
    )
    assert steps_0 == steps_1 == 3  # 4 batches each; the second skipped on both ranks
    assert torch.equal(weights_0, weights_1) and torch.isfinite(weights_0).all()


def test_load_from_checkpoint_restores_a_stateful_strategy(tmp_path: Path) -> None:
    from lightning_mtl.tasks.multitask import MultiDigitsDataModule, MultiDigitsModule

    model = MultiDigitsModule(strategy=NashMTL(update_weights_every=2, max_norm=2.0))
    logger = pl.loggers.CSVLogger(tmp_path)
    trainer = make_trainer(max_steps=3, logger=logger, enable_checkpointing=True)
    trainer.fit(model, datamodule=MultiDigitsDataModule(batch_size=32))
    path = next(Path(trainer.checkpoint_callback.dirpath).glob("*.ckpt"))

    restored = MultiDigitsModule.load_from_checkpoint(path)
    strategy = restored.balancing_strategy
    assert isinstance(strategy, NashMTL)
    assert (strategy.update_weights_every, strategy.max_norm) == (2, 2.0)
    torch.testing.assert_close(strategy.alpha, model.balancing_strategy.alpha, rtol=0, atol=0)
    assert strategy.solved_at == model.balancing_strategy.solved_at
    hparams = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())
    assert hparams["strategy"] == {
        "class_path": "lightning_mtl.strategies.nash_mtl.NashMTL",
        "init_args": {
            "max_norm": 2.0,
            "update_weights_every": 2,
            "optim_niter": 20,
            "tol": 1e-06,
            "solve_on": "host",
        },
    }


def test_a_module_built_with_another_strategy_does_not_take_the_checkpoint_state(
    tmp_path: Path,
) -> None:
    model = TinyModule(NashMTL())
    trainer = make_trainer(max_steps=2, enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(DATA, batch_size=8))
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    other = TinyModule(MGDA())
    with pytest.warns(UserWarning, match="the strategy's state is not restored"):
        other.on_load_checkpoint(checkpoint)


def test_sharded_training_strategies_refuse_what_they_would_get_wrong() -> None:
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from lightning_mtl.callbacks import GradientAngleLogger

    check_training_strategy(DDPStrategy(), [MGDA()], [GradientAngleLogger()])
    check_training_strategy(FSDPStrategy(), [PGI(), DWA()])
    for strategies, observers, named in (
        ([MGDA()], [], "MGDA"),
        ([PGI()], [GradientAngleLogger()], "GradientAngleLogger"),
        ([SharpnessAware(PGI())], [], "SharpnessAware"),
        ([PCGrad()], [], "PCGrad"),
    ):
        with pytest.raises(ValueError, match=f"FSDPStrategy shards the parameters.*{named}"):
            check_training_strategy(FSDPStrategy(), strategies, observers)


def test_16_mixed_on_the_cpu_skips_an_overflow_and_writes_no_nan() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scales: list[float] = []
    weights: list[Tensor] = []

    class Overflowing(TinyModule):
        def compute_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            output = super().compute_objectives(batch, batch_idx)
            if batch_idx == 1:  # finite objectives whose scaled gradients overflow float16
                losses = {name: loss.float() * 1e6 for name, loss in output.losses.items()}
                return type(output)(losses, representation=output.representation)
            return output

        def on_train_batch_end(self, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            scales.append(scaler.get_scale())
            weights.append(flat_params(self))

    module = Overflowing(MGDA(), lr=0.1)
    plugin = MixedPrecision("16-mixed", "cpu", scaler)
    make_trainer(max_steps=3, plugins=[plugin]).fit(module, DataLoader(DATA, batch_size=8))
    assert module.trainer.precision_plugin.scaler is scaler
    assert scales[1] == scales[0] / 2  # the scaler saw the overflow and lowered the scale
    assert torch.equal(weights[1], weights[0])  # and skipped the update
    assert not torch.equal(weights[2], weights[1])
    assert all(torch.isfinite(w).all() for w in weights)


def test_the_logging_cadence_matches_lightnings() -> None:
    """The mixin reads no private Lightning attribute for its cadence; this pins that its public
    computation agrees with Lightning's own (``_logger_connector.should_update_logs``)."""
    agreed: list[bool] = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
            pass

    module = Poisoned(MGDA(), {3: math.nan}, nonfinite="skip")
    original = module._loggers_write_this_step

    def compared() -> bool:
        ours = original()
        agreed.append(ours == module.trainer._logger_connector.should_update_logs)
        return ours

    module._loggers_write_this_step = compared  # type: ignore[method-assign]
    with pytest.warns(UserWarning, match="skipped"):
        make_trainer(max_steps=9, log_every_n_steps=3, callbacks=[Probe()]).fit(
            module, DataLoader(DATA, batch_size=4)
        )
    assert len(agreed) >= 10 and all(agreed)


class Accumulating(TinyModule):
    def __init__(self, strategy: Any, accumulate: int, scope: object = "shared") -> None:
        super().__init__(strategy, lr=0.1, momentum=0.9)
        self.configure_balancing(strategy, scope=scope, accumulate_grad_batches=accumulate)


def _one_step(strategy: Any, batch_size: int, accumulate: int) -> Tensor:
    module = Accumulating(strategy, accumulate)
    make_trainer(max_steps=1).fit(module, DataLoader(DATA, batch_size=batch_size))
    assert module.trainer.global_step == 1
    return flat_params(module)


@pytest.mark.parametrize(
    "make",
    [lambda: PGI(alpha=0.3), MGDA, lambda: PCGrad(seed=3), lambda: RGB(alpha_steps=3)],
    ids=["loss-only", "gramian", "jacobian", "surgery-with-state"],
)
def test_accumulated_micro_batches_equal_one_step_on_their_concatenation(make: Any) -> None:
    whole = _one_step(make(), batch_size=32, accumulate=1)
    accumulated = _one_step(make(), batch_size=8, accumulate=4)
    torch.testing.assert_close(accumulated, whole, rtol=1e-6, atol=1e-6)
    assert not torch.equal(_one_step(make(), batch_size=8, accumulate=1), whole)  # not trivial


def test_accumulation_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="DWA reads the objectives' values"):
        Accumulating(DWA(), 2)
    with pytest.raises(ValueError, match="representation scope"):
        Accumulating(MGDA(), 2, scope="representation")
    with pytest.raises(ValueError, match="sharpness-aware"):
        Accumulating(SharpnessAware(MGDA()), 2, scope=["net.trunk"])
    with pytest.raises(ValueError, match="accumulate_grad_batches must be a positive integer"):
        Accumulating(MGDA(), 0)


class SavesWeights(Accumulating):
    def on_train_end(self) -> None:
        if self.trainer.global_rank == 0:
            torch.save(flat_params(self), Path(self.folder) / "weights.pt")


@pytest.mark.slow
@pytest.mark.parametrize("make", [lambda: PGI(alpha=0.3), MGDA], ids=["loss-only", "gramian"])
def test_accumulation_under_two_process_ddp_equals_one_step(tmp_path: Path, make: Any) -> None:
    whole = _one_step(make(), batch_size=32, accumulate=1)
    module = SavesWeights(make(), accumulate=2)
    module.folder = str(tmp_path)
    trainer = make_trainer(
        max_steps=1, devices=2, strategy="ddp_spawn", use_distributed_sampler=False
    )
    trainer.fit(module, datamodule=HalvesPerRank(batch_size=8))
    torch.testing.assert_close(
        torch.load(tmp_path / "weights.pt", weights_only=True), whole, rtol=1e-6, atol=1e-6
    )


def _bundled_models() -> dict[str, Any]:
    from lightning_mtl.strategies import PLOT, GradVac
    from lightning_mtl.tasks.gcd import DigitsMultiObjective, GCDModule
    from lightning_mtl.tasks.long_tail import LongTailClassifier
    from lightning_mtl.tasks.multitask import CelebAMultiTask, MultiDigitsModule, NYUv2MultiTask

    return {
        "digits": lambda: DigitsMultiObjective(strategy=NashMTL(max_norm=3.0)),
        "gcd": lambda: GCDModule(strategy=NashMTL(update_weights_every=3)),
        "multidigits": lambda: MultiDigitsModule(strategy=NashMTL(optim_niter=7)),
        "celeba": lambda: CelebAMultiTask(trunk="small", width=4, strategy=GradVac(beta=0.2)),
        "nyuv2": lambda: NYUv2MultiTask(backbone="small", width=4, strategy=NashMTL(tol=1e-5)),
        "long_tail": lambda: LongTailClassifier(
            strategy=PLOT(class_counts=[50, 20, 5] + [1] * 7, keep_perturbation=0.5)
        ),
    }


@pytest.mark.parametrize("name", sorted(_bundled_models()))
def test_every_bundled_model_comes_back_with_its_strategy_and_state(
    tmp_path: Path, name: str
) -> None:
    model = _bundled_models()[name]()
    strategy = model.balancing_strategy
    inner = getattr(strategy, "inner", strategy)
    # A state as after some steps (the attributes each strategy checkpoints).
    marked = {key: torch.full((3,), 0.25) for key in type(inner).state_fields}
    if isinstance(inner, NashMTL):
        inner.load_state_dict({"alpha": torch.tensor([0.5, 2.0]), "solved_at": 7})
    elif marked:
        inner.load_state_dict(marked)
    elif hasattr(inner, "targets"):
        inner.load_state_dict({"names": ["a", "b"], "targets": torch.eye(2, dtype=torch.float64)})
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": pl.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "model.ckpt")

    restored = type(model).load_from_checkpoint(tmp_path / "model.ckpt")
    again = restored.balancing_strategy
    assert type(again) is type(strategy) and again.config() == strategy.config()
    state, expected = again.state_dict(), strategy.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, Tensor):
            assert torch.equal(state[key], value), key
        elif isinstance(value, dict):
            assert repr(state[key]) == repr(value), key
        else:
            assert state[key] == value, key


def test_the_readme_model_comes_back_with_its_strategy(tmp_path: Path) -> None:
    """The README's own-model pattern: the strategy is built in ``__init__``, not passed."""
    from lightning_mtl import MultiObjectiveMixin
    from lightning_mtl.callbacks import WarmupThenSwitch

    class MyModel(MultiObjectiveMixin, pl.LightningModule):
        def __init__(self, width: int = 6) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(4, width)
            self.cls, self.rep = torch.nn.Linear(width, 3), torch.nn.Linear(width, 1)
            self.configure_balancing(
                PGI(supervised="cls", representation="rep", alpha_max=0.5, alpha_min=0.35),
                groups={"cls": {"ce": 0.35}, "rep": {"reg": 1.0}},
            )

        def compute_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            z = self.net(x).tanh()
            return {
                "ce": torch.nn.functional.cross_entropy(self.cls(z), y),
                "reg": self.rep(z).pow(2).mean(),
            }

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = MyModel()
    trainer = make_trainer(
        max_epochs=3,
        enable_checkpointing=True,
        default_root_dir=tmp_path,
        callbacks=[WarmupThenSwitch(warmup_epochs=1)],
    )
    trainer.fit(model, DataLoader(DATA, batch_size=16))
    restored = MyModel.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert restored.hparams["strategy"] == model.balancing_strategy.config()
    assert restored.balancing_strategy.state_dict() == model.balancing_strategy.state_dict()
    assert restored.balancing_strategy.start == 2  # PGI's schedule started after the warm-up
