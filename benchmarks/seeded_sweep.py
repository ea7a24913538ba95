"""Seeds × learning rates, shared by the digits comparisons: each method's learning rate is chosen
on the validation split, the test split is reported as mean ± 95% interval over seeds
(Student's t), and a paper's claim is checked on the seed-by-seed (paired) difference.

A run whose losses became NaN or infinite is recorded as ``{"diverged": 1}``; a rate at which
any seed diverged is not chosen.

A verdict compares a method with its baseline at their chosen rates, on the same seeds: the 95%
t interval of the paired difference lying entirely on the side the paper claims is
``supported``, entirely on the other side ``not supported``, and across zero ``inconclusive``
(at this scale: the difference, if any, is smaller than the seeds resolve).

Example::

    >>> sweep = Sweep()
    >>> for seed, (low, high) in enumerate([(0.80, 0.90), (0.82, 0.91), (0.78, 0.86)]):
    ...     sweep.add("plain", 0.1, seed, {"val": low, "test": low})
    ...     sweep.add("plain", 0.2, seed, {"val": high, "test": high - 0.01})
    >>> sweep.chosen_lr("plain", "val")
    0.2
    >>> [round(v, 2) for v in sweep.values("plain", "test", "val")]
    [0.89, 0.9, 0.85]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

Metrics = dict[str, float]


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` of the two-sided Student's t interval of the mean; the half-width
    is NaN for fewer than two values.

    Example::

        >>> mean, half = t_interval([1.0, 2.0, 3.0])  # s = 1, t(0.975, 2) = 4.303
        >>> mean, round(half, 3)
        (2.0, 2.484)
    """
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    quantile = float(stats.t.ppf(0.5 + confidence / 2, df=len(values) - 1))
    return mean, quantile * statistics.stdev(values) / math.sqrt(len(values))


def cell(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± half-width`` of the 95% t interval (``—`` for no values)."""
    if not values:
        return "—"
    mean, half = t_interval(values)
    if math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def verdict(differences: Sequence[float], direction: int) -> str:
    """``supported`` / ``not supported`` / ``inconclusive`` for the paired differences
    (method − baseline) against the claimed sign ``direction`` (+1: the method is higher)."""
    mean, half = t_interval(differences)
    low, high = sorted((direction * (mean - half), direction * (mean + half)))
    if low > 0:
        return "supported"
    if high < 0:
        return "not supported"
    return "inconclusive"


@dataclass
class Sweep:
    """Metrics by method, learning rate and seed; the rate of a method is chosen by the mean of
    a validation metric over its seeds (higher is better unless ``lower_is_better``)."""

    runs: dict[str, dict[float, dict[int, Metrics]]] = field(default_factory=dict)

    def add(self, method: str, lr: float, seed: int, metrics: Metrics) -> None:
        self.runs.setdefault(method, {}).setdefault(lr, {})[seed] = dict(metrics)

    def chosen_lr(self, method: str, key: str, lower_is_better: bool = False) -> float:
        by_lr = self.runs[method]
        stable = [
            lr for lr, runs in by_lr.items() if not any("diverged" in r for r in runs.values())
        ]
        sign = -1.0 if lower_is_better else 1.0
        return max(
            stable, key=lambda lr: sign * statistics.fmean(r[key] for r in by_lr[lr].values())
        )

    def chosen(self, method: str, key: str, lower_is_better: bool = False) -> dict[int, Metrics]:
        """The runs, by seed, at the method's chosen rate."""
        return self.runs[method][self.chosen_lr(method, key, lower_is_better)]

    def values(
        self, method: str, metric: str, key: str, lower_is_better: bool = False
    ) -> list[float]:
        """``metric`` at the chosen rate, in seed order (runs without it are left out)."""
        runs = self.chosen(method, key, lower_is_better)
        return [runs[seed][metric] for seed in sorted(runs) if metric in runs[seed]]

    def differences(
        self, method: str, baseline: str, metric: str, key: str, lower_is_better: bool = False
    ) -> list[float]:
        """``method − baseline`` seed by seed, each at its chosen rate (shared seeds only)."""
        mine = self.chosen(method, key, lower_is_better)
        theirs = self.chosen(baseline, key, lower_is_better)
        return [mine[s][metric] - theirs[s][metric] for s in sorted(set(mine) & set(theirs))]

    def selection_table(self, key: str, lower_is_better: bool = False, digits: int = 3) -> str:
        """Markdown: the validation mean of every method at every rate, the chosen one in bold."""
        rates = sorted({lr for by_lr in self.runs.values() for lr in by_lr})
        lines = [
            "| method | " + " | ".join(f"lr {lr:g}" for lr in rates) + " |",
            "|---|" + "---|" * len(rates),
        ]
        for method, by_lr in self.runs.items():
            best = self.chosen_lr(method, key, lower_is_better)
            cells = []
            for lr in rates:
                if lr not in by_lr:
                    cells.append("—")
                    continue
                diverged = sum("diverged" in r for r in by_lr[lr].values())
                if diverged:
                    cells.append(f"diverged ({diverged}/{len(by_lr[lr])})")
                    continue
                mean = statistics.fmean(r[key] for r in by_lr[lr].values())
                text = f"{mean:.{digits}f}"
                cells.append(f"**{text}**" if lr == best else text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def save(self, path: Path) -> None:
        """All runs as JSON (rates and seeds as strings)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        plain = {
            method: {str(lr): {str(s): m for s, m in seeds.items()} for lr, seeds in by_lr.items()}
            for method, by_lr in self.runs.items()
        }
        path.write_text(json.dumps(plain, indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Sweep:
        sweep = cls()
        for method, by_lr in json.loads(path.read_text()).items():
            for lr, seeds in by_lr.items():
                for seed, metrics in seeds.items():
                    sweep.add(method, float(lr), int(seed), metrics)
        return sweep


def claim_row(
    sweep: Sweep,
    claim: str,
    method: str,
    baseline: str,
    metric: str,
    key: str,
    direction: int,
    digits: int = 3,
) -> str:
    """A markdown row: the claim, the paired difference ± 95% interval and the verdict."""
    differences = sweep.differences(method, baseline, metric, key)
    return (
        f"| {claim} | {method} − {baseline} | {metric} | {cell(differences, digits)} | "
        f"{verdict(differences, direction)} |"
    )


CLAIM_HEADER = (
    "| claim | difference | metric | mean ± 95% interval (paired, seeds) | verdict |\n"
    "|---|---|---|---|---|"
)


def fit_with_cli(args: Sequence[str]) -> tuple[Metrics, Any]:
    """What ``lightning-mtl fit`` with ``args`` does (quietly: no logger, checkpoint or progress
    bar): fit, then test; the metrics logged at the end of fit (``val/…``) and of the test
    (``test/…``) as floats (``{"diverged": 1}`` when a loss became non-finite), and the
    Trainer."""
    from lightning_mtl.cli import run_cli
    from lightning_mtl.mixin import NonFiniteObjectiveError

    quiet = ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]
    quiet += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    with contextlib.redirect_stdout(io.StringIO()):
        cli = run_cli([*args, *quiet], run=False, save_config_callback=None)
        try:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        except NonFiniteObjectiveError:
            return {"diverged": 1.0}, cli.trainer
        metrics = {key: float(value) for key, value in cli.trainer.callback_metrics.items()}
        cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    metrics.update({key: float(value) for key, value in cli.trainer.callback_metrics.items()})
    return metrics, cli.trainer


def add_sweep_arguments(
    parser: argparse.ArgumentParser,
    variants: Sequence[str],
    default_variants: Sequence[str],
    lrs: Sequence[float],
) -> None:
    """The options every sweep takes: variants, seeds, rates, epochs, output and resume."""
    parser.add_argument(
        "--variants", nargs="+", choices=list(variants), default=list(default_variants)
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--lrs", nargs="+", type=float, default=list(lrs))
    parser.add_argument("--epochs", type=int, default=None, help="override max_epochs")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.json")
    parser.add_argument("--resume", action="store_true", help="skip runs already in <out>.json")


def run_sweep(options: argparse.Namespace, run_one: Callable[[str, float, int], Metrics]) -> Sweep:
    """``run_one(variant, lr, seed)`` over the options' grid, printing each result and saving
    every run to ``<out>.json`` as it ends (with ``--resume``, runs already there are kept)."""
    path = options.out.with_suffix(".json") if options.out is not None else None
    sweep = Sweep.load(path) if options.resume and path is not None and path.exists() else Sweep()
    for variant in options.variants:
        for lr in options.lrs:
            for seed in options.seeds:
                if seed in sweep.runs.get(variant, {}).get(lr, {}):
                    continue
                result = run_one(variant, lr, seed)
                sweep.add(variant, lr, seed, result)
                print(f"{variant} lr {lr:g} seed {seed}: {result}", file=sys.stderr, flush=True)
                if path is not None:
                    sweep.save(path)
    return sweep


def write_report(options: argparse.Namespace, markdown: str) -> None:
    """Print the report and write it to ``<out>.md``."""
    print(markdown)
    if options.out is not None:
        options.out.with_suffix(".md").write_text(markdown)
