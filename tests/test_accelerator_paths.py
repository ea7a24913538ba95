"""The code paths strategies take on an accelerator, exercised on the CPU.

On the CPU the solvers stop once every problem has converged and the eigendecomposition is
LAPACK's; on a GPU they run a fixed amount of work with no host read (fixed iteration counts,
the Jacobi eigensolver). :func:`lightning_mtl.strategies.accelerator_code_paths` (the
``accelerator_paths`` fixture) forces the GPU behaviour here, so that every strategy's
accelerator path is checked against its CPU path on the same problems.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from host_sync import OpCounter, detect_host_syncs, ops_per_iteration
from strategy_properties import jacobian

import lightning_mtl.strategies as catalogue
from lightning_mtl.strategies import solvers
from lightning_mtl.strategies._gramian_tools import jacobi_eigh

GRAMIAN_AND_JACOBIAN_STRATEGIES = (
    "MGDA",
    "CAGrad",
    "UPGrad",
    "IMTLG",
    "AlignedMTL",
    "NashMTL",
    "FairGrad",
    "EPO",
    "PCGrad",
    "GradVac",
    "RGB",
)


def device_solved(name: str) -> catalogue.GradientBalancingStrategy:
    """Strategy ``name`` with defaults, solving on the device where it has the choice."""
    cls = getattr(catalogue, name)
    return cls(solve_on="device") if "solve_on" in inspect.signature(cls).parameters else cls()


def _aggregates(name: str, kind: str, rows: int) -> torch.Tensor:
    torch.manual_seed(0)
    matrix = jacobian(rows, kind=kind, seed=rows)
    # EPO weighs the objectives by their losses.
    losses = torch.linspace(0.5, 2.0, rows) if name == "EPO" else None
    return device_solved(name).aggregate(matrix, losses=losses)


@pytest.mark.parametrize("rows", [2, 7, 40])
@pytest.mark.parametrize("kind", ["random", "ill_conditioned", "collinear"])
@pytest.mark.parametrize("name", GRAMIAN_AND_JACOBIAN_STRATEGIES)
def test_accelerator_path_gives_the_cpu_paths_update(name: str, kind: str, rows: int) -> None:
    cpu_path = _aggregates(name, kind, rows)
    with catalogue.accelerator_code_paths():
        accelerator_path = _aggregates(name, kind, rows)
    scale = cpu_path.norm().clamp_min(1e-12)
    assert float((accelerator_path - cpu_path).norm() / scale) < 1e-4


@pytest.mark.parametrize("size", [2, 3, 16, 41, 64])
@pytest.mark.parametrize("spectrum", ["random", "repeated", "ill_conditioned"])
def test_jacobi_eigh_matches_lapack(size: int, spectrum: str) -> None:
    generator = torch.Generator().manual_seed(size)
    basis, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    if spectrum == "random":
        values = torch.rand(size, generator=generator, dtype=torch.float64)
    elif spectrum == "repeated":
        values = torch.tensor([1.0, 1.0, 2.0] * size, dtype=torch.float64)[:size]
    else:
        values = torch.logspace(-8, 4, size, dtype=torch.float64)
    matrix = basis @ torch.diag(values) @ basis.T
    eigenvalues, eigenvectors = jacobi_eigh(matrix)
    # Jacobi in float64 resolves the spectrum to about 1e-12 of its largest value.
    largest = float(values.abs().max())
    torch.testing.assert_close(
        eigenvalues.sort().values, values.sort().values, atol=1e-10 * largest, rtol=0
    )
    identity = torch.eye(size, dtype=torch.float64)
    torch.testing.assert_close(eigenvectors.T @ eigenvectors, identity, atol=1e-10, rtol=0)
    rebuilt = eigenvectors @ torch.diag(eigenvalues) @ eigenvectors.T
    torch.testing.assert_close(rebuilt, matrix, atol=1e-10 * largest, rtol=0)


def test_solvers_stop_early_on_the_cpu_with_the_full_runs_result(
    accelerator_paths: None,
) -> None:
    gramian = (lambda m: m @ m.T)(jacobian(30, kind="ill_conditioned").double())
    full = solvers.solve_simplex_qp(gramian)  # the fixture disables the early stop
    assert solvers.settled_on_host(torch.tensor([True])) is False
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(solvers, "settled_on_host", lambda done: bool(done.all()))
        early = solvers.solve_simplex_qp(gramian)
    assert torch.equal(full, early)


def test_jacobi_eigh_dispatches_a_few_ops_a_round_and_never_syncs() -> None:
    gramian = (lambda m: m @ m.T)(jacobian(40, seed=5).double())
    with detect_host_syncs() as found, OpCounter() as ops:
        jacobi_eigh(gramian)
    assert found == []
    # 18 sweeps of 39 rounds; a round takes 13 ops, the slack of one more a round covers the
    # ~50 ops of set-up and result, so that any op added to the rounds fails. Gathering and
    # copying the pairs' rows and columns took 56 a round.
    assert ops.total < 14 * 18 * 39


@pytest.mark.parametrize(("simplex", "bound"), [(True, 44), (False, 40)])
def test_an_active_set_iteration_dispatches_few_ops(
    accelerator_paths: None, simplex: bool, bound: int
) -> None:
    """On an accelerator the QP solver runs 3T + 10 iterations whatever the data, so the ops of
    an iteration are its cost there: 44 on the simplex and 40 without it (36 and 33 of them
    kernels), where the first version took 75 and 57."""
    rows = jacobian(10, 32, seed=0).double()
    gramian = rows @ rows.T
    if simplex:
        count = ops_per_iteration(lambda n: solvers.solve_simplex_qp(gramian, max_iter=n))
    else:
        count = ops_per_iteration(
            lambda n: solvers.solve_nonnegative_qp(gramian, -gramian[0], max_iter=n)
        )
    assert count <= bound


def test_cagrad_takes_two_qp_runs_on_an_accelerator(accelerator_paths: None) -> None:
    # The min-norm point rides in the first round's batch: one run for each of the 2 rounds,
    # each of 3T + 10 iterations with one batched linear solve.
    rows = 10
    with OpCounter() as ops:
        catalogue.CAGrad(solve_on="device").aggregate(jacobian(rows, 32, seed=0))
    assert ops.kernels["_linalg_solve_ex"] == 2 * (3 * rows + 10)
