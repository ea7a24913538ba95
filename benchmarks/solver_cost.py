"""Cost of one strategy solve: dispatched torch ops and time, on the accelerator code path.

On a GPU the strategies' solvers run a fixed amount of work (no early stop, which would read a
convergence flag on the host), on problems of T × T numbers. Each dispatched op is then a
kernel launch of a few microseconds, and the launches, not the arithmetic, set the cost. This
script counts the ops one ``strategy.aggregate(J)`` dispatches on that code path, which it can
take on the CPU too, and times the call:

    python -m benchmarks.solver_cost                      # CPU: op counts and CPU time
    python -m benchmarks.solver_cost --device cuda        # GPU: the same, timed with CUDA events
    python -m benchmarks.solver_cost --path host          # the CPU's own path (early stops)

``kernels`` counts the ops that launch work; ``views`` the ones that only re-describe a tensor
(``unsqueeze``, ``diagonal``, ...), which cost host time but no launch (the counter is the test
suite's, ``tests/host_sync.py``). The Jacobians are the
test suite's kinds (random, ill-conditioned, nearly collinear) with 256 columns; Nash-MTL and
GradVac keep state between calls, so each measured call is the first of a fresh strategy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import lightning_mtl.strategies as catalogue
from lightning_mtl.strategies import GradientBalancingStrategy, accelerator_code_paths
from tests.host_sync import OpCounter

SOLVING_STRATEGIES = (
    "MGDA",
    "CAGrad",
    "UPGrad",
    "NashMTL",
    "FairGrad",
    "EPO",
    "IMTLG",
    "AlignedMTL",
    "PCGrad",
    "GradVac",
    "RGB",
    "PLOT",
)


def test_jacobian(rows: int, kind: str, device: str, columns: int = 256) -> Tensor:
    """A float32 Jacobian: ``random`` rows, ``ill_conditioned`` (row norms over 4 decades) or
    ``collinear`` (rows within 1e-3 of one direction)."""
    generator = torch.Generator().manual_seed(rows)
    matrix = torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    if kind == "ill_conditioned":
        matrix = matrix * torch.logspace(-2, 2, rows, dtype=torch.float64)[:, None]
    elif kind == "collinear":
        scales = torch.rand(rows, 1, generator=generator, dtype=torch.float64) + 0.1
        matrix = matrix[:1] * scales + 1e-3 * matrix
    elif kind != "random":
        raise ValueError(f"unknown kind {kind!r}")
    return matrix.float().to(device)


def strategy_call(name: str, rows: int, matrix: Tensor) -> Callable[[], Tensor]:
    """One ``aggregate`` of a fresh ``name`` on ``matrix`` (EPO gets losses, PLOT class names)."""

    def call() -> Tensor:
        if name == "PLOT":
            plot = catalogue.PLOT(class_counts=list(range(1, rows + 1)))
            return plot.aggregate(matrix, names=[f"class_{c}" for c in range(rows)])
        strategy: GradientBalancingStrategy = getattr(catalogue, name)()
        if name == "EPO":
            return strategy.aggregate(
                matrix, losses=torch.linspace(0.5, 2.0, rows, device=matrix.device)
            )
        return strategy.aggregate(matrix)

    return call


def timed(call: Callable[[], Tensor], repeats: int, device: str) -> float:
    """Median milliseconds of ``call`` over ``repeats`` runs (CUDA events on a GPU)."""
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            call()
            times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


def measure(
    names: list[str], sizes: list[int], kind: str, device: str, path: str, repeats: int
) -> list[dict[str, Any]]:
    rows_out = []
    forced = (
        accelerator_code_paths() if path == "accelerator" and device == "cpu" else nullcontext()
    )
    with forced:
        for name in names:
            for rows in sizes:
                call = strategy_call(name, rows, test_jacobian(rows, kind, device))
                call()  # warm-up: lazily built state, allocator, kernels
                counter = OpCounter()
                with counter:
                    call()
                rows_out.append(
                    {
                        "strategy": name,
                        "T": rows,
                        "kernels": sum(counter.kernels.values()),
                        "views": counter.views,
                        "ms": timed(call, repeats, device),
                        "top_kernels": counter.kernels.most_common(5),
                    }
                )
                print(
                    f"{name:11s} T={rows:3d}  kernels {rows_out[-1]['kernels']:6d}  views "
                    f"{counter.views:5d}  {rows_out[-1]['ms']:9.2f} ms",
                    flush=True,
                )
    return rows_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", nargs="+", default=list(SOLVING_STRATEGIES))
    parser.add_argument("--tasks", nargs="+", type=int, default=[2, 10, 40])
    parser.add_argument(
        "--kind", default="random", choices=["random", "ill_conditioned", "collinear"]
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--path",
        default="accelerator",
        choices=["accelerator", "host"],
        help="on the CPU: the accelerator code path (fixed work) or the CPU's own (early stops)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the rows to this JSON file")
    args = parser.parse_args()
    rows = measure(args.strategies, args.tasks, args.kind, args.device, args.path, args.repeats)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"device": args.device, "path": args.path, "kind": args.kind, "rows": rows},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
