"""Balancing arithmetic in full precision under autocast: the objectives are differentiated in the
user's precision, but the Gramian, the solver's input and output, the combined direction and the
strategies' state are float32 or wider (before, under ``bf16-mixed`` the Gramian and the update
were bfloat16, about 3 significant digits)."""

from __future__ import annotations

import pytest
import torch
from helpers import DATA, TinyModule, grads_of, one_full_batch_step
from torch import Tensor

from lightning_mtl.strategies import MGDA, RGB, GramianBatch, JacobianBatch, PCGrad


class WatchedMGDA(MGDA):
    """MGDA that keeps the Gramian it was handed."""

    def weights(self, batch: GramianBatch) -> Tensor:
        self.gramian = batch.gramian
        return super().weights(batch)


class WatchedPCGrad(PCGrad):
    """PCGrad that keeps the Jacobian it was handed and the update it returned."""

    def edit(self, batch: JacobianBatch):  # type: ignore[no-untyped-def]
        result = super().edit(batch)
        self.seen = (batch.jacobian, result.direction)
        return result


def _bf16_rows(initial: torch.nn.Module) -> Tensor:
    """The trunk's per-objective gradients of the bf16 forward pass, as float32 (what the
    engine differentiates), computed independently with one backward pass per objective."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = initial.losses(*DATA.tensors)
    trunk = list(initial.trunk.parameters())
    return torch.stack([grads_of(losses[name].float(), trunk) for name in ("cls", "rep")])


def test_under_bf16_the_gramian_and_the_update_are_the_float32_computation() -> None:
    strategy = WatchedMGDA()
    initial, change = one_full_batch_step(TinyModule(strategy), precision="bf16-mixed")
    rows = _bf16_rows(initial).double()
    gramian = rows @ rows.T
    assert strategy.gramian.dtype == torch.float32
    # float32 rounding of the entries; a bfloat16 Gramian is off by up to ~4e-3 relative.
    torch.testing.assert_close(strategy.gramian.double(), gramian, rtol=1e-5, atol=1e-9)
    weights = MGDA().weights(
        GramianBatch(names=("cls", "rep"), losses=torch.ones(2), gramian=gramian)
    )
    expected = weights @ rows
    torch.testing.assert_close(change[: rows.shape[1]].double(), expected, rtol=1e-4, atol=1e-7)


def test_under_bf16_a_jacobian_strategy_sees_and_returns_float32() -> None:
    strategy = WatchedPCGrad()
    initial, change = one_full_batch_step(TinyModule(strategy), precision="bf16-mixed")
    jacobian, direction = strategy.seen
    assert jacobian.dtype == direction.dtype == torch.float32
    expected = PCGrad().aggregate(_bf16_rows(initial))
    torch.testing.assert_close(direction, expected, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(change[: len(direction)], direction, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_strategy_state_stays_float32(precision: str) -> None:
    module = TinyModule(RGB(alpha_steps=3))
    one_full_batch_step(module, precision=precision)
    state = module.balancing_strategy.ema_direction
    assert state is not None and state.dtype == torch.float32
