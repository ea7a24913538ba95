"""from_torchjd: the wrapped method equals torchjd called directly, in and out of Lightning."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import Tensor

pytest.importorskip("torchjd")

from helpers import TinyModule, one_full_batch_step, trunk_reference
from torchjd.aggregation import (
    CRMOGMWeighting,
    Mean,
    MeanWeighting,
    UPGrad,
    UPGradWeighting,
)
from torchjd.linalg import DualConeProjector

from lightning_mtl.strategies.base import Requirement
from lightning_mtl.strategies.solvers import solve_nonnegative_qp
from lightning_mtl.strategies.torchjd_adapter import from_torchjd

JACOBIAN = torch.tensor([[-4.0, 1.0, 1.0, 0.5], [6.0, 1.0, 1.0, -2.0], [0.5, -3.0, 2.0, 1.0]])


class ActiveSetProjector(DualConeProjector):
    """torchjd's dual-cone projection ``min vᵀGv s.t. v ≥ u`` solved by our active-set solver,
    so that UPGrad runs without torchjd's optional quadprog dependency: with ``v = u + x``,
    it is ``min ½xᵀGx + (Gu)ᵀx`` over ``x ≥ 0``."""

    def __call__(self, U: Tensor, G: Tensor) -> Tensor:
        batch = G.expand(*U.shape[:-1], *G.shape)
        return U + solve_nonnegative_qp(batch, U @ G)


def test_upgrad_projector_gives_torchjd_documented_values() -> None:
    jacobian = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    aggregated = UPGrad(projector=ActiveSetProjector())(jacobian)
    # torchjd's numbers come from quadprog on a regularised Gramian (G + 1e-4 I), hence atol.
    expected = torch.tensor([0.2929, 1.9004, 1.9004])
    torch.testing.assert_close(aggregated, expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "make", [Mean, lambda: UPGrad(projector=ActiveSetProjector())], ids=["Mean", "UPGrad"]
)
def test_aggregator_wrapper_equals_torchjd(make) -> None:  # type: ignore[no-untyped-def]
    strategy = from_torchjd(make())
    assert strategy.requirement is Requirement.JACOBIAN
    torch.testing.assert_close(strategy.aggregate(JACOBIAN), make()(JACOBIAN))


def test_gramian_weighting_wrapper_equals_torchjd() -> None:
    weighting = UPGradWeighting(projector=ActiveSetProjector())
    strategy = from_torchjd(weighting)
    assert strategy.requirement is Requirement.GRAMIAN
    expected = weighting(JACOBIAN @ JACOBIAN.T) @ JACOBIAN
    torch.testing.assert_close(strategy.aggregate(JACOBIAN), expected)
    torch.testing.assert_close(expected, UPGrad(projector=ActiveSetProjector())(JACOBIAN))


def test_matrix_weighting_reads_the_jacobian() -> None:
    strategy = from_torchjd(MeanWeighting())
    assert strategy.requirement is Requirement.JACOBIAN
    torch.testing.assert_close(strategy.aggregate(JACOBIAN), JACOBIAN.mean(0))
    assert repr(strategy) == "from_torchjd(MeanWeighting(), statistic='jacobian')"


def test_statistic_is_inferred_through_cr_mogm_and_can_be_given() -> None:
    smoothed = CRMOGMWeighting(UPGradWeighting(projector=ActiveSetProjector()))
    assert from_torchjd(smoothed).requirement is Requirement.GRAMIAN
    assert from_torchjd(CRMOGMWeighting(MeanWeighting())).requirement is Requirement.JACOBIAN
    composed = MeanWeighting() << (lambda matrix: matrix)
    with pytest.raises(ValueError, match="cannot tell whether"):
        from_torchjd(composed)
    strategy = from_torchjd(composed, statistic="gramian")
    assert strategy.requirement is Requirement.GRAMIAN
    torch.testing.assert_close(strategy.aggregate(JACOBIAN), JACOBIAN.mean(0))


def test_argument_checks() -> None:
    with pytest.raises(TypeError, match=r"takes a torchjd\.aggregation\.Aggregator or Weighting"):
        from_torchjd(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="statistic applies to a torchjd Weighting"):
        from_torchjd(Mean(), statistic="gramian")
    with pytest.raises(ValueError, match="statistic must be"):
        from_torchjd(MeanWeighting(), statistic="hessian")  # type: ignore[arg-type]


def test_missing_torchjd_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchjd.aggregation", None)
    with pytest.raises(ImportError, match="pip install torchjd"):
        from_torchjd(Mean())


@pytest.mark.parametrize(
    "method",
    [UPGrad(projector=ActiveSetProjector()), UPGradWeighting(projector=ActiveSetProjector())],
    ids=["aggregator", "weighting"],
)
def test_lightning_step_writes_the_upgrad_gradient(method: torch.nn.Module) -> None:
    initial, change = one_full_batch_step(TinyModule(from_torchjd(method)))
    _, rows, head_gradient = trunk_reference(initial)
    expected = torch.cat(
        [
            UPGrad(projector=ActiveSetProjector())(rows),
            head_gradient,
        ]
    )
    torch.testing.assert_close(change, expected)
