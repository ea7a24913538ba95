"""The typed strategy contract (each kind receives exactly its input), sharpness-aware training as
a wrapper, and the gradient-observer contract (observers read gradients without consuming them;
stateful callbacks keep their own state per instance)."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

import pytest
import torch
from helpers import (
    DATA,
    TinyModule,
    flat_params,
    grads_of,
    make_trainer,
    strategy_catalogue,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_mtl.callbacks import EquilibriumMonitor, GradientAngleLogger, WarmupThenSwitch
from lightning_mtl.strategies import (
    MGDA,
    GradientBalancingStrategy,
    GradientSurgery,
    GramianBatch,
    GramianWeighting,
    JacobianBatch,
    JacobianStrategy,
    LinearScalarization,
    LossBatch,
    LossWeighting,
    PCGrad,
    SharpnessAware,
)

KINDS = (LossWeighting, GramianWeighting, JacobianStrategy)


@pytest.mark.parametrize("name", sorted(strategy_catalogue()))
def test_every_strategy_is_of_one_kind_and_repeats_its_arguments(name: str) -> None:
    strategy = strategy_catalogue()[name]()
    inner = strategy.inner if isinstance(strategy, SharpnessAware) else strategy
    assert sum(isinstance(inner, kind) for kind in KINDS) == 1
    init = type(strategy).__init__
    signature = inspect.signature(init).parameters if init is not object.__init__ else {}
    parameters = [p for p in signature if p != "self"]
    if name != "from_torchjd":
        assert list(strategy.hyperparameters()) == parameters
        assert repr(strategy).startswith(f"{type(strategy).__name__}(")


def test_abstract_bases_cannot_be_instantiated() -> None:
    for base in (GradientBalancingStrategy, *KINDS, GradientSurgery):
        with pytest.raises(TypeError, match="abstract"):
            base()  # type: ignore[abstract]


class Recording(GramianWeighting):
    """Keeps what the engine hands it."""

    def __init__(self) -> None:
        self.batches: list[object] = []

    def weights(self, batch: GramianBatch) -> Tensor:
        self.batches.append(batch)
        return torch.full((batch.num_objectives,), 0.5)


class RecordingRows(JacobianStrategy):
    def __init__(self) -> None:
        self.batches: list[object] = []

    def direction(self, batch: JacobianBatch) -> Tensor:
        self.batches.append(batch)
        return batch.jacobian.mean(0)


class RecordingLosses(LossWeighting):
    def __init__(self) -> None:
        self.batches: list[object] = []

    def weights(self, batch: LossBatch) -> Tensor:
        self.batches.append(batch)
        return torch.ones(batch.num_objectives)


@pytest.mark.parametrize(
    ("make", "kind", "field"),
    [
        (Recording, GramianBatch, "gramian"),
        (RecordingRows, JacobianBatch, "jacobian"),
        (RecordingLosses, LossBatch, None),
    ],
)
def test_the_engine_hands_each_kind_exactly_its_input(make, kind, field) -> None:  # type: ignore[no-untyped-def]
    module = TinyModule(make())
    make_trainer(max_steps=1).fit(module, DataLoader(DATA, batch_size=32))
    (batch,) = module.balancing_strategy.batches
    assert type(batch) is kind
    losses = module.net.losses(*DATA.tensors)  # after the step: only the names are compared
    assert batch.names == tuple(losses) and batch.losses.shape == (2,)
    if field is not None:
        other = {"gramian": "jacobian", "jacobian": "gramian"}[field]
        assert not hasattr(batch, other)


def test_aggregate_needs_losses_only_for_strategies_that_read_them() -> None:
    rows = torch.eye(2)
    assert torch.equal(LinearScalarization().aggregate(rows), torch.ones(2))
    with pytest.raises(ValueError, match="reads the objectives' loss values"):
        RecordingLosses().aggregate(rows)
    recorder = Recording()
    recorder.aggregate(rows)
    assert torch.isnan(recorder.batches[0].losses).all()  # placeholders, never read
    assert recorder.last_weights == {"0": torch.tensor(0.5), "1": torch.tensor(0.5)}
    assert set(recorder.log_values()) == {"weight/0", "weight/1"}


def test_sharpness_aware_wraps_any_strategy_by_hand() -> None:
    """SAM around the plain sum on the trunk: the trunk moves by the summed gradient at
    ``θ + ρ g / ‖g‖``; the heads by their gradient at ``θ``."""
    rho = 0.1
    module = TinyModule(SharpnessAware(LinearScalarization(), rho=rho), scope=["net.trunk"])
    initial = copy.deepcopy(module.net)
    make_trainer(max_steps=1).fit(module, DataLoader(DATA, batch_size=32))

    trunk = list(initial.trunk.parameters())
    heads = [*initial.cls_head.parameters(), *initial.rep_head.parameters()]
    total = sum(initial.losses(*DATA.tensors).values())
    g_trunk = grads_of(total, trunk)
    perturbed = copy.deepcopy(initial)
    with torch.no_grad():
        offset = rho * g_trunk / g_trunk.norm()
        start = 0
        for parameter in perturbed.trunk.parameters():
            parameter.add_(offset[start : start + parameter.numel()].view_as(parameter))
            start += parameter.numel()
    at_perturbed = grads_of(
        sum(perturbed.losses(*DATA.tensors).values()), list(perturbed.trunk.parameters())
    )
    expected = torch.cat(
        [
            torch.cat([p.detach().reshape(-1) for p in trunk]) - at_perturbed,
            torch.cat([p.detach().reshape(-1) for p in heads]) - grads_of(total, heads),
        ]
    )
    actual = torch.cat(
        [
            torch.cat([p.detach().reshape(-1) for p in module.net.trunk.parameters()]),
            torch.cat(
                [
                    p.detach().reshape(-1)
                    for p in [*module.net.cls_head.parameters(), *module.net.rep_head.parameters()]
                ]
            ),
        ]
    )
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_sharpness_aware_checks_and_delegates() -> None:
    with pytest.raises(ValueError, match="rho must be positive"):
        SharpnessAware(MGDA(), rho=0.0)
    with pytest.raises(TypeError, match="inner must be"):
        SharpnessAware(SharpnessAware(MGDA()))
    sam = SharpnessAware(MGDA(), rho=0.05, keep=0.5)
    rows = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(sam.aggregate(rows), MGDA().aggregate(rows))
    assert sam.log_values() == sam.inner.log_values() and sam.last_weights
    assert repr(sam) == (
        "SharpnessAware(inner=MGDA(normalization='none', solve_on='host'), rho=0.05, keep=0.5)"
    )


def _logged(callbacks: list) -> dict[str, float]:  # type: ignore[type-arg]
    module = TinyModule(PCGrad())
    make_trainer(max_steps=2, callbacks=callbacks).fit(module, DataLoader(DATA, batch_size=16))
    return {key: float(value) for key, value in module.trainer.callback_metrics.items()}


def test_observers_do_not_consume_each_others_gradients() -> None:
    first = _logged([GradientAngleLogger(1, heatmap=False), EquilibriumMonitor(1)])
    second = _logged([EquilibriumMonitor(1), GradientAngleLogger(1, heatmap=False)])
    assert first.keys() == second.keys()
    assert {key for key in first if key.startswith("mer/")}  # the monitor logged
    assert {key for key in first if key.startswith("angle/")}  # and so did the angle logger
    for key, value in first.items():
        assert second[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_two_instances_of_each_stateful_callback_keep_their_own_state(tmp_path: Path) -> None:
    def run(root: Path, max_epochs: int, ckpt_path: str | None = None):  # type: ignore[no-untyped-def]
        callbacks = [
            GradientAngleLogger(every_n_steps=1, heatmap=False),
            GradientAngleLogger(every_n_steps=1, scope=["net.trunk.0"], heatmap=False),
            WarmupThenSwitch(warmup_epochs=1),
            WarmupThenSwitch(warmup_steps=3),
            ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1),
        ]
        module = TinyModule(MGDA(), lr=0.1)
        trainer = make_trainer(
            max_epochs=max_epochs, enable_checkpointing=True, callbacks=callbacks
        )
        trainer.fit(module, DataLoader(DATA, batch_size=16), ckpt_path=ckpt_path)
        return module, callbacks

    straight, callbacks = run(tmp_path / "a", max_epochs=3)
    keys = [callback.state_key for callback in callbacks[:4]]
    assert len(set(keys)) == 4
    whole, shallow = callbacks[0].history, callbacks[1].history
    assert len(whole) == len(shallow) == 3 and whole != shallow
    assert (callbacks[2].switched_at_step, callbacks[3].switched_at_step) == (2, 3)

    resumed, again = run(tmp_path / "b", 3, str(tmp_path / "a" / "epoch=1-step=4.ckpt"))
    assert [callback.history for callback in again[:2]] == [whole, shallow]
    assert (again[2].switched_at_step, again[3].switched_at_step) == (2, 3)
    torch.testing.assert_close(flat_params(resumed), flat_params(straight), rtol=0, atol=0)


def test_a_skipped_step_leaves_no_gradients_for_observers() -> None:
    module = TinyModule(MGDA())
    module.configure_balancing(MGDA(), nonfinite="skip")
    original = module.compute_objectives

    def poisoned(batch, batch_idx):  # type: ignore[no-untyped-def]
        out = original(batch, batch_idx)
        if batch_idx == 1:
            return {name: loss * float("nan") for name, loss in out.losses.items()}
        return out

    module.compute_objectives = poisoned  # type: ignore[method-assign]
    seen: list[bool] = []

    class Spy(GradientAngleLogger):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            seen.append("shared" in pl_module.objective_gradients)

    with pytest.warns(UserWarning, match="skipped"):
        make_trainer(max_steps=2, callbacks=[Spy(1, heatmap=False)]).fit(
            module, DataLoader(DATA, batch_size=8)
        )
    assert seen[:3] == [True, False, True]
