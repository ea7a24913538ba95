"""PLOT's step overhead over its base method on ResNet-32 with CIFAR-sized input (issue 4,
item 6; the paper's appendix table 2 reports 0.83–0.86 h vs 0.65–0.68 h on a T4, about 1.3×).

:class:`~lightning_mtl.tasks.long_tail.LongTailClassifier` with ResNet-32 trains on fixed random
``3×32×32`` batches that stay on the device (no data loading in the measurement), labels drawn
from the CIFAR-LT profile (``--classes`` classes at imbalance ``--imbalance``), batch 64 as in
the paper. Configurations:

* ``base``: the base method alone (the plain sum of the per-class objectives = the base loss),
  one backward pass;
* ``plot``: PLOT on ``net.layer3`` (the paper's default scope): a perturbing pass, the per-class
  Gramian of ``layer3`` at the perturbed weights, CAGrad with the class preference.

Each step is timed with CUDA events (``perf_counter`` on the CPU) after warm-up steps; peak GPU
memory is ``torch.cuda.max_memory_allocated``. The ratio is the median PLOT step over the median
base step; over a whole run PLOT only runs for the first ``E`` epochs (TemporalMOO), so the
run-time ratio is ``(E·r + (N − E)) / N`` for a step ratio ``r`` over ``N`` epochs.

Usage::

    PYTHONPATH=. python benchmarks/plot_overhead.py                        # GPU, bf16-mixed
    PYTHONPATH=. python benchmarks/plot_overhead.py --classes 100 --precision 16-mixed
    PYTHONPATH=. python benchmarks/plot_overhead.py --device cpu --steps 3 --warmup 1 \
        --precision 32-true                                                 # smoke test
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from typing import Any

import lightning.pytorch as pl
import torch

from benchmarks.step_overhead import PRECISIONS, CycledBatches, StepTimer, StepTimerCallback
from lightning_mtl.strategies import PLOT, LinearScalarization
from lightning_mtl.tasks.long_tail import LongTailClassifier
from lightning_mtl.tasks.long_tail.data import long_tail_counts

BATCH_SIZE = 64


def make_batches(args: argparse.Namespace, device: torch.device) -> tuple[list[Any], list[int]]:
    """Random images and long-tailed labels (drawn in proportion to the CIFAR-LT profile)."""
    n_max = 5000 if args.classes == 10 else 500
    counts = long_tail_counts(n_max, args.classes, args.imbalance)
    generator = torch.Generator().manual_seed(args.seed)
    probabilities = torch.tensor(counts, dtype=torch.float64)
    batches = []
    for _ in range(args.num_batches):
        images = torch.randn(BATCH_SIZE, 3, 32, 32, generator=generator)
        labels = torch.multinomial(probabilities, BATCH_SIZE, replacement=True, generator=generator)
        batches.append((images.to(device), labels.to(device)))
    return batches, counts


def time_config(
    config: str, batches: list[Any], counts: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    """Median / quartiles of the step time in ms and the peak memory of one configuration."""
    device = batches[0][0].device
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(args.seed)
    strategy = PLOT(rho=1e-4, c=0.5, class_counts=counts) if config == "plot" else None
    model = LongTailClassifier(
        strategy=strategy or LinearScalarization(),
        backbone="resnet32",
        num_classes=args.classes,
        loss="ce",
        lr=0.1,
        weight_decay=2e-4,
    )
    timer = StepTimer(device)
    total = args.warmup + args.steps
    trainer = pl.Trainer(
        max_steps=total,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[StepTimerCallback(timer)],
    )
    loader = torch.utils.data.DataLoader(CycledBatches(batches, total), batch_size=None)
    trainer.fit(model, loader)
    steps, _ = timer.durations_ms(args.warmup)
    quartiles = statistics.quantiles(steps, n=4) if len(steps) > 1 else [steps[0]] * 3
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "median": statistics.median(steps),
        "q1": quartiles[0],
        "q3": quartiles[2],
        "peak": peak,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, choices=(10, 100), default=10)
    parser.add_argument("--imbalance", type=float, default=100.0)
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16-mixed")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--num-batches", type=int, default=8)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device is available; use --device cpu for a smoke test.")
    device = torch.device(args.device)
    batches, counts = make_batches(args, device)
    results = {config: time_config(config, batches, counts, args) for config in ("base", "plot")}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {args.classes} classes, IR {args.imbalance}")
    print("| configuration | median ms | IQR ms | ratio to base | peak MiB |")
    print("|---|---|---|---|---|")
    for config, result in results.items():
        ratio = result["median"] / results["base"]["median"]
        peak = "-" if result["peak"] is None else f"{result['peak']:.0f}"
        iqr = result["q3"] - result["q1"]
        print(f"| {config} | {result['median']:.2f} | {iqr:.2f} | {ratio:.2f} | {peak} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
