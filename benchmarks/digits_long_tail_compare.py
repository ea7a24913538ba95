"""Embedded long-tailed digits: base methods with and without PLOT over seeds and learning
rates, each method's rate chosen on the balanced validation split, accuracy (overall, Many,
Medium, Few) reported on a separate balanced test split as mean ± 95% interval, and the PLOT
paper's claim checked seed by seed (see ``seeded_sweep``).

Every variant is the ``digits_lt_plot`` recipe run as ``lightning-mtl fit`` with overrides:
``<base>`` trains on the base loss alone (``LinearScalarization``, no ``TemporalMOO``) and
``<base>+plot`` is the recipe (PLOT for the first E = 3 of 30 epochs) on that base loss. Bases:
cross-entropy (``ce``), Balanced Softmax (``balanced_softmax``), logit adjustment
(``logit_adjusted``). The data: the recipe's long-tailed digits at imbalance 20 with 114 images
in the head class (so that 30 validation and 30 test images of every class fit beside it:
114 … 5 per class, Many > 60, Few < 15 training images).

Usage::

    PYTHONPATH=. python benchmarks/digits_long_tail_compare.py --seeds 0 1 2 3 4 \
        --lrs 0.05 0.1 0.2 0.4 --out benchmark_results/digits_long_tail
    PYTHONPATH=. python benchmarks/digits_long_tail_compare.py --epochs 2 --seeds 0 --lrs 0.1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from seeded_sweep import (
    CLAIM_HEADER,
    Sweep,
    add_sweep_arguments,
    cell,
    claim_row,
    fit_with_cli,
    run_sweep,
    write_report,
)

RECIPE = Path(__file__).resolve().parents[1] / "lightning_mtl" / "recipes" / "digits_lt_plot.yaml"
BASES = ("ce", "balanced_softmax", "logit_adjusted")
DATA = ["--data.init_args.max_per_class", "114", "--data.init_args.test_per_class", "30"]
PLAIN = ["--model.init_args.strategy", "lightning_mtl.strategies.LinearScalarization"]
PLAIN += ["--trainer.callbacks", "[]"]
SELECT = "val/acc"
GROUPS = ("acc", "acc_many", "acc_medium", "acc_few")


def variant_args(variant: str) -> list[str]:
    base, _, plot = variant.partition("+")
    args = ["--config", str(RECIPE), *DATA, "--model.init_args.loss", base]
    return args if plot else [*args, *PLAIN]


def run(variant: str, lr: float, seed: int, epochs: int | None) -> dict[str, float]:
    """Fit one variant at one rate and seed: validation and test accuracies, seconds."""
    args = [*variant_args(variant), "--model.init_args.lr", repr(lr)]
    args += ["--seed_everything", str(seed), "--data.init_args.seed", str(seed)]
    if epochs is not None:
        args += ["--trainer.max_epochs", str(epochs)]
    start = time.perf_counter()
    metrics, _ = fit_with_cli(args)
    if "diverged" in metrics:
        return {**metrics, "seconds": time.perf_counter() - start}
    result = {SELECT: metrics[SELECT], "seconds": time.perf_counter() - start}
    result.update({group: metrics[f"test/{group}"] for group in GROUPS})
    return result


def report(sweep: Sweep, command: str) -> str:
    """Markdown: the rate selection, the test table at the chosen rates, the claims."""
    lines = [f"command: `{command}`", "", f"Validation ({SELECT}) by rate:", ""]
    lines += [sweep.selection_table(SELECT), "", "Test split at each variant's chosen rate:", ""]
    lines += ["| variant | lr | acc | Many | Medium | Few | s / run |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for variant in sweep.runs:
        cells = [cell(sweep.values(variant, key, SELECT)) for key in GROUPS]
        cells.append(cell(sweep.values(variant, "seconds", SELECT), 0))
        lr = sweep.chosen_lr(variant, SELECT)
        lines.append(f"| {variant} | {lr:g} | " + " | ".join(cells) + " |")
    lines += ["", CLAIM_HEADER]
    if "ce" in sweep.runs and "balanced_softmax" in sweep.runs:
        # A control: an effect of the base methods' own papers, to see what this scale resolves.
        claim = "Balanced Softmax raises Few over CE (Ren et al., 2020; a control)"
        lines.append(claim_row(sweep, claim, "balanced_softmax", "ce", "acc_few", SELECT, +1))
    for base in BASES:
        if base in sweep.runs and f"{base}+plot" in sweep.runs:
            for metric in ("acc", "acc_few"):
                claim = f"PLOT raises {metric} of {base} (PLOT paper, table 2)"
                lines.append(claim_row(sweep, claim, f"{base}+plot", base, metric, SELECT, +1))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    variants = [v for base in BASES for v in (base, f"{base}+plot")]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sweep_arguments(parser, variants, variants, lrs=(0.05, 0.1, 0.2, 0.4))
    options = parser.parse_args(argv)
    command = " ".join(["python", *sys.argv])
    sys.argv = sys.argv[:1]  # the CLI runs below get their arguments from `args`, not argv
    sweep = run_sweep(options, lambda variant, lr, seed: run(variant, lr, seed, options.epochs))
    write_report(options, report(sweep, command))


if __name__ == "__main__":
    main()
