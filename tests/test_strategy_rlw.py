"""RLW: draws from the per-step generator, reproducibility, argument checks, Lightning runs."""

from __future__ import annotations

import pytest
import torch
from loss_strategy_harness import call, fit_tiny, logged_weights
from strategy_properties import check_rejected

from lightning_mtl.strategies.base import step_generator
from lightning_mtl.strategies.rlw import RLW

CPU = torch.device("cpu")


def test_normal_weights_are_the_softmax_of_the_step_draw() -> None:
    rlw = RLW(seed=11)
    for step in (0, 1, 250):
        draw = torch.randn(3, generator=step_generator(11, step, CPU))
        torch.testing.assert_close(
            call(rlw, [1.0, 2.0, 3.0], step=step), torch.softmax(draw, 0), rtol=0, atol=0
        )
    # Stateless: a fresh instance, as after a resume, draws what the running one draws.
    assert torch.equal(call(RLW(seed=11), [1.0] * 3, step=250), call(rlw, [1.0] * 3, step=250))


def test_uniform_and_dirichlet_draws() -> None:
    uniform = torch.rand(4, generator=step_generator(2, 9, CPU))
    torch.testing.assert_close(
        call(RLW("uniform", seed=2), [1.0] * 4, step=9), torch.softmax(uniform, 0)
    )
    # Dirichlet(1, …, 1): independent Exp(1) draws, normalised; then the softmax, as in the
    # authors' code.
    exponential = torch.empty(4).exponential_(generator=step_generator(2, 9, CPU))
    simplex = exponential / exponential.sum()
    torch.testing.assert_close(
        call(RLW("dirichlet", seed=2), [1.0] * 4, step=9), torch.softmax(simplex, 0)
    )


@pytest.mark.parametrize("distribution", ["normal", "uniform", "dirichlet"])
def test_weights_are_on_the_simplex_and_change_with_step_and_seed(distribution: str) -> None:
    rlw = RLW(distribution, seed=0)  # type: ignore[arg-type]
    draws = torch.stack([call(rlw, [1.0, 1.0, 1.0], step=step) for step in range(400)])
    assert bool((draws > 0).all())
    torch.testing.assert_close(draws.sum(1), torch.ones(400))
    # Exchangeable draws: every objective gets 1/3 on average.
    torch.testing.assert_close(draws.mean(0), torch.full((3,), 1 / 3), rtol=0, atol=0.03)
    assert not torch.equal(draws[0], draws[1])
    other_seed = call(RLW(distribution, seed=1), [1.0, 1.0, 1.0], step=0)  # type: ignore[arg-type]
    assert not torch.equal(other_seed, draws[0])


def test_without_losses_and_state() -> None:
    rlw = RLW()
    direction = rlw.aggregate(torch.eye(2) * 3.0)
    torch.testing.assert_close(direction.sum(), torch.tensor(3.0))
    assert rlw.state_dict() == {}
    assert repr(rlw) == "RLW(distribution='normal', seed=0)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distribution": "bernoulli"}, "distribution must be"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"seed": True}, "seed must be an integer"),
    ],
)
def test_argument_checks(kwargs: dict[str, object], message: str) -> None:
    check_rejected(RLW, kwargs, message)


def test_lightning_run_logs_the_last_step_draw() -> None:
    module = fit_tiny(RLW(seed=7), max_epochs=1)
    last_step = module.trainer.global_step - 1
    draw = torch.randn(2, generator=step_generator(7, last_step, CPU))
    torch.testing.assert_close(logged_weights(module), torch.softmax(draw, 0))
