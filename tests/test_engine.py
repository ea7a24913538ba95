"""The engine: Jacobians, scopes, and the balanced gradient written into .grad."""

from __future__ import annotations

import pytest
import torch
from helpers import InverseNormWeights, TwoHeadNet, UnitRowMean, grads_of, unit_row_mean
from torch import nn

from lightning_mtl.engine import (
    Backend,
    GradientEngine,
    JacobianComputer,
    Scope,
    reachable_leaves,
    shared_parameters,
    submodule_parameters,
    used_parameters,
)
from lightning_mtl.engine.geometry import cosine_matrix, cosines_to, degrees
from lightning_mtl.strategies import PGI, LinearScalarization, TrainingProgress


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def _objectives(net: TwoHeadNet) -> tuple[tuple[str, ...], list[torch.Tensor]]:
    losses = net.losses(*_batch())
    return tuple(losses), list(losses.values())


@pytest.mark.parametrize("chunk_size", [None, 1, 2])
def test_jacobian_rows_are_per_objective_gradients(chunk_size: int | None) -> None:
    net = TwoHeadNet()
    _, objectives = _objectives(net)
    params = list(net.trunk.parameters())
    jacobian = JacobianComputer(chunk_size)(torch.stack(objectives), params)
    expected = torch.stack([grads_of(loss, params) for loss in objectives])
    torch.testing.assert_close(jacobian, expected)


def test_jacobian_forms_agree_and_unreached_heads_give_zeros() -> None:
    net = TwoHeadNet()
    _, objectives = _objectives(net)
    params = list(net.parameters())
    batched = JacobianComputer(form="batched")(torch.stack(objectives), params)
    looped = JacobianComputer(form="loop")(torch.stack(objectives), params)
    torch.testing.assert_close(looped, batched)
    # A head the objective does not reach contributes a zero block.
    rep_head = net.rep_head.weight.numel() + net.rep_head.bias.numel()
    assert torch.all(batched[0, -rep_head:] == 0)


def test_jacobian_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        JacobianComputer(0)
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="1-D"):
        JacobianComputer()(w.sum(), [w])
    with pytest.raises(ValueError, match="no inputs"):
        JacobianComputer()(torch.stack([w.sum()]), [])


def test_scope_discovery_follows_the_graph() -> None:
    net = TwoHeadNet()
    _, objectives = _objectives(net)
    trainable = list(net.parameters())
    assert [id(p) for p in shared_parameters(objectives, trainable)] == [
        id(p) for p in net.trunk.parameters()
    ]
    assert len(used_parameters(objectives, trainable)) == len(trainable)
    assert reachable_leaves(objectives[1]) == {
        id(p) for p in [*net.trunk.parameters(), *net.rep_head.parameters()]
    }
    assert submodule_parameters(net, ["cls_head"]) == list(net.cls_head.parameters())
    with pytest.raises(ValueError, match="unknown submodule"):
        submodule_parameters(net, ["nope"])
    with pytest.raises(ValueError, match="no trainable parameter"):
        submodule_parameters(net, ["trunk.1"])


def _scope(net: TwoHeadNet) -> Scope:
    return Scope(
        parameters=list(net.trunk.parameters()),
        others=[*net.cls_head.parameters(), *net.rep_head.parameters()],
    )


def _written(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


@pytest.mark.parametrize(
    ("strategy", "combine"),
    [
        (UnitRowMean(), unit_row_mean),
        (InverseNormWeights(), lambda rows: (rows / rows.norm(dim=1, keepdim=True)).sum(0)),
    ],
)
def test_balanced_step_writes_strategy_direction_and_plain_sum_outside(strategy, combine) -> None:
    net = TwoHeadNet()
    names, objectives = _objectives(net)
    trunk = list(net.trunk.parameters())
    heads = [*net.cls_head.parameters(), *net.rep_head.parameters()]
    rows = torch.stack([grads_of(loss, trunk) for loss in objectives])
    expected_heads = grads_of(objectives[0] + objectives[1], heads)
    report = (
        GradientEngine()
        .step(
            names,
            torch.stack(objectives),
            strategy,
            _scope(net),
            TrainingProgress(),
            Backend(),
            observed={"shared": None},
        )
        .observed
    )
    torch.testing.assert_close(_written(trunk), combine(rows))
    torch.testing.assert_close(_written(heads), expected_heads)
    torch.testing.assert_close(report["shared"].jacobian, rows)
    torch.testing.assert_close(report["shared"].update, combine(rows))


def test_loss_strategy_is_one_weighted_backward() -> None:
    net = TwoHeadNet()
    names, objectives = _objectives(net)
    params = list(net.parameters())
    expected = grads_of(0.25 * objectives[0] + 0.75 * objectives[1], params)
    calls: list[torch.Tensor] = []

    def backward(loss: torch.Tensor) -> None:
        calls.append(loss)
        loss.backward()

    report = (
        GradientEngine()
        .step(
            names,
            torch.stack(objectives),
            PGI(alpha=0.25),
            Scope(),
            TrainingProgress(),
            Backend(backward=backward),
        )
        .observed
    )
    assert len(calls) == 1 and report == {}
    torch.testing.assert_close(_written(params), expected)


def test_observed_custom_scope_reports_jacobian_and_applied_update() -> None:
    net = TwoHeadNet()
    names, objectives = _objectives(net)
    layer = list(net.trunk[0].parameters())
    rows = torch.stack([grads_of(loss, layer) for loss in objectives])
    report = (
        GradientEngine()
        .step(
            names,
            torch.stack(objectives),
            LinearScalarization({"cls": 2.0}),
            Scope(),
            TrainingProgress(),
            Backend(),
            observed={"first": layer},
        )
        .observed
    )
    torch.testing.assert_close(report["first"].jacobian, rows)
    torch.testing.assert_close(report["first"].update, 2.0 * rows[0] + rows[1])


def test_representation_scope_balances_feature_gradients() -> None:
    net = TwoHeadNet()
    x, y = _batch()
    features = net.features(x)
    losses = net.losses(x, y, features)
    objectives = list(losses.values())
    trunk = list(net.trunk.parameters())
    heads = [*net.cls_head.parameters(), *net.rep_head.parameters()]
    rows = torch.stack([grads_of(loss, [features]) for loss in objectives])
    feature_direction = unit_row_mean(rows).view_as(features)
    expected_trunk = torch.cat(
        [
            g.reshape(-1)
            for g in torch.autograd.grad(features, trunk, feature_direction, retain_graph=True)
        ]
    )
    expected_heads = grads_of(objectives[0] + objectives[1], heads)
    GradientEngine().step(
        tuple(losses),
        torch.stack(objectives),
        UnitRowMean(),
        Scope(representation=features, trunk=trunk, others=heads),
        TrainingProgress(),
        Backend(),
    )
    torch.testing.assert_close(_written(trunk), expected_trunk)
    torch.testing.assert_close(_written(heads), expected_heads)


def test_loss_scale_is_removed_before_the_strategy_and_restored_after() -> None:
    net = TwoHeadNet()
    names, objectives = _objectives(net)
    trunk = list(net.trunk.parameters())
    rows = torch.stack([grads_of(loss, trunk) for loss in objectives])
    scale = torch.tensor(1024.0)
    GradientEngine().step(
        names,
        torch.stack(objectives),
        InverseNormWeights(),
        _scope(net),
        TrainingProgress(),
        Backend(loss_scale=scale),
    )
    # InverseNormWeights is not scale-invariant: had it seen scaled rows, the result would differ.
    expected = (rows / rows.norm(dim=1, keepdim=True)).sum(0) * 1024.0
    torch.testing.assert_close(_written(trunk), expected)


def test_overflow_under_a_loss_scale_reaches_the_written_gradient() -> None:
    class Finite(UnitRowMean):
        def direction(self, batch):  # type: ignore[no-untyped-def]
            return torch.ones(batch.jacobian.shape[1])  # a solver that hides bad input

    w = torch.tensor([1.0, 2.0], requires_grad=True)
    objectives = torch.stack([(w * torch.tensor([float("inf"), 1.0])).sum(), w.sum()])
    GradientEngine().step(
        ("a", "b"),
        objectives,
        Finite(),
        Scope(parameters=[w]),
        TrainingProgress(),
        Backend(loss_scale=torch.tensor(2.0)),
    )
    assert not torch.isfinite(w.grad).all()


def test_geometry_matches_hand_computed_angles() -> None:
    rows = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    cosines = cosine_matrix(rows)
    torch.testing.assert_close(cosines[0, 1], torch.tensor(2**-0.5))
    torch.testing.assert_close(degrees(cosines)[0, 1], torch.tensor(45.0))
    assert cosines[2, 0] == 0  # a zero gradient reads as orthogonal, not NaN
    torch.testing.assert_close(
        degrees(cosines_to(rows[:2], torch.tensor([0.0, 1.0, 0.0]))), torch.tensor([90.0, 45.0])
    )
