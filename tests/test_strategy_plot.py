"""PLOT: class preference, variability collapse, and the sharpness-aware step through Lightning."""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import flat_params, make_trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mtl import MultiObjectiveMixin, per_class_objectives
from lightning_mtl.callbacks import TemporalMOO
from lightning_mtl.losses import per_class_loss_std, variability_collapse_loss
from lightning_mtl.strategies import PLOT, CAGrad
from lightning_mtl.strategies.plot import class_preference

NUM_CLASSES = 4
INPUTS = torch.randn(24, 5, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0] * 12 + [1] * 8 + [2] * 4)  # class 3 absent, like a rare class


def test_class_preference_by_hand() -> None:
    counts = [500, 50, 5]
    raw = [math.log(500 / n + 0.01) for n in counts]
    assert class_preference(counts) == pytest.approx([r / sum(raw) for r in raw])
    with pytest.raises(ValueError, match="positive integers"):
        class_preference([10, 0])


def test_per_class_std_and_variability_collapse_by_hand() -> None:
    losses = torch.tensor([1.0, 2.0, 4.0, 3.0, 7.0], requires_grad=True)
    targets = torch.tensor([0, 0, 0, 2, 1])  # class 1 a singleton, class 3 absent
    spread = per_class_loss_std(losses, targets, 4)
    torch.testing.assert_close(spread, torch.tensor([torch.tensor([1.0, 2.0, 4.0]).std(), 0, 0, 0]))
    loss = variability_collapse_loss(losses, targets, 4)
    torch.testing.assert_close(loss, torch.tensor([1.0, 2.0, 4.0]).std())  # one class measured
    (grad,) = torch.autograd.grad(loss, losses)
    assert torch.isfinite(grad).all() and grad[3:].abs().sum() == 0
    none_measured = variability_collapse_loss(losses[3:], targets[3:], 4)
    assert float(none_measured) == 0.0


class LongTailNet(MultiObjectiveMixin, pl.LightningModule):
    """body → layer3 → fc; PLOT balances layer3."""

    def __init__(self, strategy: object, lr: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Linear(5, 6), nn.Tanh())
        self.layer3 = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        self.fc = nn.Linear(6, NUM_CLASSES)
        self.lr = lr
        self.configure_balancing(strategy, scope=["layer3"])  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.layer3(self.body(x)))

    def compute_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        per_sample = F.cross_entropy(self(x), y, reduction="none")
        if self.objective_pass == "perturb":
            return {"base": per_sample.mean()}  # stands for the base method's (mixup) loss
        present = sorted(set(y.tolist()))
        return class_objectives(per_sample, y, present)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def class_objectives(per_sample: Tensor, y: Tensor, present: list[int]) -> dict[str, Tensor]:
    """Per-class L_SAM + L_vc parts for the classes present: L_c + Std_c / K'."""
    split = per_class_objectives(per_sample, y, NUM_CLASSES)
    spread = per_class_loss_std(per_sample, y, NUM_CLASSES)
    measured = sum(1 for c in present if int((y == c).sum()) >= 2)
    return {f"class_{c}": split[f"class_{c}"] + spread[c] / measured for c in present}


def _grads(loss: Tensor, params: list[nn.Parameter]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])


@pytest.mark.parametrize("keep", [0.0, 1.0])
def test_sharpness_aware_step_matches_the_procedure_by_hand(keep: float) -> None:
    rho = 0.05
    counts = [120, 40, 10, 2]
    module = LongTailNet(PLOT(rho=rho, class_counts=counts, keep_perturbation=keep))
    reference = copy.deepcopy(module)
    make_trainer(max_steps=1).fit(module, DataLoader(TensorDataset(INPUTS, LABELS), batch_size=24))

    layer3 = list(reference.layer3.parameters())
    others = [*reference.body.parameters(), *reference.fc.parameters()]
    base = F.cross_entropy(reference(INPUTS), LABELS)
    g_scope, g_others = _grads(base, layer3), _grads(base, others)
    epsilon = rho * g_scope / g_scope.norm()
    perturbed = copy.deepcopy(reference)
    with torch.no_grad():
        offset = 0
        for p in perturbed.layer3.parameters():
            p.add_(epsilon[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
    per_sample = F.cross_entropy(perturbed(INPUTS), LABELS, reduction="none")
    objectives = class_objectives(per_sample, LABELS, [0, 1, 2])
    rows = torch.stack(
        [_grads(loss, list(perturbed.layer3.parameters())) for loss in objectives.values()]
    )
    preference = class_preference(counts)
    b = {name: preference[int(name[-1])] for name in objectives}
    direction = CAGrad(c=0.5, preference=b).aggregate(rows, names=list(objectives))

    start_l3 = torch.cat([p.detach().reshape(-1) for p in reference.layer3.parameters()])
    end_l3 = torch.cat([p.detach().reshape(-1) for p in module.layer3.parameters()])
    torch.testing.assert_close(end_l3, start_l3 + keep * epsilon - direction, rtol=1e-5, atol=1e-6)
    start_others = torch.cat([p.detach().reshape(-1) for p in others])
    end_others = torch.cat(
        [p.detach().reshape(-1) for p in [*module.body.parameters(), *module.fc.parameters()]]
    )
    torch.testing.assert_close(end_others, start_others - g_others, rtol=1e-5, atol=1e-6)


def test_temporal_moo_turns_plot_off_after_epoch_e() -> None:
    passes: list[str] = []

    class Recording(LongTailNet):
        def compute_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            passes.append(self.objective_pass)
            return super().compute_objectives(batch, batch_idx)

    module = Recording(PLOT(rho=0.01), lr=0.1)
    loader = DataLoader(TensorDataset(INPUTS, LABELS), batch_size=24)
    make_trainer(max_epochs=3, callbacks=[TemporalMOO(epochs=2)]).fit(module, loader)
    # SFE (epochs 0, 1): a perturbing pass then a balancing pass; TSO (epoch 2): plain training.
    assert passes == ["perturb", "balance", "perturb", "balance", "balance"]
    assert torch.isfinite(flat_params(module)).all()


def test_plot_checks() -> None:
    with pytest.raises(ValueError, match="rho"):
        PLOT(rho=0.0)
    with pytest.raises(ValueError, match="keep_perturbation"):
        PLOT(keep_perturbation=2.0)
    with pytest.raises(ValueError, match="class index below 2"):
        PLOT(class_counts=[5, 1]).aggregate(torch.eye(2), names=["class_0", "class_7"])
    module = LongTailNet(PLOT())
    module.configure_balancing(PLOT(), scope="shared")
    with pytest.raises(ValueError, match="perturbs named layers"):
        make_trainer(max_steps=1).fit(
            module, DataLoader(TensorDataset(INPUTS, LABELS), batch_size=24)
        )
