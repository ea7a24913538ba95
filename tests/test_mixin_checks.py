"""The mixin through real Trainer runs: input checks, objective groups, LR schedulers, gradient
clipping and the warm-up switch into PGI, each against values computed by hand with autograd."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import make_trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mtl import MultiObjectiveMixin, NonFiniteObjectiveError
from lightning_mtl.callbacks import GradientAngleLogger, WarmupThenSwitch
from lightning_mtl.strategies import PGI, LinearScalarization
from lightning_mtl.strategies.base import GradientBalancingStrategy, JacobianBatch, JacobianStrategy

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*",
    "ignore:.*smaller than the logging interval.*",
)

ObjectiveFn = Callable[["TinyModule", Tensor, int], Any]


def two_objectives(module: TinyModule, x: Tensor, batch_idx: int) -> dict[str, Tensor]:
    z = torch.tanh(module.trunk(x))
    return {
        "cls": module.cls_head(z).pow(2).mean(),
        "rep": (module.rep_head(z) - 1.0).pow(2).mean(),
    }


class TinyModule(MultiObjectiveMixin, pl.LightningModule):
    """trunk Linear(4, 8) → tanh → two heads; ``objectives`` makes compute_objectives' output."""

    def __init__(
        self,
        strategy: GradientBalancingStrategy | None = None,
        objectives: ObjectiveFn = two_objectives,
        lr: float = 0.1,
        optimizers: Callable[[TinyModule], Any] | None = None,
        seed: int = 0,
        **balancing: Any,
    ) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.trunk = nn.Linear(4, 8)
            self.cls_head = nn.Linear(8, 1)
            self.rep_head = nn.Linear(8, 1)
        self.activation = nn.Tanh()  # a submodule without parameters
        self.objectives = objectives
        self.lr = lr
        self.make_optimizers = optimizers
        self.configure_balancing(strategy or LinearScalarization(), **balancing)

    def compute_objectives(self, batch: Any, batch_idx: int) -> Any:
        return self.objectives(self, batch[0], batch_idx)

    def configure_optimizers(self) -> Any:
        if self.make_optimizers is not None:
            return self.make_optimizers(self)
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class SumOfRows(JacobianStrategy):
    """A Jacobian strategy (so the mixin must resolve the scope): the plain sum of the rows."""

    def direction(self, batch: JacobianBatch) -> Tensor:
        return batch.jacobian.sum(dim=0)


DATA = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
BATCH = 8


def loader() -> DataLoader:
    return DataLoader(TensorDataset(DATA), batch_size=BATCH, shuffle=False)


def batch_at(index: int) -> Tensor:
    index %= len(DATA) // BATCH
    return DATA[index * BATCH : (index + 1) * BATCH]


def fit(model: pl.LightningModule, **kwargs: Any) -> pl.Trainer:
    # Lightning's default log cadence (50), which the non-finite check follows by default.
    run = make_trainer(**{"max_steps": 1, "log_every_n_steps": 50, **kwargs})
    run.fit(model, loader())
    return run


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def fresh_copy(state: Mapping[str, Tensor]) -> TinyModule:
    """An independent module with the given parameters, for gradients taken by hand."""
    reference = TinyModule()
    reference.load_state_dict(state, strict=False)
    return reference


def hand_gradient(
    state: Mapping[str, Tensor], x: Tensor, weights: Mapping[str, float]
) -> dict[str, Tensor]:
    """Plain autograd of ``Σ weight · loss`` (the losses of :func:`two_objectives`) on a copy of
    the model with parameters ``state``."""
    reference = fresh_copy(state)
    losses = two_objectives(reference, x, 0)
    total = sum(weight * losses[name] for name, weight in weights.items())
    named = dict(reference.named_parameters())
    grads = torch.autograd.grad(total, list(named.values()), allow_unused=True)
    return {
        name: g if g is not None else torch.zeros_like(p)
        for (name, p), g in zip(named.items(), grads, strict=True)
    }


def global_norm(tensors: Mapping[str, Tensor]) -> float:
    return math.sqrt(sum(float(t.pow(2).sum()) for t in tensors.values()))


# --- 1. bad input, each with a clear message --------------------------------------------------


@pytest.mark.parametrize(
    ("groups", "error", "message"),
    [
        (
            {"s": {"cls": 1.0}, "u": {"rep": 1.0, "supcon": 1.0}},
            ValueError,
            r"groups name unknown objectives \['supcon'\]; compute_objectives returned "
            r"\['cls', 'rep'\]",
        ),
        (
            {"s": {"cls": 1.0}},
            ValueError,
            r"objectives \['rep'\] belong to no group",
        ),
        ({}, ValueError, r"groups is empty"),
        ({"s": {"cls": 1.0}, "u": {}}, ValueError, r"group 'u' has no losses"),
        (
            {"s": {"cls": 1.0}, "u": {"rep": float("nan")}},
            ValueError,
            r"weight of 'rep' in group 'u' must be finite",
        ),
    ],
    ids=["unknown-name", "ungrouped", "empty", "empty-group", "nan-weight"],
)
def test_bad_groups_are_named(groups: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        fit(TinyModule(groups=groups))


def empty(module: TinyModule, x: Tensor, batch_idx: int) -> dict[str, Tensor]:
    return {}


def vector_cls(module: TinyModule, x: Tensor, batch_idx: int) -> dict[str, Tensor]:
    z = torch.tanh(module.trunk(x))
    return {"cls": module.cls_head(z).pow(2), "rep": module.rep_head(z).mean()}


def float_rep(module: TinyModule, x: Tensor, batch_idx: int) -> dict[str, Any]:
    return {"cls": module.cls_head(torch.tanh(module.trunk(x))).mean(), "rep": 1.5}


def detached_rep(module: TinyModule, x: Tensor, batch_idx: int) -> dict[str, Tensor]:
    losses = two_objectives(module, x, batch_idx)
    return {"cls": losses["cls"], "rep": losses["rep"].detach()}


def a_list(module: TinyModule, x: Tensor, batch_idx: int) -> list[Tensor]:
    return list(two_objectives(module, x, batch_idx).values())


@pytest.mark.parametrize(
    ("objectives", "error", "message"),
    [
        (empty, ValueError, r"compute_objectives returned no objectives"),
        (vector_cls, ValueError, r"objective 'cls' must be a scalar; got shape \(8, 1\)"),
        (float_rep, TypeError, r"objective 'rep' must be a tensor; got float"),
        (detached_rep, ValueError, r"objective 'rep' does not require grad"),
        (a_list, TypeError, r"must return a mapping of objective name to scalar loss.*got list"),
    ],
    ids=["empty", "non-scalar", "non-tensor", "no-grad", "not-a-mapping"],
)
def test_bad_objectives_are_named(objectives: ObjectiveFn, error: type, message: str) -> None:
    model = TinyModule(objectives=objectives)
    before = snapshot(model)
    with pytest.raises(error, match=message):
        fit(model)
    after = snapshot(model)
    assert all(torch.equal(before[name], after[name]) for name in before)


def nan_cls_on(batches: set[int]) -> ObjectiveFn:
    def objectives(module: TinyModule, x: Tensor, batch_idx: int) -> dict[str, Tensor]:
        losses = two_objectives(module, x, batch_idx)
        if batch_idx in batches:
            losses["cls"] = losses["cls"] * float("nan")
        return losses

    return objectives


def test_nan_objective_raises_naming_it() -> None:
    model = TinyModule(objectives=nan_cls_on({0}), nonfinite="raise")
    with pytest.raises(
        NonFiniteObjectiveError, match=r"objective\(s\) \['cls'\] not finite at step 0"
    ):
        fit(model, max_steps=2)
    assert issubclass(NonFiniteObjectiveError, FloatingPointError)


def test_nan_objective_raises_on_the_step_it_occurs_whatever_the_log_cadence() -> None:
    model = TinyModule(objectives=nan_cls_on({3}), nonfinite="raise")
    with pytest.raises(NonFiniteObjectiveError, match=r"\['cls'\] not finite at step 3"):
        fit(model, max_steps=5, log_every_n_steps=50)


class ParameterRecorder(pl.Callback):
    """Parameters at the start and end of every training batch, keyed by batch index."""

    def __init__(self) -> None:
        self.start: dict[int, dict[str, Tensor]] = {}
        self.end: dict[int, dict[str, Tensor]] = {}

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        self.start[idx] = snapshot(pl_module)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, out: Any, batch: Any, idx: int
    ) -> None:
        self.end[idx] = snapshot(pl_module)


def test_nan_objective_with_skip_warns_and_leaves_the_parameters_alone() -> None:
    model = TinyModule(objectives=nan_cls_on({1}), nonfinite="skip", lr=0.1)
    recorder = ParameterRecorder()
    with pytest.warns(UserWarning, match=r"objective\(s\) \['cls'\] not finite at step 1.*skipped"):
        run = fit(model, max_steps=3, callbacks=[recorder])
    # Batches 0, 2, 3 stepped; batch 1 was skipped and did not count as an optimizer step.
    assert run.global_step == 3
    assert sorted(recorder.start) == [0, 1, 2, 3]
    for name in recorder.start[1]:
        assert torch.equal(recorder.start[1][name], recorder.end[1][name])
    for idx in (0, 2, 3):
        expected = hand_gradient(recorder.start[idx], batch_at(idx), {"cls": 1.0, "rep": 1.0})
        for name, before in recorder.start[idx].items():
            torch.testing.assert_close(
                recorder.end[idx][name], before - 0.1 * expected[name], rtol=1e-5, atol=1e-6
            )
        assert not torch.equal(
            recorder.start[idx]["trunk.weight"], recorder.end[idx]["trunk.weight"]
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 1.5}, r"alpha_max must lie in \[0, 1\]; got 1.5"),
        ({"alpha": -0.2}, r"alpha_max must lie in \[0, 1\]; got -0.2"),
        ({"alpha_max": 1.01, "alpha_min": 0.2}, r"alpha_max must lie in \[0, 1\]; got 1.01"),
        ({"alpha_max": 0.5, "alpha_min": -0.1}, r"alpha_min must lie in \[0, 1\]; got -0.1"),
        (
            {"alpha_max": 0.3, "alpha_min": 0.4},
            r"alpha_min \(0.4\) must not exceed alpha_max \(0.3\)",
        ),
        ({"supervised": "cls", "representation": "cls"}, r"must name different objectives"),
        ({"total": 0}, r"total must be a positive number of steps; got 0"),
        ({"unit": "batch"}, r"unit must be 'step' or 'epoch'; got 'batch'"),
    ],
)
def test_pgi_rejects_bad_arguments_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PGI(**kwargs)


def ce_and_rep(module: TinyModule, x: Tensor, batch_idx: int) -> dict[str, Tensor]:
    losses = two_objectives(module, x, batch_idx)
    return {"ce": losses["cls"], "rep": losses["rep"]}


@pytest.mark.parametrize(
    ("pgi", "objectives", "groups", "got"),
    [
        (PGI(alpha=0.3), ce_and_rep, None, r"\['ce', 'rep'\]"),
        (
            PGI(alpha=0.3, supervised="s", representation="u"),
            two_objectives,
            None,
            r"\['cls', 'rep'\]",
        ),
        (PGI(alpha=0.3), two_objectives, {"cls": {"cls": 1.0, "rep": 1.0}}, r"\['cls'\]"),
    ],
    ids=["loss-name", "pgi-names", "one-group"],
)
def test_pgi_with_mismatched_objective_names(
    pgi: PGI, objectives: ObjectiveFn, groups: dict | None, got: str
) -> None:
    model = TinyModule(strategy=pgi, objectives=objectives, groups=groups)
    with pytest.raises(ValueError, match=rf"PGI combines exactly two objectives.*got {got}"):
        fit(model)


def disjoint(module: TinyModule, x: Tensor, batch_idx: int) -> dict[str, Tensor]:
    features = torch.cat([x, x], dim=1)  # 8 features that bypass the trunk
    return {
        "cls": module.cls_head(features).pow(2).mean(),
        "rep": module.rep_head(features).pow(2).mean(),
    }


@pytest.mark.parametrize(
    ("scope", "objectives", "message"),
    [
        (["activation"], two_objectives, r"the scope \['activation'\] has no trainable parameter"),
        (["trunk", "neck"], two_objectives, r"unknown submodule\(s\) \['neck'\] in the scope"),
        (
            "shared",
            disjoint,
            r"no parameter is shared by more than one of the objectives \['cls', 'rep'\]",
        ),
    ],
    ids=["no-parameters", "unknown-submodule", "nothing-shared"],
)
def test_bad_scope_is_reported_for_a_jacobian_strategy(
    scope: Any, objectives: ObjectiveFn, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fit(TinyModule(strategy=SumOfRows(), scope=scope, objectives=objectives))


@pytest.mark.parametrize(
    ("scope", "objectives", "message"),
    [
        (["trunk", "neck"], two_objectives, r"unknown submodule\(s\) \['neck'\] in the scope"),
        (["activation"], two_objectives, r"the scope \['activation'\] has no trainable parameter"),
    ],
    ids=["unknown-submodule", "no-parameters"],
)
def test_bad_scope_is_reported_when_the_angle_logger_needs_it(
    scope: Any, objectives: ObjectiveFn, message: str
) -> None:
    model = TinyModule(strategy=LinearScalarization(), scope=scope, objectives=objectives)
    with pytest.raises(ValueError, match=message):
        fit(model, callbacks=[GradientAngleLogger(every_n_steps=1, heatmap=False)])


def test_unknown_scope_submodule_is_reported_for_a_loss_only_strategy() -> None:
    with pytest.raises(ValueError, match=r"unknown submodule\(s\) \['neck'\]"):
        fit(TinyModule(strategy=LinearScalarization(), scope=["trunk", "neck"]))


def test_two_optimizers_are_rejected() -> None:
    def two(module: TinyModule) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.SGD(module.trunk.parameters(), lr=0.1),
            torch.optim.SGD([*module.cls_head.parameters(), *module.rep_head.parameters()], lr=0.1),
        ]

    with pytest.raises(
        ValueError,
        match=r"steps exactly one optimizer; configure_optimizers "
        r"returned 2",
    ):
        fit(TinyModule(optimizers=two))


def test_automatic_optimization_cannot_be_switched_on() -> None:
    class Automatic(TinyModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = True

    with pytest.raises(ValueError, match=r"needs manual optimisation"):
        Automatic()

    class Manual(TinyModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    assert Manual().automatic_optimization is False


def test_lightning_module_listed_before_the_mixin_fails_at_class_creation() -> None:
    with pytest.raises(TypeError, match=r"Wrong lists LightningModule before MultiObjectiveMixin"):

        class Wrong(pl.LightningModule, MultiObjectiveMixin):
            pass


@pytest.mark.parametrize(
    ("strategy", "got"),
    [
        ("pgi", "str"),
        (torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1), "SGD"),
        (None, "NoneType"),
    ],
)
def test_configure_balancing_rejects_a_non_strategy(strategy: Any, got: str) -> None:
    module = TinyModule()
    with pytest.raises(
        TypeError, match=rf"strategy must be a GradientBalancingStrategy; got {got}"
    ):
        module.configure_balancing(strategy)


def test_configure_balancing_asks_for_an_instance_when_given_the_class() -> None:
    with pytest.raises(TypeError, match=r"got the class PGI: pass PGI\(\.\.\.\)"):
        TinyModule().configure_balancing(PGI)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_configure_balancing_rejects_a_bad_gradient_clip_val(value: float) -> None:
    with pytest.raises(ValueError, match=rf"gradient_clip_val must be positive; got {value}"):
        TinyModule(gradient_clip_val=value)


def test_configure_balancing_rejects_other_bad_options() -> None:
    with pytest.raises(ValueError, match=r"gradient_clip_algorithm must be 'norm' or 'value'"):
        TinyModule(gradient_clip_val=1.0, gradient_clip_algorithm="l1")
    with pytest.raises(ValueError, match=r"nonfinite must be 'raise' or 'skip'; got 'ignore'"):
        TinyModule(nonfinite="ignore")
    with pytest.raises(ValueError, match=r"max_consecutive_skips must be a positive integer"):
        TinyModule(max_consecutive_skips=0)
    with pytest.raises(ValueError, match=r"scope names no submodule"):
        TinyModule(scope=[])


@pytest.mark.parametrize(
    "kwargs", [{"warmup_epochs": 1, "warmup_steps": 5}, {}], ids=["both", "neither"]
)
def test_warmup_needs_exactly_one_length(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=r"give exactly one of warmup_epochs and warmup_steps"):
        WarmupThenSwitch(**kwargs)


def test_warmup_rejects_a_plain_lightning_module() -> None:
    class Plain(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Plain()
    before = snapshot(model)
    with pytest.raises(
        TypeError,
        match=r"WarmupThenSwitch needs a module that uses "
        r"lightning_mtl.MultiObjectiveMixin; got Plain",
    ):
        fit(model, callbacks=[WarmupThenSwitch(warmup_steps=1)])
    assert torch.equal(before["layer.weight"], model.layer.weight)


@pytest.mark.parametrize("every", [0, -3])
def test_angle_logger_needs_a_positive_cadence(every: int) -> None:
    with pytest.raises(ValueError, match=rf"every_n_steps must be a positive integer; got {every}"):
        GradientAngleLogger(every_n_steps=every)


# --- 2. objective groups ----------------------------------------------------------------------


def three_losses(module: TinyModule, x: Tensor, batch_idx: int) -> dict[str, Tensor]:
    z = torch.tanh(module.trunk(x))
    return {
        "ce": module.cls_head(z).pow(2).mean(),
        "a": (module.rep_head(z) - 1.0).pow(2).mean(),
        "b": z.pow(2).mean() + module.cls_head.bias.pow(2).sum(),
    }


class _LoggedKeys(pl.Callback):
    """The metric names known after each training batch."""

    def __init__(self) -> None:
        self.keys: list[set[str]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.keys.append(set(trainer.callback_metrics))


def test_objectives_are_logged_on_the_trainers_log_cadence_and_the_total_every_step() -> None:
    model = TinyModule(
        objectives=three_losses, groups={"s": {"ce": 0.5}, "u": {"a": 1.0, "b": 1.0}}
    )
    keys = _LoggedKeys()
    fit(model, max_steps=4, log_every_n_steps=2, callbacks=[keys])
    per_objective = {"train/ce", "train/a", "train/b", "train/s", "train/u"}
    assert "train/loss" in keys.keys[0] and not per_objective & keys.keys[0]  # step 1 of 2
    assert per_objective <= keys.keys[1]  # step 2: the Trainer writes logs


def test_strategy_values_are_logged_on_the_trainers_log_cadence() -> None:
    model = TinyModule(strategy=PGI(alpha=0.3))
    keys = _LoggedKeys()
    fit(model, max_steps=4, log_every_n_steps=2, callbacks=[keys])
    assert "balancing/alpha" not in keys.keys[0] and "balancing/alpha" in keys.keys[1]


def test_groups_step_is_the_gradient_of_the_weighted_sum() -> None:
    model = TinyModule(
        objectives=three_losses,
        lr=1.0,
        groups={"s": {"ce": 0.5}, "u": {"a": 1.0, "b": 2.0}},
    )
    initial = snapshot(model)
    run = fit(model, max_steps=1, log_every_n_steps=1)

    reference = fresh_copy(initial)
    losses = three_losses(reference, batch_at(0), 0)
    total = 0.5 * losses["ce"] + losses["a"] + 2.0 * losses["b"]
    named = dict(reference.named_parameters())
    grads = dict(zip(named, torch.autograd.grad(total, list(named.values())), strict=True))
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(
            parameter.detach() - initial[name], -grads[name], rtol=1e-5, atol=1e-6
        )
    logged = run.callback_metrics
    losses = {name: loss.detach() for name, loss in losses.items()}
    total = total.detach()
    assert float(logged["train/s"]) == pytest.approx(0.5 * float(losses["ce"]), rel=1e-6)
    assert float(logged["train/u"]) == pytest.approx(
        float(losses["a"]) + 2.0 * float(losses["b"]), rel=1e-6
    )
    assert float(logged["train/b"]) == pytest.approx(float(losses["b"]), rel=1e-6)
    assert float(logged["train/loss"]) == pytest.approx(float(total), rel=1e-6)


# --- 3. LR schedulers under manual optimisation -----------------------------------------------


class LearningRateRecorder(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])


def step_lr(interval: str, frequency: int) -> Callable[[TinyModule], Any]:
    def configure(module: TinyModule) -> dict[str, Any]:
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval, "frequency": frequency},
        }

    return configure


@pytest.mark.parametrize("max_steps", [5, 6])
def test_step_scheduler_with_frequency_two_halves_after_every_second_step(max_steps: int) -> None:
    recorder = LearningRateRecorder()
    run = fit(TinyModule(optimizers=step_lr("step", 2)), max_steps=max_steps, callbacks=[recorder])
    # Before step k (0-based), k steps are done and the LR was halved after steps 2, 4, ...
    assert recorder.seen == pytest.approx([0.1 * 0.5 ** (k // 2) for k in range(max_steps)])
    assert run.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** (max_steps // 2))


@pytest.mark.parametrize(("frequency", "max_epochs"), [(1, 3), (2, 4)])
def test_epoch_scheduler_halves_once_per_frequency_epochs(frequency: int, max_epochs: int) -> None:
    recorder = LearningRateRecorder()
    run = fit(
        TinyModule(optimizers=step_lr("epoch", frequency)),
        max_steps=-1,
        max_epochs=max_epochs,
        callbacks=[recorder],
    )
    per_epoch = len(DATA) // BATCH
    assert run.global_step == per_epoch * max_epochs
    expected = [0.1 * 0.5 ** ((k // per_epoch) // frequency) for k in range(per_epoch * max_epochs)]
    assert recorder.seen == pytest.approx(expected)
    final = 0.1 * 0.5 ** (max_epochs // frequency)
    assert run.optimizers[0].param_groups[0]["lr"] == pytest.approx(final)


def plateau(module: TinyModule) -> dict[str, Any]:
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": "constant"},
    }


def logs_a_constant(module: TinyModule, x: Tensor, batch_idx: int) -> dict[str, Tensor]:
    module.log("constant", 1.0)
    return two_objectives(module, x, batch_idx)


def test_plateau_scheduler_without_a_named_metric_is_reported() -> None:
    model = TinyModule(optimizers=plateau, objectives=logs_a_constant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match="lr_scheduler_monitor"):
            fit(model, max_steps=-1, max_epochs=3)


def test_plateau_scheduler_reads_its_monitored_metric() -> None:
    model = TinyModule(
        optimizers=plateau, objectives=logs_a_constant, lr_scheduler_monitor="constant"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run = fit(model, max_steps=-1, max_epochs=3)
    # A constant metric: epoch 1 sets the best value, epochs 2 and 3 do not improve on it.
    assert run.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)


# --- 4. gradient clipping ---------------------------------------------------------------------


def large_objectives(module: TinyModule, x: Tensor, batch_idx: int) -> dict[str, Tensor]:
    losses = two_objectives(module, x, batch_idx)
    return {"cls": 10.0 * losses["cls"], "rep": 10.0 * losses["rep"]}


def test_gradient_clipping_by_norm_scales_the_step_to_the_clip_value() -> None:
    clip = 0.05
    model = TinyModule(objectives=large_objectives, lr=1.0, gradient_clip_val=clip)
    initial = snapshot(model)
    fit(model, max_steps=1)

    unclipped = hand_gradient(initial, batch_at(0), {"cls": 10.0, "rep": 10.0})
    norm = global_norm(unclipped)
    assert norm > 10 * clip  # so clipping is active
    change = {name: p.detach() - initial[name] for name, p in model.named_parameters()}
    assert global_norm(change) == pytest.approx(clip, abs=1e-5)
    for name, delta in change.items():  # same direction as the unclipped gradient
        torch.testing.assert_close(delta, -unclipped[name] * clip / norm, rtol=1e-4, atol=1e-7)


def test_gradient_clipping_by_value_clamps_each_entry() -> None:
    clip = 0.05
    model = TinyModule(
        objectives=large_objectives, lr=1.0, gradient_clip_val=clip, gradient_clip_algorithm="value"
    )
    initial = snapshot(model)
    fit(model, max_steps=1)
    unclipped = hand_gradient(initial, batch_at(0), {"cls": 10.0, "rep": 10.0})
    assert max(float(g.abs().max()) for g in unclipped.values()) > clip
    for name, parameter in model.named_parameters():
        expected = -unclipped[name].clamp(-clip, clip)
        torch.testing.assert_close(
            parameter.detach() - initial[name], expected, rtol=1e-5, atol=1e-7
        )


def test_no_clipping_when_the_gradient_is_within_the_clip_value() -> None:
    model = TinyModule(lr=1.0, gradient_clip_val=1e3)
    initial = snapshot(model)
    fit(model, max_steps=1)
    unclipped = hand_gradient(initial, batch_at(0), {"cls": 1.0, "rep": 1.0})
    assert global_norm(unclipped) < 1e3
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(
            parameter.detach() - initial[name], -unclipped[name], rtol=1e-5, atol=1e-7
        )


# --- 5. warm-up, then PGI ---------------------------------------------------------------------


class StepRecorder(pl.Callback):
    """Parameters at each batch start and the gradients the optimizer is about to apply."""

    def __init__(self) -> None:
        self.params: list[dict[str, Tensor]] = []
        self.grads: list[dict[str, Tensor]] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        self.params.append(snapshot(pl_module))

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.grads.append(
            {name: p.grad.detach().clone() for name, p in pl_module.named_parameters()}
        )


def test_warmup_then_pgi_uses_the_hand_computed_alphas() -> None:
    pgi = PGI(alpha_max=0.9, alpha_min=0.1, total=4, unit="step")
    model = TinyModule(strategy=pgi, lr=0.1)
    warmup = WarmupThenSwitch(warmup_steps=2)
    recorder = StepRecorder()
    run = fit(model, max_steps=4, log_every_n_steps=1, callbacks=[warmup, recorder])

    alpha_3 = 0.1 + 0.5 * 0.8 * (1.0 + math.cos(math.pi / 4))  # t = 1, T = 4
    weights = [(1.0, 1.0), (1.0, 1.0), (0.9, 0.1), (alpha_3, 1.0 - alpha_3)]
    assert len(recorder.grads) == len(recorder.params) == 4
    for step, (w_cls, w_rep) in enumerate(weights):
        expected = hand_gradient(
            recorder.params[step],
            batch_at(step),
            {"cls": w_cls, "rep": w_rep},
        )
        for name, grad in recorder.grads[step].items():
            torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-7)
    # The steps really differ from the plain sum after the switch.
    plain = hand_gradient(recorder.params[3], batch_at(3), {"cls": 1.0, "rep": 1.0})
    assert not torch.allclose(recorder.grads[3]["trunk.weight"], plain["trunk.weight"])

    assert warmup.switched_at_step == 2
    assert warmup.switched_at_epoch == 0
    assert pgi.start == 2
    assert float(run.callback_metrics["balancing/alpha"]) == pytest.approx(alpha_3, rel=1e-6)
    assert float(run.callback_metrics["balancing/warmup"]) == 0.0
    assert model.balancing_override is None
