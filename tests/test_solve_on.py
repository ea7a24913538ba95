"""Every Gramian strategy gives the same update whether it solves on the host (compiled float64
numerics after one copy of the Gramian, the default) or on the device (torch ops, no host read),
on the property-test families, and falls back alike on a non-finite Gramian."""

from __future__ import annotations

import inspect

import pytest
import torch
from strategy_properties import jacobian

import lightning_mtl.strategies as catalogue

SOLVERS = sorted(
    name
    for name in catalogue.__all__
    if isinstance(getattr(catalogue, name), type)
    and "solve_on" in inspect.signature(getattr(catalogue, name)).parameters
)


def _make(name: str, solve_on: str) -> catalogue.GradientBalancingStrategy:
    if name in ("PLOT", "PLOTCAGrad"):
        return getattr(catalogue, name)(class_counts=[50, 20, 8, 3, 1] * 8, solve_on=solve_on)
    return getattr(catalogue, name)(solve_on=solve_on)


def _update(name: str, solve_on: str, matrix: torch.Tensor) -> torch.Tensor:
    names = [f"class_{i}" for i in range(len(matrix))]
    losses = torch.linspace(0.5, 2.0, len(matrix), dtype=matrix.dtype)
    return _make(name, solve_on).aggregate(matrix, losses=losses, names=names)


def test_the_solving_strategies_are_the_gramian_ones() -> None:
    assert SOLVERS == [
        "AlignedMTL",
        "CAGrad",
        "EPO",
        "FairGrad",
        "IMTLG",
        "MGDA",
        "NashMTL",
        "PLOT",
        "PLOTCAGrad",
        "UPGrad",
    ]
    with pytest.raises(ValueError, match="solve_on must be 'host' or 'device'"):
        catalogue.MGDA(solve_on="gpu")  # type: ignore[arg-type]


@pytest.mark.parametrize("rows", [2, 7, 40])
@pytest.mark.parametrize("kind", ["random", "ill_conditioned", "collinear"])
@pytest.mark.parametrize("name", SOLVERS)
def test_host_and_device_give_the_same_update(name: str, kind: str, rows: int) -> None:
    matrix = jacobian(rows, kind=kind, seed=rows).double()
    host, device = _update(name, "host", matrix), _update(name, "device", matrix)
    assert host.dtype == device.dtype == torch.float64
    scale = device.norm().clamp_min(1e-12)
    # The device solvers stop at their own tolerances; the host ones are exact to rounding.
    assert float((host - device).norm() / scale) < 1e-6, (name, kind, rows)


@pytest.mark.parametrize("name", SOLVERS)
def test_a_non_finite_gramian_falls_back_alike(name: str) -> None:
    matrix = jacobian(4, kind="random", seed=1)
    matrix[1, 3] = torch.inf
    host, device = _update(name, "host", matrix), _update(name, "device", matrix)
    assert torch.equal(torch.isfinite(host), torch.isfinite(device))
    finite = torch.isfinite(device)
    torch.testing.assert_close(host[finite], device[finite])
