"""Embedded digits GCD: SimGCD, + PGI, + PGI + SwAV and + EAGC over seeds and learning rates,
each method's rate chosen on a held-out validation split, All / Old / New reported on the
unlabeled training images (the GCD protocol) as mean ± 95% interval, and the PGI and EAGC
papers' claims checked seed by seed (see ``seeded_sweep``).

Every variant is the ``digits_gcd_pgi`` recipe or the ``digits_gcd_eagc`` recipe run as
``lightning-mtl fit`` with a few overrides, so what is measured is what a user runs:

* ``simgcd``: SimGCD, the plain sum of its losses (``cls_weight`` 0.35, no SwAV, no LR warm-up);
* ``pgi``: PGI after the warm-up of its recipe (no SwAV);
* ``pgi_swav``: the PGI recipe as shipped (SwAV on the labeled rows);
* ``eagc``: the ``digits_gcd_eagc`` recipe (plain sum + AGA and EEP, the authors' set-up);
* ``eagc_setup``: the same recipe without EAGC (its baseline: same adapter, rates, mean-entropy
  weight, no reference phase);
* ``eagc_reference_only``: the EAGC recipe with ``w_aga = w_eep = 0``: the reference phase's
  supervised epochs start the backbone, no gradient edit (separates the two);
* not run by default: ``pgi_swav_unlabeled`` / ``pgi_swav_all`` (the PGI paper's table 6 mask
  ablation), ``pgi_swav_separate`` (SwAV on its own prototypes), ``pgi_constant`` (α = 0.35).

A run with rate ``lr`` sets the recipe's ``lr``; in the EAGC recipe's set-up also ``head_lr =
10 lr`` and ``reference_lr = lr / 5``, the authors' ratios. ``--holdout`` of every class is held
out of training (``holdout_fraction``) and scored like the reported split (``val/all``): the
rate of each variant is the one with the best mean ``val/all`` over the seeds. The angle is the
epoch mean of ``angle/cls_vs_rep`` (every 5 steps, shared parameters) averaged over the epochs after
the 2-epoch warm-up; the EAGC variants log none.

Usage::

    PYTHONPATH=. python benchmarks/digits_gcd_compare.py --seeds 0 1 2 3 4 --lrs 0.025 0.05 0.1 \
        --out benchmark_results/digits_gcd
    PYTHONPATH=. python benchmarks/digits_gcd_compare.py --epochs 2 --seeds 0 --lrs 0.05  # smoke
"""

from __future__ import annotations

import argparse
import statistics
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

from lightning_mtl.callbacks import GradientAngleLogger

RECIPES = Path(__file__).resolve().parents[1] / "lightning_mtl" / "recipes"
PGI_RECIPE = ["--config", str(RECIPES / "digits_gcd_pgi.yaml")]
EAGC_RECIPE = ["--config", str(RECIPES / "digits_gcd_eagc.yaml")]
NO_SWAV = ["--model.init_args.use_swav", "false"]
WARMUP_EPOCHS = 2
ANGLE = "angle/cls_vs_rep"
ANGLE_ONLY = '[{"class_path": "lightning_mtl.callbacks.GradientAngleLogger", "init_args": {"every_n_steps": 5}}]'  # noqa: E501
VARIANTS: dict[str, list[str]] = {
    "simgcd": [
        *PGI_RECIPE,
        *NO_SWAV,
        *("--model.init_args.strategy", "lightning_mtl.strategies.LinearScalarization"),
        *("--model.init_args.cls_weight", "0.35", "--model.init_args.warmup_epochs", "0"),
        *("--trainer.callbacks", ANGLE_ONLY),
    ],
    "pgi": [*PGI_RECIPE, *NO_SWAV],
    "pgi_swav": PGI_RECIPE,
    "eagc": EAGC_RECIPE,
    "eagc_setup": [*EAGC_RECIPE, "--model.init_args.eagc", "null"],
    "eagc_reference_only": [
        *EAGC_RECIPE,
        *(
            "--model.init_args.eagc.init_args.w_aga",
            "0",
            "--model.init_args.eagc.init_args.w_eep",
            "0",
        ),
    ],
    "pgi_swav_unlabeled": [*PGI_RECIPE, "--model.init_args.swav_mask", "unlabeled"],
    "pgi_swav_all": [*PGI_RECIPE, "--model.init_args.swav_mask", "all"],
    "pgi_swav_separate": [*PGI_RECIPE, "--model.init_args.swav_prototypes", "separate"],
    "pgi_constant": [*PGI_RECIPE, *NO_SWAV, "--model.init_args.strategy.init_args.alpha", "0.35"],
}
EAGC_SETUP = ("eagc", "eagc_setup", "eagc_reference_only")
DEFAULT_VARIANTS = ("simgcd", "pgi", "pgi_swav", "eagc", "eagc_setup", "eagc_reference_only")
# (claim, method, baseline, metric, sign of the paper's effect); All is the PGI paper's table 5
# and the EAGC paper's headline metric; the angle is the PGI paper's table 4.
CLAIMS = (
    ("PGI raises All (PGI paper, table 5)", "pgi", "simgcd", "all", +1),
    ("PGI lowers the cls-vs-rep angle (PGI paper, table 4)", "pgi", "simgcd", "angle", -1),
    ("SwAV on top of PGI raises All (PGI paper, table 5)", "pgi_swav", "pgi", "all", +1),
    ("EAGC raises All over its baseline (EAGC paper)", "eagc", "eagc_setup", "all", +1),
    ("… beyond its reference epochs alone", "eagc", "eagc_reference_only", "all", +1),
    ("EAGC keeps Old (AGA protects the known classes)", "eagc", "eagc_setup", "old", +1),
)
SELECT = "val/all"


def rate_overrides(variant: str, lr: float) -> list[str]:
    """The learning-rate arguments of a run at ``lr`` (see the module docstring)."""
    args = ["--model.init_args.lr", repr(lr)]
    if variant in EAGC_SETUP:
        args += ["--model.init_args.head_lr", repr(10 * lr)]
        args += ["--model.init_args.reference_lr", repr(lr / 5)]
    return args


def run(variant: str, lr: float, seed: int, epochs: int | None, holdout: float) -> dict[str, float]:
    """Fit one variant at one rate and seed: validation and test metrics, angle, seconds."""
    args = [*VARIANTS[variant], *rate_overrides(variant, lr), "--seed_everything", str(seed)]
    args += ["--data.init_args.seed", str(seed), "--model.init_args.seed", str(seed)]
    args += ["--data.init_args.holdout_fraction", repr(holdout)]
    if epochs is not None:
        args += ["--trainer.max_epochs", str(epochs)]
    start = time.perf_counter()
    metrics, trainer = fit_with_cli(args)
    if "diverged" in metrics:
        return {**metrics, "seconds": time.perf_counter() - start}
    result = {SELECT: metrics[SELECT], "seconds": time.perf_counter() - start}
    result.update({group: metrics[f"test/{group}"] for group in ("all", "old", "new")})
    for callback in trainer.callbacks:
        if isinstance(callback, GradientAngleLogger):
            after_warmup = [epoch[ANGLE] for epoch in callback.history[WARMUP_EPOCHS:]]
            if after_warmup:
                result["angle"] = statistics.fmean(after_warmup)
    return result


def report(sweep: Sweep, command: str) -> str:
    """Markdown: the rate selection, the test table at the chosen rates, the claims."""
    lines = [f"command: `{command}`", "", f"Validation ({SELECT}, held-out images) by rate:", ""]
    lines += [sweep.selection_table(SELECT), "", "Reported split at each variant's chosen rate:"]
    lines += ["", "| variant | lr | All | Old | New | angle cls-rep (°) | s / run |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for variant in sweep.runs:
        cells = [cell(sweep.values(variant, key, SELECT)) for key in ("all", "old", "new")]
        cells.append(cell(sweep.values(variant, "angle", SELECT), 1))
        cells.append(cell(sweep.values(variant, "seconds", SELECT), 0))
        lines.append(
            f"| {variant} | {sweep.chosen_lr(variant, SELECT):g} | " + " | ".join(cells) + " |"
        )
    claims = [c for c in CLAIMS if c[1] in sweep.runs and c[2] in sweep.runs]
    if claims:
        lines += ["", CLAIM_HEADER]
        for claim, method, baseline, metric, sign in claims:
            digits = 1 if metric == "angle" else 3
            lines.append(claim_row(sweep, claim, method, baseline, metric, SELECT, sign, digits))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sweep_arguments(parser, list(VARIANTS), DEFAULT_VARIANTS, lrs=(0.025, 0.05, 0.1))
    parser.add_argument("--holdout", type=float, default=0.2, help="validation share per class")
    options = parser.parse_args(argv)
    command = " ".join(["python", *sys.argv])
    sys.argv = sys.argv[:1]  # the CLI runs below get their arguments from `args`, not argv
    sweep = run_sweep(
        options, lambda variant, lr, seed: run(variant, lr, seed, options.epochs, options.holdout)
    )
    write_report(options, report(sweep, command))


if __name__ == "__main__":
    main()
