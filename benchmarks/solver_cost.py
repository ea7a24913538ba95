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
GradVac keep state between calls, so each measured call is the first of a fresh strategy.

``--compare`` times, in one run on the CPU with one thread (``torch.set_num_threads(1)`` and
one BLAS thread through ``threadpoolctl``), the median of ``--repeats`` (default 15) calls on a
random float32 ``[T, --columns]`` Jacobian (default 2000 columns) for each method of
``COMPARED``:

* ``host``: the host solve of :mod:`lightning_mtl.strategies.host_solvers` alone, given the
  float64 numpy Gramian, composed as the strategy's defaults define its weights;
* ``host_aggregate``: the Gramian ``J Jᵀ``, that solve through ``solve_on_host`` (one copy of the
  Gramian) and the combination ``w @ J``: what ``aggregate`` costs on the host path;
* ``torchjd``: torchjd's aggregator of the same method and settings on the same matrix (``n/a``
  where torchjd has none, or its optional solvers are missing: its UPGrad needs ``qpsolvers``
  and ``quadprog``, its CAGrad ``cvxpy`` and ``clarabel``, its NashMTL ``cvxpy`` and ``ecos``;
  install them outside the venv, e.g. ``pip install --target /tmp/peers --no-deps qpsolvers
  quadprog cvxpy clarabel ecos scs osqp qdldl``, and run with ``PYTHONPATH=/tmp/peers``);
* ``current``: the current ``strategy.aggregate`` (the device solvers' CPU path).

Settings: CAGrad ``c = 0.4``; PLOT is CAGrad (``c = 0.5``) with the class preference of
``class_counts = 1..T``; FairGrad ``alpha = 1``; EPO with losses ``linspace(0.5, 2, T)``; the
rest at their defaults (Nash-MTL and FairGrad clip to norm 1). The host solves start cold;
torchjd's NashMTL is one aggregator called repeatedly (its cvxpy problem is built on the first
call), ours a fresh strategy per call:

    flock /tmp/cpu.lock python -m benchmarks.solver_cost --compare --json compare.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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
from lightning_mtl.strategies import host_solvers as hs
from lightning_mtl.strategies.base import gramian_of
from lightning_mtl.strategies.plot import class_preference
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
)
CAGRAD_C = 0.4
PLOT_C = 0.5
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def host_weights(name: str, rows: int) -> Callable[..., np.ndarray]:
    """The strategy ``name``'s weights from the host solvers, given the float64 numpy Gramian
    (and, for EPO, the losses), with the settings of ``--compare``."""
    uniform = np.full(rows, 1.0 / rows)
    if name == "MGDA":
        return hs.simplex_qp
    if name == "UPGrad":
        return lambda g: uniform + hs.nonnegative_qp(g, uniform[:, None] * g).sum(0)
    if name in ("CAGrad", "PLOT"):
        c = CAGRAD_C if name == "CAGrad" else PLOT_C
        preference = uniform if name == "CAGrad" else np.array(class_preference(range(1, rows + 1)))

        def conflict_averse(g: np.ndarray) -> np.ndarray:
            radius = c * math.sqrt(max(float(uniform @ g @ uniform), 0.0))
            return (uniform + hs.conflict_averse_multipliers(g, preference, radius)) / (1 + c**2)

        return conflict_averse
    if name == "IMTLG":
        return lambda g: hs.imtl_g_weights(g, eps=FLOAT32_EPS)
    if name == "AlignedMTL":
        return lambda g: hs.aligned_mtl_weights(g, uniform, eps=FLOAT32_EPS)
    if name in ("NashMTL", "FairGrad"):
        nash = name == "NashMTL"

        def bargained(g: np.ndarray) -> np.ndarray:
            weights, solved = hs.bargaining(g, 1.0, iterations=20 if nash else 30)
            if not solved:
                weights = np.ones(rows) if nash else uniform
            return hs.clipped_update_weights(weights if nash else rows * weights, g, 1.0)

        return bargained
    if name == "EPO":
        return lambda g, losses: hs.epo_weights(g, losses, np.ones(rows))[0]
    raise ValueError(f"no host weights for {name!r}")


def host_calls(name: str, matrix: Tensor) -> tuple[Callable[[], np.ndarray], Callable[[], Tensor]]:
    """The host solve of ``name`` alone (given the float64 Gramian on the host), and
    ``aggregate`` on the host path: Gramian, ``solve_on_host`` and ``w @ J``."""
    rows = len(matrix)
    solve = host_weights(name, rows)
    host_gramian = gramian_of(matrix).double().numpy()
    losses = torch.linspace(0.5, 2.0, rows)
    on_device = (losses,) if name == "EPO" else ()
    on_host = tuple(column.double().numpy() for column in on_device)

    def solve_alone() -> np.ndarray:
        return solve(host_gramian, *on_host)

    def aggregate() -> Tensor:
        weights = hs.solve_on_host(solve, gramian_of(matrix), columns=on_device)
        return weights.to(matrix.dtype) @ matrix

    return solve_alone, aggregate


def torchjd_call(name: str, rows: int, matrix: Tensor) -> Callable[[], Tensor] | str:
    """torchjd's aggregator of ``name`` on ``matrix``, or why there is none."""
    constructors: dict[str, Callable[[Any], Any]] = {
        "MGDA": lambda a: a.MGDA(),
        "UPGrad": lambda a: a.UPGrad(),
        "CAGrad": lambda a: a.CAGrad(c=CAGRAD_C),
        "IMTLG": lambda a: a.IMTLG(),
        "AlignedMTL": lambda a: a.AlignedMTL(),
        "NashMTL": lambda a: a.NashMTL(n_tasks=rows),
        "FairGrad": lambda a: a.FairGrad(alpha=1.0),
    }
    if name not in constructors:
        return "torchjd has no such aggregator"
    try:
        import torchjd.aggregation as aggregation

        aggregator = constructors[name](aggregation)
        aggregator(matrix)  # its optional solvers are imported (and cvxpy problems built) here
    except Exception as error:  # a missing optional dependency, reported in the table
        return f"{type(error).__name__}: {error}".splitlines()[0][:120]

    def call() -> Tensor:
        with warnings.catch_warnings():  # cvxpy warns on every solve of Nash-MTL's problem
            warnings.simplefilter("ignore")
            return aggregator(matrix)

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
            matrix = test_jacobian(rows, "random", "cpu", columns=columns)
            for name in names:
                solve_alone, aggregate = host_calls(name, matrix)
                peer = torchjd_call(name, rows, matrix)  # called once: its warm-up
                current = strategy_call(name, rows, matrix)
                for warm_up in (solve_alone, aggregate, current):
                    warm_up()
                row: dict[str, Any] = {
                    "method": name,
                    "T": rows,
                    "host": timed(solve_alone, repeats, "cpu"),
                    "host_aggregate": timed(aggregate, repeats, "cpu"),
                    "torchjd": timed(peer, repeats, "cpu") if callable(peer) else None,
                    "torchjd_missing": None if callable(peer) else peer,
                    "current": timed(current, repeats, "cpu"),
                }
                table.append(row)
                print(format_row(row), flush=True)
    return table


def format_row(row: dict[str, Any]) -> str:
    peer = row["torchjd"]
    ratio = f"{row['host_aggregate'] / peer:6.2f}" if peer else "   n/a"
    return (
        f"{row['method']:10s} T={row['T']:3d}  host {row['host']:8.3f} ms  host aggregate "
        f"{row['host_aggregate']:8.3f} ms  torchjd "
        + (f"{peer:8.3f} ms" if peer else "     n/a   ")
        + f"  current {row['current']:8.2f} ms  host aggregate / torchjd {ratio}"
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
