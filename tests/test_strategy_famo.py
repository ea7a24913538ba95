"""FAMO: weights by hand, the authors' algorithm with torch's Adam, state, resume, Lightning."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from loss_strategy_harness import (
    assert_needs_losses,
    assert_no_host_reads,
    assert_restored_copy_continues,
    assert_resume_reproduces,
    assert_run_follows,
    call,
)
from strategy_properties import check_rejected
from torch import Tensor

from lightning_mtl.strategies.famo import FAMO

LOSSES = [
    [1.0, 3.0, 0.5],
    [0.8, 2.9, 0.6],
    [0.7, 2.0, 0.55],
    [0.9, 1.5, 0.4],
    [0.5, 1.4, 0.45],
    [0.45, 1.0, 0.3],
]


def authors_reference(
    losses: list[list[float]], lr: float, gamma: float, min_losses: list[float] | None = None
) -> Tensor:
    """The authors' FAMO with torch's Adam, updated between consecutive calls' losses.

    The weights are the gradient of their surrogate ``Σ z log(L − L*) / c`` (``c`` detached)
    with respect to the losses.
    """
    logits = torch.zeros(len(losses[0]), requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=lr, weight_decay=gamma)
    floor = torch.tensor(min_losses or [0.0] * len(losses[0]))
    history = []
    previous = None
    for step in losses:
        current = torch.tensor(step)
        if previous is not None:
            delta = (previous - floor + 1e-8).log() - (current - floor + 1e-8).log()
            optimizer.zero_grad()
            logits.grad = torch.autograd.grad(torch.softmax(logits, -1), logits, delta)[0]
            optimizer.step()
        values = current.clone().requires_grad_(True)
        z = torch.softmax(logits.detach(), -1)
        gap = values - floor + 1e-8
        c = (z / gap).sum().detach()
        history.append(torch.autograd.grad((gap.log() * z / c).sum(), values)[0])
        previous = current
    return torch.stack(history)


def test_first_weights_are_inverse_losses() -> None:
    torch.testing.assert_close(call(FAMO(), [1.0, 3.0]), torch.tensor([0.75, 0.25]))


def test_second_weights_by_hand() -> None:
    """Adam's first step moves each logit by lr against the sign of its gradient."""
    famo = FAMO(lr=0.025, gamma=0.0)
    call(famo, [1.0, 1.0])
    # δ = (log 2, 0); the gradient z ⊙ (δ − ⟨z, δ⟩) = (log 2 / 4, −log 2 / 4): ξ = (−0.025, 0.025),
    # so the objective whose loss halved gets less weight than 1/L alone would give it.
    weights = call(famo, [0.5, 1.0])
    a, b = math.exp(-0.025) / 0.5, math.exp(0.025) / 1.0
    torch.testing.assert_close(weights, torch.tensor([a / (a + b), b / (a + b)]))


@pytest.mark.parametrize(
    ("gamma", "min_losses"), [(1e-3, None), (0.05, {"task1": 0.5, "task2": 0.1})]
)
def test_matches_the_authors_algorithm(gamma: float, min_losses: dict[str, float] | None) -> None:
    famo = FAMO(lr=0.1, gamma=gamma, min_losses=min_losses)
    weights = torch.stack([call(famo, losses) for losses in LOSSES])
    floor = [(min_losses or {}).get(f"task{i}", 0.0) for i in range(3)]
    torch.testing.assert_close(weights, authors_reference(LOSSES, 0.1, gamma, floor))
    torch.testing.assert_close(weights.sum(1), torch.ones(len(LOSSES)))


def test_state_round_trip_continues_identically() -> None:
    straight = assert_restored_copy_continues(lambda: FAMO(lr=0.1), LOSSES, cut=3)
    assert straight.steps == len(LOSSES) - 1


def test_no_host_reads() -> None:
    assert_no_host_reads(FAMO(min_losses={"task1": 0.5}))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"lr": float("inf")}, "lr must be a positive number"),
        ({"gamma": -1e-3}, "gamma must be a non-negative number"),
        ({"min_losses": {"a": float("nan")}}, r"min_losses\['a'\] must be finite"),
    ],
)
def test_argument_checks(kwargs: dict[str, object], message: str) -> None:
    check_rejected(FAMO, kwargs, message)


def test_min_losses_must_name_objectives_and_losses_are_needed() -> None:
    with pytest.raises(ValueError, match=r"unknown objectives \['depth'\]"):
        FAMO(min_losses={"depth": 0.1}).setup(["cls", "rep"])
    assert_needs_losses(FAMO())
    assert repr(FAMO()) == "FAMO(lr=0.025, gamma=0.001, min_losses=None)"


def test_lightning_run_logs_the_authors_weights() -> None:
    assert_run_follows(FAMO(lr=0.1), 2, lambda seen: authors_reference(seen, lr=0.1, gamma=1e-3))


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    assert_resume_reproduces(lambda: FAMO(lr=0.1), tmp_path)
