"""EPO: the device linear program against scipy's linprog, the two modes, fallback, training."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.optimize
import torch
from helpers import TinyModule, one_full_batch_step, trunk_reference
from host_sync import ops_per_iteration
from strategy_properties import KINDS, jacobian
from torch import Tensor

from lightning_mtl.strategies import GramianBatch, GramianWeighting, epo
from lightning_mtl.strategies.epo import EPO


@dataclass
class Reference:
    """The program of the step, as linprog sees it (minimise ``cost·β``), and its solution."""

    mode: str
    cost: np.ndarray
    rows: np.ndarray  # A_ub: rows · β ≤ bounds
    bounds: np.ndarray
    adjustment: np.ndarray  # a
    result: scipy.optimize.OptimizeResult


def reference_epo(losses: Tensor, preference: Tensor, gramian: Tensor, eps: float = 1e-4):
    """The rules of the authors' ``epo_lp.py``, in float64 numpy, solved by ``linprog``."""
    values, r, c = (t.double().numpy() for t in (losses, preference, gramian))
    count = len(values)
    rl = r * values
    shares = rl / rl.sum()
    positive = shares > 0
    mu = float(np.sum(shares[positive] * np.log(count * shares[positive])))
    with np.errstate(divide="ignore"):
        a = r * (np.log(count * shares) - mu)
    ca = c @ a
    if mu > eps:
        rhs = np.zeros(count)
        if (ca > 0).any():
            rhs = ca.copy()
            rhs[ca > 0] = -np.inf
            rhs[rl == rl.max()] = 0.0
        kept = np.isfinite(rhs)
        mode, cost, rows, bounds = "balance", -ca, -c[kept], -rhs[kept]
    else:
        mode, cost = "descent", -c.sum(0)
        rows = np.vstack([-c, -ca[None]])
        bounds = np.concatenate([np.zeros(count), [-min(ca.max(), 0.0)]])
    result = scipy.optimize.linprog(
        cost, A_ub=rows, b_ub=bounds, A_eq=np.ones((1, count)), b_eq=[1.0], bounds=(0, None)
    )
    return Reference(mode, cost, rows, bounds, a, result)


def _problem(kind: str, size: int, seed: int, on_ray: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients, positive losses and a preference; on the ray, ``r ∘ l`` is constant."""
    rows = jacobian(size, 96, seed=seed, kind=kind)
    generator = torch.Generator().manual_seed(seed)
    preference = torch.rand(size, generator=generator) + 0.5
    losses = torch.rand(size, generator=generator) * 2 + 0.1
    if on_ray:
        losses = 1.5 / preference
    return rows, losses, preference


def _epo(preference: Tensor, **kwargs) -> EPO:
    return EPO(preference={str(i): float(v) for i, v in enumerate(preference)}, **kwargs)


def _weights(strategy: EPO, rows: Tensor, losses: Tensor) -> Tensor:
    names = tuple(str(i) for i in range(len(rows)))
    batch = GramianBatch(names=names, losses=losses, gramian=rows @ rows.T)
    return strategy.weights(batch)


def _cases() -> list[tuple[str, int]]:
    sizes = {kind: (2, 3, 5, 16, 32) for kind in KINDS}
    sizes["random"] = (2, 3, 5, 16, 32, 64)
    return [(kind, size) for kind in KINDS for size in sizes[kind]]


@pytest.mark.parametrize("on_ray", [False, True], ids=["off_ray", "on_ray"])
@pytest.mark.parametrize(("kind", "size"), _cases())
def test_program_solution_matches_linprog(kind: str, size: int, on_ray: bool) -> None:
    rows, losses, preference = _problem(kind, size, seed=10 * size + 1, on_ray=on_ray)
    beta = _weights(_epo(preference), rows, losses).double().numpy() / size
    reference = reference_epo(losses, preference, rows @ rows.T)
    assert reference.result.status == 0
    assert reference.mode == ("descent" if on_ray else "balance")
    scale = np.abs(reference.cost).max()
    # Optimal: as good as linprog's optimum and feasible, to 1e-4 of the program's scale.
    assert reference.cost @ beta <= reference.result.fun + 1e-4 * scale
    assert (reference.rows @ beta - reference.bounds).max(initial=0.0) <= 1e-4 * np.abs(
        reference.rows
    ).max(initial=1.0)
    assert beta.sum() == pytest.approx(1.0) and beta.min() >= 0
    if kind != "duplicated":  # duplicated gradients make the optimal β non-unique
        np.testing.assert_allclose(beta, reference.result.x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["random", "collinear", "ill_conditioned", "with_zero_row"])
@pytest.mark.parametrize("size", [2, 3, 8, 32])
def test_on_the_preference_ray_every_objective_descends(kind: str, size: int) -> None:
    rows, losses, preference = _problem(kind, size, seed=size + 5, on_ray=True)
    epo = _epo(preference)
    direction = epo.aggregate(rows, losses=losses).double()
    assert float(epo.log_values()["non_uniformity"]) <= 1e-4
    products = rows.double() @ direction
    assert products.min() >= -1e-6 * float(rows.double().norm(dim=1).max() * direction.norm())


@pytest.mark.parametrize("size", [2, 3, 5, 8, 16, 32])
@pytest.mark.parametrize("seed", range(4))
def test_off_the_ray_the_update_reduces_the_non_uniformity(size: int, seed: int) -> None:
    """To first order the losses move by ``−J d``, and ``μ`` by ``−aᵀ J d / Σ r∘l``."""
    rows, losses, preference = _problem("random", size, seed=100 * seed + size, on_ray=False)
    epo = _epo(preference)
    direction = epo.aggregate(rows, losses=losses).double()
    assert float(epo.log_values()["non_uniformity"]) > 1e-4
    adjustment = torch.from_numpy(reference_epo(losses, preference, rows @ rows.T).adjustment)
    assert adjustment @ (rows.double() @ direction) > 0


def test_paper_example_and_mode_switch() -> None:
    gradients = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    balance = EPO().aggregate(gradients, losses=torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(balance, torch.tensor([2.0, 0.0]), rtol=0, atol=1e-6)
    # (1, 2) ∘ (2, 1) lies on the ray of preference (1, 2): descend, treating both alike.
    epo = EPO(preference={"0": 1.0, "1": 2.0})
    descent = epo.aggregate(gradients, losses=torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(descent, torch.tensor([1.0, 1.0]))
    assert float(epo.log_values()["non_uniformity"]) == pytest.approx(0.0, abs=1e-12)


def test_preference_by_name_in_row_order_and_up_to_scale() -> None:
    rows, losses, preference = _problem("random", 4, seed=8, on_ray=False)
    by_name = _epo(preference).aggregate(rows, losses=losses)
    in_order = EPO(preference=(3 * preference).tolist()).aggregate(rows, losses=losses)
    torch.testing.assert_close(in_order, by_name, rtol=1e-5, atol=1e-6)


def test_invariances() -> None:
    """Scale-equivariant in the gradients, invariant to the loss scale, permutation-equivariant."""
    rows, losses, preference = _problem("ill_conditioned", 6, seed=3, on_ray=False)
    plain = _epo(preference).aggregate(rows, losses=losses)
    for factor in (1e-3, 7.0):
        torch.testing.assert_close(
            _epo(preference).aggregate(rows * factor, losses=losses),
            plain * factor,
            rtol=1e-4,
            atol=1e-5 * factor * float(plain.norm()),
        )
    torch.testing.assert_close(
        _epo(preference).aggregate(rows, losses=losses * 30.0), plain, rtol=1e-4, atol=1e-6
    )
    order = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    epo = EPO(preference={str(i): float(v) for i, v in enumerate(preference)})
    permuted = epo.aggregate(rows[order], losses=losses[order], names=[str(int(i)) for i in order])
    torch.testing.assert_close(permuted, plain, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_finite_with_zero_and_non_positive_losses(kind: str) -> None:
    rows = jacobian(5, 32, seed=2, kind=kind)
    for losses in (torch.rand(5) + 0.1, torch.tensor([0.0, 1.0, 2.0, 0.5, 1.0])):
        assert torch.isfinite(EPO().aggregate(rows, losses=losses)).all()
    epo = EPO()
    assert torch.isfinite(epo.aggregate(rows, losses=torch.zeros(5))).all()
    assert float(epo.log_values()["non_uniformity"]) == 0.0  # all losses 0: on the ray
    # A loss ≤ 0 counts as l̂ = 0, the same as a loss of exactly 0.
    torch.testing.assert_close(
        EPO().aggregate(rows, losses=torch.tensor([-1.0, 1.0, 2.0, 0.5, 1.0])),
        EPO().aggregate(rows, losses=torch.tensor([0.0, 1.0, 2.0, 0.5, 1.0])),
    )


def test_infeasible_program_falls_back_to_the_preference() -> None:
    rows = torch.tensor([[0.451, -0.915], [-1.016, -0.548], [0.581, -0.152]])
    losses = torch.tensor([1.0089, 1.0101, 1.0104])  # near the ray: descent mode
    reference = reference_epo(losses, torch.ones(3), rows @ rows.T)
    assert reference.mode == "descent" and reference.result.status == 2  # infeasible
    torch.testing.assert_close(EPO().aggregate(rows, losses=losses), rows.sum(0))


def test_non_finite_inputs_give_a_non_finite_update() -> None:
    rows = jacobian(3, 8, seed=3)
    losses = torch.tensor([1.0, 2.0, 3.0])
    broken = rows.clone()
    broken[1, 1] = torch.inf
    assert not torch.isfinite(EPO().aggregate(broken, losses=losses)).any()
    assert not torch.isfinite(
        EPO().aggregate(rows, losses=torch.tensor([1.0, math.nan, 2.0]))
    ).any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preference": {"a": 0.0, "b": 1.0}}, "EPO preference weights must be positive"),
        ({"preference": [1.0, 0.0]}, "EPO preference weights must be positive"),
        ({"preference": {"a": math.inf}}, "EPO preference weights must be finite"),
        ({"eps": -1.0}, "eps must be a non-negative number"),
        ({"iterations": 0}, "iterations must be a positive integer"),
        ({"tol": 0.0}, "tol must be a positive number"),
    ],
)
def test_argument_checks(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EPO(**kwargs)


def test_needs_losses_gramian_and_every_preference() -> None:
    rows = torch.eye(2)
    with pytest.raises(ValueError, match="losses"):
        EPO().aggregate(rows)
    assert isinstance(EPO(), GramianWeighting)  # the engine hands it the Gramian
    with pytest.raises(ValueError, match="EPO preference must name every objective"):
        EPO(preference={"a": 1.0}).aggregate(rows, losses=torch.ones(2), names=["a", "b"])
    with pytest.raises(ValueError, match="EPO preference has 3 weights for 2 objectives"):
        EPO(preference=[1.0, 2.0, 3.0]).aggregate(rows, losses=torch.ones(2))
    assert repr(EPO()) == (
        "EPO(preference=None, eps=0.0001, iterations=40, tol=1e-08, solve_on='host')"
    )


def test_no_host_reads_of_tensor_values() -> None:
    """Meta tensors carry no values: any host read of one (``.item()``, ``bool``) would raise,
    so on the device path the mode switch and the interior-point iterations run without host
    synchronisation."""
    batch = GramianBatch(
        names=tuple("abcd"),
        losses=torch.empty(4, device="meta"),
        gramian=torch.empty(4, 4, device="meta"),
    )
    preference = {"a": 1.0, "b": 2.0, "c": 1.0, "d": 0.5}
    assert EPO(preference=preference, solve_on="device").weights(batch).device.type == "meta"


def test_lightning_step_writes_the_epo_direction() -> None:
    preference = {"cls": 1.0, "rep": 3.0}
    initial, change = one_full_batch_step(TinyModule(EPO(preference=preference)))
    losses, rows, head_gradient = trunk_reference(initial)
    values = torch.stack([losses["cls"], losses["rep"]]).detach()
    reference = reference_epo(values, torch.tensor([1.0, 3.0]), rows @ rows.T)
    weights = 2 * torch.from_numpy(reference.result.x).float()
    expected = torch.cat([weights @ rows, head_gradient])
    torch.testing.assert_close(change, expected, rtol=1e-4, atol=1e-6)


def test_an_interior_point_iteration_dispatches_few_ops(accelerator_paths: None) -> None:
    """On an accelerator the iteration count is fixed, so the ops of an iteration are the cost
    of the solver there: 66 (50 of them kernels), where the first version took 155."""
    rows, losses = jacobian(10, 32, seed=0), torch.linspace(0.5, 2.0, 10)
    assert ops_per_iteration(lambda n: EPO(iterations=n).aggregate(rows, losses=losses)) <= 66


@pytest.mark.parametrize("on_ray", [False, True])
def test_the_early_stop_on_the_cpu_gives_the_full_runs_result(
    accelerator_paths: None, on_ray: bool
) -> None:
    rows, losses, preference = _problem("ill_conditioned", 12, seed=3, on_ray=on_ray)
    full = _weights(_epo(preference), rows, losses)  # the fixture disables the early stop
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(epo, "settled_on_host", lambda done: bool(done.all()))
        early = _weights(_epo(preference), rows, losses)
    assert torch.equal(full, early)
