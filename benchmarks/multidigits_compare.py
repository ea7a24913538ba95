"""Compare balancing strategies on the multi-digit recipe over seeds and learning rates: each
method's rate chosen on the validation split, per-task accuracy, Δm% and mean rank reported on a
separate test split as mean ± 95% interval, and the RGB paper's claim checked seed by seed.

For every strategy named on the command line, the script trains the model of
the ``multidigits_mtl`` recipe (same hyperparameters, same seeds) at every rate of ``--lrs``.
It also trains the T single-task baselines: the same model with ``single_task=k``, one head
trained at a time (one rate for the T models, chosen like a method's). The data module holds out
``--test-size`` test composites drawn from digits apart from the validation ones. A method's rate
is the one with the best validation mean accuracy over the seeds (``seeded_sweep``); at those
rates, Δm% (against the single-task models of the same seed) and the paired differences are
taken seed by seed. The mean rank uses the seed-mean accuracies and includes the single-task
row, as in the Nash-MTL and FAMO tables.

Usage::

    PYTHONPATH=. python benchmarks/multidigits_compare.py                  # default strategies
    PYTHONPATH=. python benchmarks/multidigits_compare.py LinearScalarization MGDA CAGrad \
        --seeds 0 1 2 3 4 --lrs 0.05 0.1 0.2 --out benchmark_results/multidigits
    PYTHONPATH=. python benchmarks/multidigits_compare.py --epochs 1 --train-size 512  # smoke test

Strategy names are classes of ``lightning_mtl.strategies`` (``MGDA``), looked up in the package
and then in its module of the same name (``lightning_mtl.strategies.nash_mtl.NashMTL``), or
dotted class paths (``my_package.MyStrategy``). They are built with default arguments. A name
that cannot be imported or built is skipped, and the script prints the reason.

The model is small: on a CPU shared with other work, ``OMP_NUM_THREADS=1`` is often faster than
the default thread count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import platform
import re
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
import yaml
from seeded_sweep import CLAIM_HEADER, Metrics, Sweep, cell, claim_row, run_sweep, write_report

from lightning_mtl.mixin import NonFiniteObjectiveError
from lightning_mtl.strategies import GradientBalancingStrategy
from lightning_mtl.tasks.multitask import delta_m, mean_rank
from lightning_mtl.tasks.multitask.data.multidigits import MultiDigitsDataModule
from lightning_mtl.tasks.multitask.models.multidigits import MultiDigitsModule, task_names

RECIPE = Path(__file__).resolve().parents[1] / "lightning_mtl" / "recipes" / "multidigits_mtl.yaml"
# PGI is not listed: it balances exactly two objectives and this problem has three or more.
DEFAULT_STRATEGIES = ("LinearScalarization", "RGB", "MGDA", "CAGrad", "PCGrad", "NashMTL", "UPGrad")
SINGLE_TASK = "single-task"
SELECT = "val/acc_mean"

# Lightning's advice that does not apply to a short in-memory benchmark, and a deprecation
# inside the libraries.
_LIGHTNING_NOISE = (
    r".*does not have many workers.*",
    r".*log_every_n_steps.*",
    r".*isinstance\(treespec, LeafSpec\).*",
)

StrategyFactory = Callable[[], GradientBalancingStrategy]


# --- strategies ----------------------------------------------------------------------------------


def _snake_case(name: str) -> str:
    """``NashMTL`` → ``nash_mtl``; ``CAGrad`` → ``cagrad`` (the strategies' file names)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _import_class(name: str) -> tuple[type | None, str]:
    """The class named ``name`` and ``""``, or ``None`` and why it cannot be imported."""
    if "." in name:
        module_name, _, attribute = name.rpartition(".")
        candidates = [module_name]
    else:
        attribute = name
        package = "lightning_mtl.strategies"
        candidates = [package] + [
            f"{package}.{module}" for module in dict.fromkeys([_snake_case(name), name.lower()])
        ]
    misses = []
    for module_name in candidates:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:  # the module exists but imports something missing
                return None, f"importing {module_name} failed: {error}"
            misses.append(f"no module {module_name}")
            continue
        except Exception as error:  # a strategy being written may not import yet
            return None, f"importing {module_name} failed: {type(error).__name__}: {error}"
        found = getattr(module, attribute, None)
        if isinstance(found, type):
            return found, ""
        misses.append(f"no class {attribute} in {module_name}")
    return None, "; ".join(misses)


def resolve_strategy(name: str) -> tuple[StrategyFactory | None, str]:
    """A factory of fresh instances of the strategy ``name``, or ``None`` and the reason."""
    cls, reason = _import_class(name)
    if cls is None:
        return None, reason
    if not issubclass(cls, GradientBalancingStrategy):
        return None, f"{cls.__module__}.{cls.__name__} is not a GradientBalancingStrategy"
    try:
        cls()  # built once here so that a strategy needing arguments is skipped up front
    except Exception as error:
        return None, f"{cls.__name__}() failed: {type(error).__name__}: {error}"
    return cls, ""


# --- training ------------------------------------------------------------------------------------


@dataclass
class Recipe:
    """What the script takes from the recipe: the model's and data module's arguments."""

    model_args: dict[str, Any]
    data_args: dict[str, Any]
    epochs: int

    @property
    def num_tasks(self) -> int:
        return int(self.model_args.get("num_tasks", 3))


def load_recipe(
    path: Path, epochs: int | None, train_size: int | None, test_size: int, scope: str | None
) -> Recipe:
    """The recipe's model and data arguments, without the strategy, with the overrides."""
    config = yaml.safe_load(path.read_text())
    model_args = dict(config["model"].get("init_args", {}))
    model_args.pop("strategy", None)  # each method brings its own
    if scope is not None:
        model_args["scope"] = scope
    data_args = dict(config["data"].get("init_args", {}))
    data_args["test_size"] = test_size
    if train_size is not None:
        data_args["train_size"] = train_size
    max_epochs = epochs if epochs is not None else int(config["trainer"]["max_epochs"])
    return Recipe(model_args, data_args, max_epochs)


def train_once(
    recipe: Recipe,
    strategy: GradientBalancingStrategy | None,
    single_task: int | None,
    seed: int,
    lr: float,
    accelerator: str,
) -> tuple[list[float], list[float], float]:
    """Fit one model; its per-task validation and test accuracies and the seconds it took."""
    pl.seed_everything(seed, verbose=False)
    data = MultiDigitsDataModule(**{**recipe.data_args, "seed": seed})
    model_args = {**recipe.model_args, "lr": lr}
    model = MultiDigitsModule(**model_args, strategy=strategy, single_task=single_task)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=recipe.epochs,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    names = task_names(recipe.num_tasks)
    validation = [float(trainer.callback_metrics[f"val/acc_{name}"]) for name in names]
    trainer.test(model, data, verbose=False)
    test = [float(trainer.callback_metrics[f"test/acc_{name}"]) for name in names]
    return validation, test, seconds


def run_one(
    name: str,
    factory: StrategyFactory | None,
    recipe: Recipe,
    lr: float,
    seed: int,
    accelerator: str,
) -> Metrics:
    """One method at one rate and seed; the single-task row (``factory`` ``None``) trains the
    T one-head models and keeps task k's accuracies from model k."""
    names = task_names(recipe.num_tasks)
    start = time.perf_counter()
    try:
        if factory is not None:
            validation, test, seconds = train_once(recipe, factory(), None, seed, lr, accelerator)
        else:
            validation, test, seconds = [], [], 0.0
            for task in range(recipe.num_tasks):
                val_k, test_k, took = train_once(recipe, None, task, seed, lr, accelerator)
                validation.append(val_k[task])  # the other heads were not trained
                test.append(test_k[task])
                seconds += took
    except NonFiniteObjectiveError:
        return {"diverged": 1.0, "seconds": time.perf_counter() - start}
    metrics: Metrics = {SELECT: statistics.fmean(validation), "seconds": seconds}
    metrics.update({f"acc_{n}": value for n, value in zip(names, test, strict=True)})
    metrics["acc_mean"] = statistics.fmean(test)
    return metrics


# --- report --------------------------------------------------------------------------------------


def add_delta_m(sweep: Sweep, names: Sequence[str]) -> None:
    """Give every run at a method's chosen rate its Δm% against the single-task models of the
    same seed at theirs."""
    baselines = sweep.chosen(SINGLE_TASK, SELECT)
    for method in sweep.runs:
        for seed, run in sweep.chosen(method, SELECT).items():
            if seed in baselines:
                mine = {n: run[f"acc_{n}"] for n in names}
                theirs = {n: baselines[seed][f"acc_{n}"] for n in names}
                run["delta_m"] = delta_m(mine, theirs)


def table(sweep: Sweep, names: Sequence[str]) -> str:
    """Markdown: per-task test accuracy, mean accuracy, Δm% and MR at the chosen rates."""
    means = {
        method: {n: statistics.fmean(sweep.values(method, f"acc_{n}", SELECT)) for n in names}
        for method in sweep.runs
    }
    ranks = mean_rank(means)
    columns = ["method", "lr", *[f"acc {n}" for n in names], "mean acc", "Δm%", "MR", "s/run"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for method in sweep.runs:
        cells = [method, f"{sweep.chosen_lr(method, SELECT):g}"]
        cells += [cell(sweep.values(method, f"acc_{n}", SELECT), 4) for n in names]
        cells.append(cell(sweep.values(method, "acc_mean", SELECT), 4))
        cells.append(cell(sweep.values(method, "delta_m", SELECT), 2))
        cells += [f"{ranks[method]:.2f}", cell(sweep.values(method, "seconds", SELECT), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims(sweep: Sweep) -> str:
    """The RGB paper's claim (its tables: the best Δm% of the methods compared) against each
    method run here, on the seed-by-seed Δm% differences (negative: RGB better)."""
    rows = [CLAIM_HEADER]
    for other in sweep.runs:
        if "RGB" in sweep.runs and other not in ("RGB", SINGLE_TASK):
            claim = "RGB has a lower Δm% (RGB paper, tables 2 and 3)"
            rows.append(claim_row(sweep, claim, "RGB", other, "delta_m", SELECT, -1, 2))
    return "\n".join(rows) if len(rows) > 1 else ""


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(
    args: argparse.Namespace, recipe: Recipe, sweep: Sweep, skipped: dict[str, str]
) -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    model = ", ".join(f"{key}={value}" for key, value in recipe.model_args.items())
    data = ", ".join(f"{key}={value}" for key, value in recipe.data_args.items())
    names = task_names(recipe.num_tasks)
    lines = [
        "# Multi-digit recipe: balancing strategies compared",
        "",
        f"- device: {device}; torch {torch.__version__}, lightning {lightning.__version__}, "
        f"Python {platform.python_version()}",
        f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
        f"- command: `{command}`",
        f"- recipe: {args.recipe.name}, epochs {recipe.epochs}, seeds {list(args.seeds)}, rates "
        f"{list(args.lrs)}; model {model}; data {data}",
        "",
        f"Validation mean accuracy ({SELECT}) by rate:",
        "",
        sweep.selection_table(SELECT, digits=4),
        "",
        table(sweep, names),
        "",
        "Accuracies: test accuracy per task after the last epoch, at the method's chosen rate, "
        "mean ± 95% t interval over seeds. Δm%: mean relative change of the per-task accuracies "
        f"against the `{SINGLE_TASK}` row of the same seed, in percent, as a drop (the RGB "
        "paper's §3.1): lower is better, negative beats the single-task models. "
        "MR: mean rank over tasks among all rows (1 is best; ties share ranks). s/run: seconds "
        f"to fit one model (for `{SINGLE_TASK}`, all T models).",
        "",
        claims(sweep),
    ]
    if skipped:
        lines += ["", "Skipped:", ""]
        lines += [f"- {name}: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "strategies",
        nargs="*",
        help="strategy class names or dotted paths (default: LinearScalarization and those of "
        f"{', '.join(DEFAULT_STRATEGIES[1:])} that import)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--train-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--test-size", type=int, default=600, help="test composites")
    parser.add_argument(
        "--scope",
        choices=("shared", "representation"),
        default=None,
        help="what gradient-based strategies balance (default: the recipe's, shared)",
    )
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmark_results") / "multidigits_compare",
        help="write <out>.md and <out>.json",
    )
    parser.add_argument("--resume", action="store_true", help="skip runs already in <out>.json")
    parser.add_argument(
        "--without-single-task",
        action="store_true",
        help="skip the single-task baselines (to extend the grid of some methods only)",
    )
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be positive.")
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        parser.error("--seeds must be distinct non-negative integers.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in _LIGHTNING_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    recipe = load_recipe(args.recipe, args.epochs, args.train_size, args.test_size, args.scope)
    names = list(dict.fromkeys(args.strategies or DEFAULT_STRATEGIES))
    factories: dict[str, StrategyFactory | None] = {}
    if not args.without_single_task:
        factories[SINGLE_TASK] = None
    skipped: dict[str, str] = {}
    for name in names:
        factory, reason = resolve_strategy(name)
        if factory is None:
            skipped[name] = reason
            print(f"{name}: skipped: {reason}", file=sys.stderr, flush=True)
        else:
            factories[name] = factory
    args.variants = list(factories)
    sweep = run_sweep(
        args,
        lambda method, lr, seed: run_one(
            method, factories[method], recipe, lr, seed, args.accelerator
        ),
    )
    if SINGLE_TASK in sweep.runs:
        add_delta_m(sweep, task_names(recipe.num_tasks))
    write_report(args, markdown(args, recipe, sweep, skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
