"""RLW: draws from the per-step generator, reproducibility, argument checks, Lightning runs."""

from __future__ import annotations

import math

import pytest
import torch
from loss_strategy_harness import call, fit_tiny, logged_weights
from scipy import stats
from strategy_properties import check_rejected

from lightning_mtl.strategies.rlw import RLW


def _draws(rlw: RLW, steps: int = 1000, count: int = 3) -> torch.Tensor:
    """``[steps, count]`` float64 weights of steps 0 … steps − 1."""
    return torch.stack([call(rlw, [1.0] * count, step=step) for step in range(steps)]).double()


def test_normal_weights_are_the_softmax_of_standard_normal_draws() -> None:
    # softmax(z) = w, so log w_i − log w_j = z_i − z_j: for z ~ N(0, I) (the paper's default)
    # the scaled difference is standard normal and the centred draws' squared norm is χ²(T − 1).
    weights = _draws(RLW(seed=11))
    logs = weights.log()
    difference = ((logs[:, 0] - logs[:, 1]) / math.sqrt(2)).numpy()
    assert stats.kstest(difference, "norm").pvalue > 1e-3
    centred = logs - logs.mean(1, keepdim=True)
    assert stats.kstest(centred.pow(2).sum(1).numpy(), stats.chi2(df=2).cdf).pvalue > 1e-3
    # Stateless: a fresh instance, as after a resume, draws what the running one draws.
    rlw = RLW(seed=11)
    assert torch.equal(call(RLW(seed=11), [1.0] * 3, step=250), call(rlw, [1.0] * 3, step=250))


def test_uniform_and_dirichlet_draws() -> None:
    # Uniform on [0, 1]: z_i − z_j is triangular on [−1, 1], so no log-ratio exceeds 1.
    logs = _draws(RLW("uniform", seed=2)).log()
    difference = (logs[:, 0] - logs[:, 1]).numpy()
    assert abs(difference).max() <= 1.0 + 1e-6
    triangular = stats.triang(c=0.5, loc=-1.0, scale=2.0)
    assert stats.kstest(difference, triangular.cdf).pvalue > 1e-3
    # Dirichlet(1, 1, 1), then the softmax (the authors' code): the draw s is recovered as
    # log w − mean(log w) + 1/T (it sums to 1); it lies on the simplex and s_0 ~ Beta(1, 2).
    logs = _draws(RLW("dirichlet", seed=2)).log()
    simplex = logs - logs.mean(1, keepdim=True) + 1 / 3
    assert float(simplex.min()) >= -1e-5
    torch.testing.assert_close(simplex.sum(1), torch.ones(len(simplex), dtype=torch.float64))
    assert stats.kstest(simplex[:, 0].numpy(), stats.beta(1, 2).cdf).pvalue > 1e-3


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
    # The run's last weights are those of its last optimizer step, whatever came before.
    torch.testing.assert_close(logged_weights(module), call(RLW(seed=7), [0.0, 0.0], last_step))
    assert not torch.allclose(logged_weights(module), call(RLW(seed=7), [0.0, 0.0], last_step - 1))
