"""Exactly the documented host reads in a training step, checked on the CPU.

On a GPU a call that reads a value back (or sizes an output by the data) stalls the step until
the device has caught up. ``tests/host_sync.py`` recognises those calls by name, so these tests
hold every strategy's engine step and every embedded recipe's training step to the rule without
a GPU (``tests/test_gpu.py`` checks the same with CUDA's sync-debug mode on a device): the only
read is the mixin's one flag per step that says whether the step was finite (so that no
non-finite value reaches the weights; see ``configure_balancing(nonfinite=...)``), plus, on the
long-tail module, the classes present in the batch. The strategies take their accelerator code
paths here (the ``accelerator_paths`` fixture): on the CPU they may stop their solvers early,
which is a host read by design.
"""

from __future__ import annotations

import pytest
import torch
from helpers import DATA, TinyModule, engine_steps, make_trainer, strategy_catalogue
from host_sync import HostSync, detect_host_syncs, watch_steps
from torch.utils.data import DataLoader, TensorDataset

from lightning_mtl.cli import run_cli

pytestmark = pytest.mark.usefixtures("accelerator_paths", "single_thread")


FINITENESS_READ = ("_local_scalar_dense", "mixin.py")
"""The step's one read: whether its objectives and gradients were finite."""
GRAMIAN_COPY = ("numpy", "strategies/host_solvers.py")
"""A strategy that solves on the host (the default): the one copy of its Gramian."""


def _solves_on_host(strategy: object) -> bool:
    return getattr(getattr(strategy, "inner", strategy), "solve_on", None) == "host"


def _calls(found: list[HostSync]) -> list[str]:
    return [sync.call for sync in found]


def _reads(steps: list[list[HostSync]]) -> list[list[tuple[str, str]]]:
    """``(call, file)`` of every synchronising call, step by step."""
    return [[(sync.call, sync.where.split(":")[0]) for sync in found] for found in steps]


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda x: x.sum().item(), ["_local_scalar_dense"]),
        (lambda x: bool(x.max() > 0), ["_local_scalar_dense"]),
        (lambda x: x.tolist(), ["tolist"]),
        (lambda x: x.cpu(), ["cpu"]),
        (lambda x: x[x > 0], ["index"]),
        (lambda x: x.nonzero(), ["nonzero"]),
        (lambda x: torch.bincount(x.long().abs()), ["bincount"]),
        (lambda x: x.repeat_interleave(x.long().abs()), ["repeat_interleave"]),
        (lambda x: torch.unique(x), ["_unique2"]),
        (lambda x: torch.linalg.eigh(torch.outer(x, x)), ["linalg_eigh", "_linalg_eigh"]),
        (lambda x: torch.linalg.solve(torch.eye(4), x), ["linalg_solve"]),
    ],
)
def test_the_detector_catches_synchronising_calls(call, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    x = torch.tensor([1.0, -2.0, 3.0, 0.5])
    with detect_host_syncs() as found:
        call(x)
    assert _calls(found) == expected


def test_the_detector_lets_device_side_code_through() -> None:
    x = torch.tensor([1.0, -2.0, 3.0, 0.5], requires_grad=True)
    with detect_host_syncs() as found:
        mask = x > 0
        y = torch.where(mask, x, 0.0) + x.masked_fill(~mask, 1.0)
        y = y + x[torch.tensor([0, 2])].sum() + torch.zeros(4).index_add_(0, mask.long(), x)
        y = y.repeat_interleave(2, dim=0, output_size=8)
        y.sum().backward()
    assert found == []


@pytest.mark.parametrize("name", sorted(strategy_catalogue()))
def test_every_strategy_steps_with_only_its_documented_reads(name: str) -> None:
    found: list[HostSync] = []
    strategy = strategy_catalogue()[name]()
    # Only the last step is held to the rule: the first ones may build lazily made state.
    engine_steps(strategy, "cpu", watch_last=lambda: detect_host_syncs(found))
    assert _reads([found]) == [[GRAMIAN_COPY] if _solves_on_host(strategy) else []]


@pytest.mark.parametrize(
    "name", sorted(name for name, make in strategy_catalogue().items() if _solves_on_host(make()))
)
def test_solvers_on_the_device_step_without_host_synchronisation(name: str) -> None:
    found: list[HostSync] = []
    strategy = strategy_catalogue()[name]()
    inner = getattr(strategy, "inner", strategy)
    inner.solve_on = "device"
    engine_steps(strategy, "cpu", watch_last=lambda: detect_host_syncs(found))
    assert found == []


def _fit_recipe(recipe: str, *overrides: str, epochs: int = 3) -> list[list[HostSync]]:
    """Train ``recipe`` for ``epochs`` epochs of 2 batches; the synchronising calls of each step."""
    cli = run_cli(
        [
            *("--config", recipe),
            *("--trainer.logger=false", "--trainer.enable_checkpointing=false"),
            *("--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"),
            *("--trainer.accelerator=cpu", "--trainer.log_every_n_steps=1000"),
            *(f"--trainer.max_epochs={epochs}", "--trainer.limit_train_batches=2"),
            "--trainer.limit_val_batches=0",
            *overrides,
        ],
        save_config_callback=None,
        run=False,
    )
    for callback in cli.trainer.callbacks:
        if hasattr(callback, "warmup_epochs"):
            callback.warmup_epochs = 1  # the strategy itself from the third step on
        if hasattr(callback, "every_n_steps"):
            callback.every_n_steps = 1000  # off the logging cadence (step 0 only)
    steps = watch_steps(cli.model)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert len(steps) == 2 * epochs
    return steps


@pytest.mark.parametrize(
    ("recipe", "overrides"),
    [
        ("digits_pgi", ()),
        ("digits_gcd_pgi", ()),
        ("digits_gcd_pgi", ("--model.swav_mask=unlabeled", "--model.swav_prototypes=separate")),
        ("digits_gcd_eagc", ("--model.reference_epochs=1",)),
        ("multidigits_mtl", ()),
        ("multidigits_mtl", ("--model.strategy=NashMTL",)),
        ("multidigits_mtl", ("--model.strategy=AlignedMTL",)),
        ("multidigits_mtl", ("--model.strategy=GradVac",)),
    ],
    ids=lambda value: value if isinstance(value, str) else "-".join(value).replace("--model.", ""),
)
def test_embedded_recipes_step_without_host_synchronisation(
    recipe: str, overrides: tuple[str, ...]
) -> None:
    steps = _fit_recipe(recipe, *overrides)
    solver = any(name in "".join(overrides) for name in ("NashMTL", "AlignedMTL", "CAGrad"))
    expected = [GRAMIAN_COPY, FINITENESS_READ] if solver else [FINITENESS_READ]
    assert _reads(steps[1:]) == [expected] * (len(steps) - 1)


def test_the_long_tail_step_reads_the_class_counts_once() -> None:
    # The documented exception: the classes present in the batch name the objectives.
    steps = _fit_recipe("digits_lt_plot")
    for reads in _reads(steps[1:]):
        assert reads == [("tolist", "tasks/long_tail/models.py"), GRAMIAN_COPY, FINITENESS_READ]


def test_celeba_and_nyuv2_steps_make_no_host_synchronisation() -> None:
    from lightning_mtl.tasks.multitask import CelebAMultiTask, NYUv2MultiTask

    generator = torch.Generator().manual_seed(0)
    faces = TensorDataset(
        torch.randn(8, 3, 32, 32, generator=generator),
        torch.randint(0, 2, (8, 40), generator=generator).float(),
    )
    rooms = TensorDataset(
        torch.randn(8, 3, 16, 24, generator=generator),
        torch.randint(-1, 13, (8, 16, 24), generator=generator),
        torch.rand(8, 1, 16, 24, generator=generator),
        torch.nn.functional.normalize(torch.randn(8, 3, 16, 24, generator=generator), dim=1),
    )
    for model, data in (
        (CelebAMultiTask(trunk="small", width=4), faces),
        (NYUv2MultiTask(backbone="small", width=4), rooms),
    ):
        steps = watch_steps(model)
        validation_steps = watch_steps(model, "validation_step")
        loader = DataLoader(data, batch_size=4)
        make_trainer(max_steps=3, log_every_n_steps=1000, num_sanity_val_steps=0).fit(
            model, loader, loader
        )
        assert _reads(steps[1:]) == [[FINITENESS_READ]] * 2, type(model).__name__
        # The metrics' updates (confusion matrix, depth and angle errors) stay on the device too.
        assert validation_steps == [[], []], type(model).__name__


@pytest.mark.parametrize(
    ("strategy", "options"),
    [
        ("CAGrad", {}),
        ("UPGrad", {"scope": "representation"}),
        ("PCGrad", {"jacobian_chunk_size": 1}),
        ("MGDA", {"gradient_clip_val": 0.5}),
        ("FAMO", {"gradient_clip_val": 0.5, "gradient_clip_algorithm": "value"}),
    ],
    ids=lambda value: value if isinstance(value, str) else "-".join(value) or "defaults",
)
def test_mixin_options_step_without_host_synchronisation(
    strategy: str, options: dict[str, object]
) -> None:
    module = TinyModule(strategy_catalogue()[strategy]())
    module.configure_balancing(module.balancing_strategy, **options)  # type: ignore[arg-type]
    steps = watch_steps(module)
    make_trainer(max_steps=4, log_every_n_steps=1000).fit(module, DataLoader(DATA, batch_size=8))
    expected = [GRAMIAN_COPY] if _solves_on_host(module.balancing_strategy) else []
    assert _reads(steps[1:]) == [[*expected, FINITENESS_READ]] * 3


def test_gradient_callbacks_make_no_host_synchronisation_in_the_step() -> None:
    from lightning_mtl.callbacks import EquilibriumMonitor, GradientAngleLogger

    module = TinyModule(strategy_catalogue()["RGB"]())
    steps = watch_steps(module)
    callbacks = [GradientAngleLogger(every_n_steps=3), EquilibriumMonitor(every_n_steps=3)]
    trainer = make_trainer(max_steps=6, log_every_n_steps=1000, callbacks=callbacks)
    trainer.fit(module, DataLoader(DATA, batch_size=4))
    # Steps 3 (on the cadence: per-objective gradients, angles, MER terms) and 1, 2, 4, 5 (off).
    assert _reads(steps[1:]) == [[FINITENESS_READ]] * 5
