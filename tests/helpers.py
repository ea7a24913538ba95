"""Small strategies and models shared by the tests (not part of the package)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_mtl.strategies.base import GradientBalancingStrategy, ObjectiveBatch, Requirement


class UnitRowMean(GradientBalancingStrategy):
    """Mean of the unit-normalised rows: a Jacobian strategy that is nonlinear in the rows."""

    requirement = Requirement.JACOBIAN

    def direction(self, batch: ObjectiveBatch) -> Tensor:
        assert batch.jacobian is not None
        rows = batch.jacobian
        return (rows / rows.norm(dim=1, keepdim=True)).mean(0)


class InverseNormWeights(GradientBalancingStrategy):
    """Weights 1/‖g_t‖ from the Gramian's diagonal: a Gramian strategy, nonlinear in the scale."""

    requirement = Requirement.GRAMIAN

    def weights(self, batch: ObjectiveBatch) -> Tensor:
        assert batch.gramian is not None
        return batch.gramian.diagonal().rsqrt()


def unit_row_mean(rows: Tensor) -> Tensor:
    """Reference for UnitRowMean, written out with a Python loop."""
    total = torch.zeros_like(rows[0])
    for row in rows:
        total += row / torch.sqrt((row * row).sum())
    return total / len(rows)


class TwoHeadNet(nn.Module):
    """trunk → features → two heads; objectives ``cls`` and ``rep``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())
        self.cls_head = nn.Linear(6, 3)
        self.rep_head = nn.Linear(6, 2)

    def features(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def losses(self, x: Tensor, y: Tensor, z: Tensor | None = None) -> dict[str, Tensor]:
        z = self.features(x) if z is None else z
        cls = nn.functional.cross_entropy(self.cls_head(z), y)
        rep = (self.rep_head(z) - 0.5).pow(2).mean()
        return {"cls": cls, "rep": rep}


def grads_of(loss: Tensor, params: list[nn.Parameter]) -> Tensor:
    """Flattened gradient of ``loss`` with respect to ``params`` (zeros where unused)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )
