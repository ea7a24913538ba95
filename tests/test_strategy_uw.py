"""UW: weights by hand, equality with joint SGD on the log-variances, state, a Lightning run."""

from __future__ import annotations

import math

import pytest
import torch
from loss_strategy_harness import (
    assert_needs_losses,
    assert_no_host_reads,
    assert_restored_copy_continues,
    assert_run_follows,
    call,
)
from strategy_properties import check_rejected

from lightning_mtl.strategies.uw import UW

LOSSES = [[1.0, 4.0], [2.0, 2.0], [0.5, 8.0], [1.5, 0.25], [3.0, 1.0]]


def sgd_reference(losses: list[list[float]], lr: float, s0: float = 0.0) -> list[list[float]]:
    """Weights e^{−s} before each SGD step s ← s − lr (1 − e^{−s} L), in Python floats."""
    s = [s0] * len(losses[0])
    history = []
    for step in losses:
        weights = [math.exp(-v) for v in s]
        history.append(weights)
        s = [v - lr * (1 - w * loss) for v, w, loss in zip(s, weights, step, strict=True)]
    return history


def test_weights_by_hand() -> None:
    uw = UW(lr=0.1)
    torch.testing.assert_close(call(uw, LOSSES[0]), torch.tensor([1.0, 1.0]))
    # s = (0 − 0.1·(1 − 1), 0 − 0.1·(1 − 4)) = (0, 0.3)
    torch.testing.assert_close(call(uw, LOSSES[1]), torch.tensor([1.0, math.exp(-0.3)]))
    # s = (0 − 0.1·(1 − 2), 0.3 − 0.1·(1 − 2e^{−0.3}))
    s1 = 0.3 - 0.1 * (1 - 2 * math.exp(-0.3))
    torch.testing.assert_close(call(uw, LOSSES[2]), torch.tensor([math.exp(-0.1), math.exp(-s1)]))


def test_matches_joint_sgd_on_the_log_variances() -> None:
    """Kendall et al.'s Σ e^{−s} L + s minimised over s by torch's SGD, step by step."""
    s = torch.full((2,), -0.5, requires_grad=True)
    optimizer = torch.optim.SGD([s], lr=0.2)
    uw = UW(lr=0.2, initial_log_variance=-0.5)
    for losses in LOSSES:
        values = torch.tensor(losses)
        torch.testing.assert_close(call(uw, losses), torch.exp(-s.detach()))
        optimizer.zero_grad()
        (torch.exp(-s) * values + s).sum().backward()
        optimizer.step()
        torch.testing.assert_close(uw.log_variances, s.detach())


def test_settles_at_the_log_of_a_constant_loss() -> None:
    uw = UW(lr=0.5)
    for _ in range(60):
        call(uw, [4.0, 0.25])
    assert uw.log_variances is not None
    torch.testing.assert_close(uw.log_variances, torch.tensor([math.log(4.0), math.log(0.25)]))


def test_state_round_trip_continues_identically() -> None:
    assert_restored_copy_continues(lambda: UW(lr=0.3), LOSSES, cut=2)
    assert UW().state_dict() == {"log_variances": None}


def test_no_host_reads() -> None:
    assert_no_host_reads(UW())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"initial_log_variance": float("inf")}, "initial_log_variance must be finite"),
    ],
)
def test_argument_checks(kwargs: dict[str, float], message: str) -> None:
    check_rejected(UW, kwargs, message)


def test_needs_the_losses() -> None:
    assert_needs_losses(UW())
    assert repr(UW()) == "UW(lr=0.01, initial_log_variance=0.0)"


def test_lightning_run_logs_the_joint_sgd_weights() -> None:
    assert_run_follows(UW(lr=0.3), 2, lambda seen: torch.tensor(sgd_reference(seen, lr=0.3)))
