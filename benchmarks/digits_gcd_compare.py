"""Embedded digits GCD: All / Old / New for SimGCD, + PGI, + PGI + SwAV and + EAGC, and the
mean classification-vs-representation gradient angle (issue 5, item 7; the PGI paper's table 4).

Every variant is the bundled recipe ``digits_gcd_pgi`` (or ``digits_gcd_eagc``) run
through the package's CLI with a few overrides, so what is measured is what a user runs:

* ``simgcd``: the plain sum of the SimGCD losses (``LinearScalarization``), no SwAV;
* ``pgi``: PGI (α 0.5 → 0.35) after 2 plain epochs, no SwAV;
* ``pgi_swav``: the recipe as shipped (PGI + SwAV on the labeled rows);
* ``eagc``: ``digits_gcd_eagc`` (plain sum + EAGC's AGA and EEP);
* ``pgi_swav_unlabeled``, ``pgi_swav_all``: ``pgi_swav`` with the SwAV terms on the unlabeled
  rows or on all rows (the PGI paper's table 6 mask ablation; not run by default);
* ``pgi_swav_separate``: ``pgi_swav`` with SwAV on its own prototypes instead of the
  classifier's rows (not run by default);
* ``pgi_constant``: ``pgi`` with the constant α = 0.35 of the PGI paper's implementation details
  instead of the annealed 0.5 → 0.35 (not run by default).

Each run uses ``--seed_everything S`` and seeds the split, the sampler and the augmentation
with ``S``. The scores are the clustering accuracies on the unlabeled training images at the end
of training (``test/all``, ``test/old``, ``test/new``). The angle is the epoch mean of
``angle/cls_vs_rep`` from :class:`~lightning_mtl.callbacks.GradientAngleLogger` (every 5 steps on
the shared parameters), averaged over the epochs after the 2-epoch warm-up, where the variants
differ; ``eagc`` logs none (its recipe has no logger callback).

Usage::

    PYTHONPATH=. python benchmarks/digits_gcd_compare.py --seeds 0 1 2 \
        --out benchmark_results/digits_gcd.md
    PYTHONPATH=. python benchmarks/digits_gcd_compare.py --epochs 2 --seeds 0  # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

from lightning_mtl.callbacks import GradientAngleLogger
from lightning_mtl.cli import run_cli

WARMUP_EPOCHS = 2
ANGLE = "angle/cls_vs_rep"
VARIANTS: dict[str, list[str]] = {
    "simgcd": [
        "--config",
        "digits_gcd_pgi",
        "--model.init_args.strategy",
        "lightning_mtl.strategies.LinearScalarization",
        "--model.init_args.use_swav",
        "false",
    ],
    "pgi": [
        "--config",
        "digits_gcd_pgi",
        "--model.init_args.use_swav",
        "false",
    ],
    "pgi_swav": ["--config", "digits_gcd_pgi"],
    "eagc": ["--config", "digits_gcd_eagc"],
    "pgi_swav_unlabeled": [
        "--config",
        "digits_gcd_pgi",
        "--model.init_args.swav_mask",
        "unlabeled",
    ],
    "pgi_swav_all": [
        "--config",
        "digits_gcd_pgi",
        "--model.init_args.swav_mask",
        "all",
    ],
    "pgi_constant": [
        "--config",
        "digits_gcd_pgi",
        "--model.init_args.use_swav",
        "false",
        "--model.init_args.strategy.init_args.alpha",
        "0.35",
    ],
    "pgi_swav_separate": [
        "--config",
        "digits_gcd_pgi",
        "--model.init_args.swav_prototypes",
        "separate",
    ],
}
DEFAULT_VARIANTS = ("simgcd", "pgi", "pgi_swav", "eagc")


def run(variant: str, seed: int, epochs: int | None) -> dict[str, float]:
    """Fit one variant with one seed; its test metrics, the post-warm-up angle and seconds."""
    args = ["fit", *VARIANTS[variant], "--seed_everything", str(seed), "--trainer.logger", "false"]
    args += ["--data.init_args.seed", str(seed), "--model.init_args.seed", str(seed)]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false"]
    if epochs is not None:
        args += ["--trainer.max_epochs", str(epochs)]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        cli = run_cli(args, save_config_callback=None)
    seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    result = {group: metrics[f"test/{group}"] for group in ("all", "old", "new")}
    result["seconds"] = seconds
    for callback in cli.trainer.callbacks:
        if isinstance(callback, GradientAngleLogger):
            after_warmup = [epoch[ANGLE] for epoch in callback.history[WARMUP_EPOCHS:]]
            if after_warmup:
                result["angle"] = statistics.fmean(after_warmup)
    return result


def _cell(values: list[float], digits: int = 3) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """Markdown: one row per variant, mean ± std over seeds."""
    lines = [
        "| variant | All | Old | New | angle cls~rep (°) | s / run |",
        "|---|---|---|---|---|---|",
    ]
    for variant, runs in results.items():
        cells = [_cell([r[k] for r in runs]) for k in ("all", "old", "new")]
        cells.append(_cell([r["angle"] for r in runs if "angle" in r], 1))
        cells.append(_cell([r["seconds"] for r in runs], 0))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=list(DEFAULT_VARIANTS)
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override max_epochs")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    options = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # the CLI runs below get their arguments from `args`, not argv
    results: dict[str, list[dict[str, float]]] = {}
    for variant in options.variants:
        for seed in options.seeds:
            result = run(variant, seed, options.epochs)
            results.setdefault(variant, []).append(result)
            print(f"{variant} seed {seed}: {result}", file=sys.stderr, flush=True)
    markdown = table(results)
    print(markdown)
    if options.out is not None:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(markdown + "\n")


if __name__ == "__main__":
    main()
