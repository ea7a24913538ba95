"""Compare balancing strategies on the multi-digit recipe: per-task accuracy, Δm%, mean rank.

For every strategy named on the command line, the script trains the model of
the bundled recipe ``multidigits_mtl`` (same hyperparameters, same seeds). It also trains the T
single-task baselines: the same model with ``single_task=k``, one head trained at a time. Then it
prints a markdown table with one row per method: per-task validation accuracy, mean accuracy,
Δm% against the single-task baselines and the mean rank. The same table is written to ``--out``.

With several ``--seeds``, each run uses ``seed_everything(seed)`` and a data module seeded with
``seed`` (split, composites and order). Accuracies are averaged over seeds before Δm% and the
ranks are computed. The ranking includes the single-task row, as in the Nash-MTL and FAMO
tables.

Usage::

    PYTHONPATH=. python benchmarks/multidigits_compare.py                  # default strategies
    PYTHONPATH=. python benchmarks/multidigits_compare.py LinearScalarization MGDA CAGrad \
        --seeds 0 1 2 --out benchmark_results/multidigits_compare.md
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
import yaml

from lightning_mtl.cli import bundled_recipes
from lightning_mtl.strategies import GradientBalancingStrategy
from lightning_mtl.tasks.multitask import delta_m, mean_rank
from lightning_mtl.tasks.multitask.data.multidigits import MultiDigitsDataModule
from lightning_mtl.tasks.multitask.models.multidigits import MultiDigitsModule, task_names

# PGI is not listed: it balances exactly two objectives and this problem has three or more.
DEFAULT_STRATEGIES = ("LinearScalarization", "RGB", "MGDA", "CAGrad", "PCGrad", "NashMTL", "UPGrad")
SINGLE_TASK = "single-task"

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
    path: Path, epochs: int | None, train_size: int | None, scope: str | None
) -> Recipe:
    """The recipe's model and data arguments, without the strategy, with the overrides."""
    config = yaml.safe_load(path.read_text())
    model_args = dict(config["model"].get("init_args", {}))
    model_args.pop("strategy", None)  # each method brings its own
    if scope is not None:
        model_args["scope"] = scope
    data_args = dict(config["data"].get("init_args", {}))
    if train_size is not None:
        data_args["train_size"] = train_size
    max_epochs = epochs if epochs is not None else int(config["trainer"]["max_epochs"])
    return Recipe(model_args, data_args, max_epochs)


def train_once(
    recipe: Recipe,
    strategy: GradientBalancingStrategy | None,
    single_task: int | None,
    seed: int,
    accelerator: str,
) -> tuple[list[float], float]:
    """Fit one model and return its per-task validation accuracies and the seconds it took."""
    pl.seed_everything(seed, verbose=False)
    data = MultiDigitsDataModule(**{**recipe.data_args, "seed": seed})
    model = MultiDigitsModule(**recipe.model_args, strategy=strategy, single_task=single_task)
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
    metrics = trainer.callback_metrics
    accuracies = [float(metrics[f"val/acc_{name}"]) for name in task_names(recipe.num_tasks)]
    return accuracies, seconds


@dataclass
class MethodResult:
    """One row of the table: accuracies per seed (each a list over tasks), or a failure."""

    method: str
    accuracies: list[list[float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    failure: str | None = None

    def mean_per_task(self) -> list[float]:
        return [statistics.fmean(column) for column in zip(*self.accuracies, strict=True)]

    def mean_accuracy_per_seed(self) -> list[float]:
        return [statistics.fmean(row) for row in self.accuracies]


def run_method(
    name: str,
    factory: StrategyFactory,
    recipe: Recipe,
    seeds: Sequence[int],
    accelerator: str,
) -> MethodResult:
    """Train ``name`` once per seed; a failure becomes the row's reason instead of a crash."""
    result = MethodResult(name)
    for seed in seeds:
        try:
            accuracies, seconds = train_once(recipe, factory(), None, seed, accelerator)
        except Exception as error:
            result.failure = f"seed {seed}: {type(error).__name__}: {error}"
            print(f"{name}: failed: {result.failure}", file=sys.stderr, flush=True)
            return result
        result.accuracies.append(accuracies)
        result.seconds.append(seconds)
        print(f"{name} seed {seed}: {_fmt_list(accuracies)} in {seconds:.1f} s", file=sys.stderr)
    return result


def run_single_task(recipe: Recipe, seeds: Sequence[int], accelerator: str) -> MethodResult:
    """The single-task baselines: task k's accuracy from the model trained on task k alone."""
    result = MethodResult(SINGLE_TASK)
    for seed in seeds:
        row, seconds = [], 0.0
        for task in range(recipe.num_tasks):
            accuracies, took = train_once(recipe, None, task, seed, accelerator)
            row.append(accuracies[task])  # the other heads were not trained
            seconds += took
        result.accuracies.append(row)
        result.seconds.append(seconds)
        print(f"{SINGLE_TASK} seed {seed}: {_fmt_list(row)} in {seconds:.1f} s", file=sys.stderr)
    return result


# --- report --------------------------------------------------------------------------------------


def _fmt_list(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{value:.4f}" for value in values) + "]"


def _with_spread(values: Sequence[float]) -> str:
    """``mean`` or, with several seeds, ``mean ± standard deviation``."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}"


def table(results: Sequence[MethodResult], num_tasks: int) -> str:
    """The markdown table: Δm% against the single-task row, mean rank over all rows."""
    names = task_names(num_tasks)
    done = [result for result in results if result.failure is None and result.accuracies]
    by_method = {
        result.method: dict(zip(names, result.mean_per_task(), strict=True)) for result in done
    }
    baselines = by_method.get(SINGLE_TASK)
    ranks = mean_rank(by_method) if by_method else {}
    columns = ["method", *[f"acc {name}" for name in names], "mean acc", "Δm%", "MR", "s/run"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for result in results:
        if result not in done:
            cells = [result.method, f"failed: {result.failure}"] + ["-"] * (len(columns) - 2)
        else:
            per_task = by_method[result.method]
            per_seed_tasks = list(zip(*result.accuracies, strict=True))
            delta = delta_m(per_task, baselines) if baselines is not None else None
            cells = [
                result.method,
                *[_with_spread(values) for values in per_seed_tasks],
                _with_spread(result.mean_accuracy_per_seed()),
                "-" if delta is None else f"{delta:+.2f}",
                f"{ranks[result.method]:.2f}",
                f"{statistics.fmean(result.seconds):.1f}",
            ]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


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
    args: argparse.Namespace,
    recipe: Recipe,
    results: Sequence[MethodResult],
    skipped: dict[str, str],
) -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    model = ", ".join(f"{key}={value}" for key, value in recipe.model_args.items())
    data = ", ".join(f"{key}={value}" for key, value in recipe.data_args.items())
    lines = [
        "# Multi-digit recipe: balancing strategies compared",
        "",
        f"- device: {device}; torch {torch.__version__}, lightning {lightning.__version__}, "
        f"Python {platform.python_version()}",
        f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
        f"- command: `{command}`",
        f"- recipe: {args.recipe.name}, epochs {recipe.epochs}, seeds {list(args.seeds)}; "
        f"model {model}; data {data}",
        "",
        table(results, recipe.num_tasks),
        "",
        "Accuracies: validation accuracy per task after the last epoch, mean ± standard "
        "deviation over seeds. Δm%: mean relative change of the per-task accuracies against the "
        f"`{SINGLE_TASK}` row (each task's head trained alone), in percent, as a drop (the RGB "
        "paper's §3.1): lower is better, negative beats the single-task models. "
        "MR: mean rank over tasks among all rows (1 is best; ties share ranks). s/run: seconds "
        f"to fit one model (for `{SINGLE_TASK}`, all T models).",
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--train-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument(
        "--scope",
        choices=("shared", "representation"),
        default=None,
        help="what gradient-based strategies balance (default: the recipe's, shared)",
    )
    parser.add_argument("--recipe", type=Path, default=bundled_recipes()["multidigits_mtl"])
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmark_results") / "multidigits_compare.md"
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
    recipe = load_recipe(args.recipe, args.epochs, args.train_size, args.scope)
    names = list(dict.fromkeys(args.strategies or DEFAULT_STRATEGIES))
    factories: dict[str, StrategyFactory] = {}
    skipped: dict[str, str] = {}
    for name in names:
        factory, reason = resolve_strategy(name)
        if factory is None:
            skipped[name] = reason
            print(f"{name}: skipped: {reason}", file=sys.stderr, flush=True)
        else:
            factories[name] = factory
    results = [run_single_task(recipe, args.seeds, args.accelerator)]
    results += [
        run_method(name, factory, recipe, args.seeds, args.accelerator)
        for name, factory in factories.items()
    ]
    report = markdown(args, recipe, results, skipped)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(result.failure is None for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
