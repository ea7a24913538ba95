"""The Gramian-based methods in real Lightning training: the written update against each method's
float64 reference, computed from per-objective gradients taken by autograd."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from helpers import DATA, TinyModule, TwoHeadNet, grads_of, make_trainer
from test_strategy_aligned_mtl import aligned_mtl_reference
from test_strategy_cagrad import cagrad_reference
from test_strategy_imtl_g import imtl_g_reference
from test_strategy_mgda import mgda_reference, normalised_mgda_reference
from test_strategy_upgrad import upgrad_reference
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_mtl.strategies.aligned_mtl import AlignedMTL
from lightning_mtl.strategies.base import GradientBalancingStrategy, GramianBatch, Requirement
from lightning_mtl.strategies.cagrad import CAGrad
from lightning_mtl.strategies.imtl_g import IMTLG
from lightning_mtl.strategies.mgda import MGDA
from lightning_mtl.strategies.upgrad import UPGrad

Reference = Callable[[Tensor, Tensor], Tensor]


def _mgda_loss_plus(matrix: Tensor, losses: Tensor) -> Tensor:
    return normalised_mgda_reference(matrix, losses.double() * matrix.double().norm(dim=1))


CASES: list[tuple[Callable[[], GradientBalancingStrategy], Reference]] = [
    (MGDA, mgda_reference),
    (lambda: MGDA("loss+"), _mgda_loss_plus),
    (CAGrad, cagrad_reference),
    (UPGrad, upgrad_reference),
    (IMTLG, imtl_g_reference),
    (AlignedMTL, aligned_mtl_reference),
]


def _parameters(net: torch.nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


@pytest.mark.parametrize(
    ("make", "reference"),
    CASES,
    ids=["mgda", "mgda-loss+", "cagrad", "upgrad", "imtl_g", "aligned_mtl"],
)
def test_one_full_batch_sgd_step_applies_the_methods_update(make, reference) -> None:  # type: ignore[no-untyped-def]
    strategy = make()
    assert strategy.requirement is Requirement.GRAMIAN
    module = TinyModule(strategy, lr=1.0)
    module.net = TwoHeadNet(seed=5)  # its two objectives conflict on the trunk
    initial: TwoHeadNet = copy.deepcopy(module.net)
    make_trainer(max_steps=1).fit(module, DataLoader(DATA, batch_size=len(DATA)))
    change = _parameters(initial) - _parameters(module.net)

    losses = initial.losses(*DATA.tensors)
    trunk = list(initial.trunk.parameters())
    heads = [*initial.cls_head.parameters(), *initial.rep_head.parameters()]
    rows = torch.stack([grads_of(losses["cls"], trunk), grads_of(losses["rep"], trunk)])
    assert float(rows[0] @ rows[1]) < 0
    values = torch.stack([losses["cls"], losses["rep"]]).detach()
    expected_trunk = reference(rows, values).float()
    expected_heads = grads_of(losses["cls"] + losses["rep"], heads)

    width = len(expected_trunk)
    scale = float(expected_trunk.abs().max())
    torch.testing.assert_close(change[:width], expected_trunk, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(change[width:], expected_heads)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(MGDA, id="mgda"),
        pytest.param(CAGrad, id="cagrad"),
        pytest.param(UPGrad, id="upgrad"),
        pytest.param(IMTLG, id="imtl_g"),
        pytest.param(AlignedMTL, id="aligned_mtl"),
        pytest.param(lambda: AlignedMTL("median"), id="aligned_mtl-median"),
    ],
)
def test_weights_make_no_host_synchronisation(make) -> None:  # type: ignore[no-untyped-def]
    rows = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)).cuda()
    names = ("a", "b", "c", "d")
    strategy = make()
    strategy.setup(names)
    batch = GramianBatch(names=names, losses=rows.sum(1).abs(), gramian=rows @ rows.T)
    strategy.weights(batch)  # builds the cached device vectors
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        weights = strategy.weights(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(weights).all()
