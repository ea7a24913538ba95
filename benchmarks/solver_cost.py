"""Cost of one strategy solve: dispatched torch ops and time, on the accelerator code path;
and, with ``--compare``, the host solvers side by side with torchjd and the current strategies.

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
GradVac keep state between calls, as they do in training.

``--compare`` times, in one run on the CPU with one thread (``torch.set_num_threads(1)`` and
one BLAS thread through ``threadpoolctl``), the median of ``--repeats`` (default 15) calls on a
random float32 ``[T, --columns]`` Jacobian (default 2000 columns; ``COMPARED_JACOBIANS`` of
them, taken in turn, one per call) for each method of ``COMPARED``:

* ``host``: the solve alone, the strategy's ``weights`` given the Gramian (its one copy to the
  host, the compiled solve of :mod:`lightning_mtl.strategies.host_solvers`, the weights back);
* ``host_aggregate``: ``strategy.aggregate(J)`` with ``solve_on="host"`` (the default): the
  Gramian ``J Jᵀ``, that solve and the combination ``w @ J``;
* ``torchjd``: torchjd's aggregator of the same method and settings on the same matrix (``n/a``
  where torchjd has none, or its optional solvers are missing: its UPGrad needs ``qpsolvers``
  and ``quadprog``, its CAGrad ``cvxpy`` and ``clarabel``, its NashMTL ``cvxpy`` and ``ecos``;
  install them outside the venv, e.g. ``pip install --target /tmp/peers --no-deps qpsolvers
  quadprog cvxpy clarabel ecos scs osqp qdldl``, and run with ``PYTHONPATH=/tmp/peers``);
* ``device_path``: ``strategy.aggregate(J)`` with ``solve_on="device"`` (torch ops; on the CPU
  the solvers stop once converged).

PCGrad, GradVac and GradDrop solve nothing over the weights (PCGrad's and GradVac's projections
are a few float64 ops on the ``[T, T]`` Gramian, GradDrop masks the Jacobian's entries), with one
code path, so they have only ``host_aggregate`` and ``torchjd``.

Settings: CAGrad ``c = 0.4``; PLOT is CAGrad (``c = 0.5``) with the class preference of
``class_counts = 1..T``; FairGrad ``alpha = 1``; EPO with losses ``linspace(0.5, 2, T)``; the
rest at their defaults (Nash-MTL and FairGrad clip to norm 1). Each strategy and torchjd
aggregator is built once and called repeatedly, as in training, each call a new optimizer step
(Nash-MTL re-solves every step, warm-started from its last solution; torchjd's re-solves its
cvxpy problem built on the first call):

    flock /tmp/cpu.lock python -m benchmarks.solver_cost --compare --json compare.json
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import itertools
import json
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import lightning_mtl.strategies as catalogue
from lightning_mtl.strategies import GradientBalancingStrategy, accelerator_code_paths
from lightning_mtl.strategies.base import GramianBatch, TrainingProgress, gramian_of
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


def test_jacobian(
    rows: int, kind: str, device: str, columns: int = 256, variant: int = 0
) -> Tensor:
    """A float32 Jacobian: ``random`` rows, ``ill_conditioned`` (row norms over 4 decades) or
    ``collinear`` (rows within 1e-3 of one direction); ``variant`` draws another of the kind."""
    generator = torch.Generator().manual_seed(rows + 1000 * variant)
    matrix = torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    if kind == "ill_conditioned":
        matrix = matrix * torch.logspace(-2, 2, rows, dtype=torch.float64)[:, None]
    elif kind == "collinear":
        scales = torch.rand(rows, 1, generator=generator, dtype=torch.float64) + 0.1
        matrix = matrix[:1] * scales + 1e-3 * matrix
    elif kind != "random":
        raise ValueError(f"unknown kind {kind!r}")
    return matrix.float().to(device)


def make_strategy(name: str, rows: int, solve_on: str) -> GradientBalancingStrategy:
    """A fresh ``name`` with the settings of the tables, solving ``solve_on`` where it can."""
    cls = getattr(catalogue, name)
    options: dict[str, Any] = {"c": CAGRAD_C} if name == "CAGrad" else {}
    if name == "PLOT":
        options = {"class_counts": list(range(1, rows + 1))}
    if "solve_on" in inspect.signature(cls).parameters:
        options["solve_on"] = solve_on
    return cls(**options)


def objective_names(name: str, rows: int) -> list[str]:
    return [f"class_{c}" for c in range(rows)] if name == "PLOT" else [str(c) for c in range(rows)]


def strategy_call(
    name: str, rows: int, matrices: list[Tensor], solve_on: str = "device"
) -> Callable[[], Tensor]:
    """``aggregate`` of one ``name``, called again and again as in training: call ``k`` is
    optimizer step ``k`` on ``matrices[k % len(matrices)]`` (EPO gets losses, PLOT class names;
    Nash-MTL re-solves every step, warm-started from its last solution)."""
    losses = torch.linspace(0.5, 2.0, rows, device=matrices[0].device)
    strategy = make_strategy(name, rows, solve_on)
    names = objective_names(name, rows)
    steps = itertools.count()

    def call() -> Tensor:
        step = next(steps)
        return strategy.aggregate(
            matrices[step % len(matrices)],
            losses=losses,
            names=names,
            progress=TrainingProgress(step=step),
        )

    return call


def solve_call(name: str, rows: int, matrices: list[Tensor]) -> Callable[[], Tensor]:
    """The host solve alone: ``name``'s weights given the Gramian (one copy to the host, the
    compiled solve, the weights back), step ``k`` on the Gramian of ``matrices[k % len]``."""
    names = tuple(objective_names(name, rows))
    losses = torch.linspace(0.5, 2.0, rows, device=matrices[0].device)
    gramians = [gramian_of(matrix) for matrix in matrices]
    strategy = make_strategy(name, rows, "host")
    weighting = strategy.inner if isinstance(strategy, catalogue.SharpnessAware) else strategy
    weighting.setup(names)
    assert isinstance(weighting, catalogue.GramianWeighting)
    steps = itertools.count()

    def call() -> Tensor:
        step = next(steps)
        batch = GramianBatch(
            names=names,
            losses=losses,
            gramian=gramians[step % len(gramians)],
            progress=TrainingProgress(step=step),
        )
        return weighting.weights(batch)

    return call


def timed(call: Callable[[], object], repeats: int, device: str) -> float:
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
                call = strategy_call(name, rows, [test_jacobian(rows, kind, device)])
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


COMPARED = (
    "MGDA",
    "UPGrad",
    "CAGrad",
    "IMTLG",
    "AlignedMTL",
    "NashMTL",
    "FairGrad",
    "EPO",
    "PLOT",
    "PCGrad",
    "GradVac",
    "GradDrop",
)
CAGRAD_C = 0.4
COMPARED_JACOBIANS = 4  # cycled, so that no warm start meets the problem it just solved
PLOT_C = 0.5
GRADVAC_BETA = 0.01  # our default (the paper's); torchjd's default is 0.5, which costs the same
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def torchjd_call(name: str, rows: int, matrices: list[Tensor]) -> Callable[[], Tensor] | str:
    """torchjd's aggregator of ``name``, call ``k`` on ``matrices[k % len]``, or why there is
    none."""
    constructors: dict[str, Callable[[Any], Any]] = {
        "MGDA": lambda a: a.MGDA(),
        "UPGrad": lambda a: a.UPGrad(),
        "CAGrad": lambda a: a.CAGrad(c=CAGRAD_C),
        "IMTLG": lambda a: a.IMTLG(),
        "AlignedMTL": lambda a: a.AlignedMTL(),
        "NashMTL": lambda a: a.NashMTL(n_tasks=rows),
        "FairGrad": lambda a: a.FairGrad(alpha=1.0),
        "PCGrad": lambda a: a.PCGrad(),
        "GradVac": lambda a: a.GradVac(beta=GRADVAC_BETA),
        "GradDrop": lambda a: a.GradDrop(),  # leak 0 and f the identity, as ours
    }
    if name not in constructors:
        return "torchjd has no such aggregator"
    try:
        import torchjd.aggregation as aggregation

        aggregator = constructors[name](aggregation)
        aggregator(matrices[0])  # its optional solvers are imported (cvxpy problems built) here
    except Exception as error:  # a missing optional dependency, reported in the table
        return f"{type(error).__name__}: {error}".splitlines()[0][:120]
    steps = itertools.count(1)

    def call() -> Tensor:
        with warnings.catch_warnings():  # cvxpy warns on every solve of Nash-MTL's problem
            warnings.simplefilter("ignore")
            return aggregator(matrices[next(steps) % len(matrices)])

    return call


def compare(names: list[str], sizes: list[int], columns: int, repeats: int) -> list[dict[str, Any]]:
    """The ``--compare`` table (see the module docstring)."""
    torch.set_num_threads(1)
    limits: Any = nullcontext()
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(1)
    table = []
    with limits, torch.no_grad():
        for rows in sizes:
            matrices = [
                test_jacobian(rows, "random", "cpu", columns=columns, variant=variant)
                for variant in range(COMPARED_JACOBIANS)
            ]
            for name in names:
                # The gradient-surgery methods (PCGrad, GradVac) solve nothing over the weights:
                # they have no solve alone and one code path.
                solves = issubclass(getattr(catalogue, name), catalogue.GramianWeighting)
                solve_alone = solve_call(name, rows, matrices) if solves else None
                aggregate = strategy_call(name, rows, matrices, "host")
                peer = torchjd_call(name, rows, matrices)  # called once: its warm-up
                device_path = strategy_call(name, rows, matrices, "device") if solves else None
                for warm_up in (solve_alone, aggregate, device_path):
                    if warm_up is not None:
                        warm_up()
                row: dict[str, Any] = {
                    "method": name,
                    "T": rows,
                    "host": timed(solve_alone, repeats, "cpu") if solve_alone else None,
                    "host_aggregate": timed(aggregate, repeats, "cpu"),
                    "torchjd": timed(peer, repeats, "cpu") if callable(peer) else None,
                    "torchjd_missing": None if callable(peer) else peer,
                    "device_path": timed(device_path, repeats, "cpu") if device_path else None,
                }
                table.append(row)
                print(format_row(row), flush=True)
    return table


def format_row(row: dict[str, Any]) -> str:
    peer = row["torchjd"]
    ratio = f"{row['host_aggregate'] / peer:6.2f}" if peer else "   n/a"
    host = f"{row['host']:8.3f} ms" if row["host"] is not None else "     n/a   "
    device = f"{row['device_path']:8.2f} ms" if row["device_path"] is not None else "    n/a   "
    return (
        f"{row['method']:10s} T={row['T']:3d}  host {host}  host aggregate "
        f"{row['host_aggregate']:8.3f} ms  torchjd "
        + (f"{peer:8.3f} ms" if peer else "     n/a   ")
        + f"  device path {device}  host aggregate / torchjd {ratio}"
    )


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
    parser.add_argument("--repeats", type=int, help="timed calls (default 5; 15 with --compare)")
    parser.add_argument("--json", type=Path, help="write the rows to this JSON file")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="time the host solvers against torchjd and the current strategies (CPU, 1 thread)",
    )
    parser.add_argument("--columns", type=int, default=2000, help="Jacobian columns (--compare)")
    args = parser.parse_args()
    if args.compare:
        strategies = args.strategies if args.strategies != list(SOLVING_STRATEGIES) else COMPARED
        sizes = args.tasks if args.tasks != [2, 10, 40] else [2, 10, 40, 100]
        table = compare(list(strategies), sizes, args.columns, args.repeats or 15)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "mode": "compare",
                        "columns": args.columns,
                        "torch_threads": torch.get_num_threads(),
                        "rows": table,
                    },
                    indent=1,
                )
            )
        return
    rows = measure(
        args.strategies, args.tasks, args.kind, args.device, args.path, args.repeats or 5
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"device": args.device, "path": args.path, "kind": args.kind, "rows": rows},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
