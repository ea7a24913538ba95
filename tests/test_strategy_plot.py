"""PLOT: class preference, variability collapse, and the sharpness-aware step through Lightning."""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import flat_params, make_trainer
from reference_solvers import cagrad_dual_weights
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mtl import MultiObjectiveMixin, per_class_objectives
from lightning_mtl.callbacks import TemporalMOO
from lightning_mtl.strategies import PLOT
from lightning_mtl.strategies.plot import class_preference
from lightning_mtl.tasks.long_tail import per_class_loss_std, variability_collapse_loss

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


def plot_reference(
    rows: Tensor, preference: list[float], c: float = 0.5, scale: str = "mean"
) -> Tensor:
    """The authors' ``utils/pareto.py`` step in float64 with scipy: the preference ``b``
    renormalised over the rows, ``w = argmin_{w ∈ Δ} wᵀ G b + c ‖g0‖ √(wᵀ G w)`` by SLSQP from
    several starts, ``d = (g0 + c ‖g0‖ g_w / ‖g_w‖) / (1 + c²)`` with ``g0`` the mean row, times
    the number of rows for ``scale="sum"`` (their ``overwrite_grad``)."""
    matrix = rows.double().numpy()
    size = len(matrix)
    gramian = matrix @ matrix.T
    b = np.asarray(preference, dtype=np.float64)
    b = b / b.sum()
    g0 = matrix.mean(0)
    radius = c * np.linalg.norm(g0)
    toward = gramian @ b

    weights = cagrad_dual_weights(gramian, toward, radius)
    combined = weights @ matrix
    update = (g0 + radius * combined / np.linalg.norm(combined)) / (1 + c**2)
    return torch.from_numpy(update * (size if scale == "sum" else 1.0))


def test_plot_update_on_hand_built_class_gradients() -> None:
    # Two orthogonal unit class gradients, preference (0.8, 0.2): g0 = (½, ½), radius
    # c‖g0‖ = 0.5 · √½. On w = (t, 1 − t) the dual is 0.2 + 0.6 t + radius · √(2t² − 2t + 1),
    # whose slope at t = 0 is 0.6 − radius > 0, so w = (0, 1), g_w = e₁ and the update is
    # (g0 + radius · e₁) / 1.25 = (0.4, (0.5 + √½ / 2) / 1.25).
    plot = PLOT(class_counts=[1, 1])
    plot.class_weights = [0.8, 0.2]
    expected = torch.tensor([0.4, (0.5 + math.sqrt(0.5) / 2) / 1.25], dtype=torch.float64)
    names = ["class_0", "class_1"]
    torch.testing.assert_close(
        plot.aggregate(torch.eye(2, dtype=torch.float64), names=names), expected
    )
    plot.inner.scale = "sum"  # the authors' code: times K' = 2
    torch.testing.assert_close(
        plot.aggregate(torch.eye(2, dtype=torch.float64), names=names), 2 * expected
    )
    # Without a preference: plain CAGrad around the mean, (1 + c) g0 / (1 + c²) = 0.6 each.
    torch.testing.assert_close(
        PLOT().aggregate(torch.eye(2, dtype=torch.float64), names=names),
        torch.tensor([0.6, 0.6], dtype=torch.float64),
    )


@pytest.mark.parametrize("scale", ["mean", "sum"])
def test_plot_update_matches_the_authors_step_on_random_class_gradients(scale: str) -> None:
    counts = [500, 120, 40, 9, 3]
    present = [0, 2, 3, 4]  # class 1 absent from the batch
    generator = torch.Generator().manual_seed(5)
    for trial in range(4):
        rows = torch.randn(len(present), 9, generator=generator, dtype=torch.float64)
        rows[0] *= 6.0  # the head class dominates
        if trial % 2:
            rows[1] = -0.5 * rows[0] + 0.1 * rows[1]  # a dominated conflict
        plot = PLOT(class_counts=counts, scale=scale)  # type: ignore[arg-type]
        actual = plot.aggregate(rows, names=[f"class_{c}" for c in present])
        preference = class_preference(counts)
        expected = plot_reference(rows, [preference[c] for c in present], scale=scale)
        scale_of = float(expected.abs().max())
        assert float((actual - expected).abs().max()) <= 1e-5 * scale_of, trial
    with pytest.raises(ValueError, match="scale"):
        PLOT(scale="median")  # type: ignore[arg-type]


VC_WEIGHT = 0.5  # large, so that a misplaced variability term shows in the step


def spread_by_hand(per_sample: Tensor, y: Tensor) -> Tensor:
    """PLOT's L_vc as the authors' train_cifar.py computes it: the mean over the classes with
    two or more samples of torch.std of their losses."""
    spreads = [per_sample[y == c].std() for c in sorted(set(y.tolist())) if int((y == c).sum()) > 1]
    return torch.stack(spreads).mean()


class LongTailNet(MultiObjectiveMixin, pl.LightningModule):
    """body → layer3 → fc; PLOT balances layer3. As in the authors' code, the variability
    collapse joins the loss that trains the layers outside layer3, not the class gradients."""

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

    def compute_perturbation_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        per_sample = F.cross_entropy(self(x), y, reduction="none")  # the base method's losses
        return {"base": per_sample.mean(), "vc": VC_WEIGHT * spread_by_hand(per_sample, y)}

    def compute_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        per_sample = F.cross_entropy(self(x), y, reduction="none")
        present = sorted(set(y.tolist()))
        return class_objectives(per_sample, y, present)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def class_objectives(per_sample: Tensor, y: Tensor, present: list[int]) -> dict[str, Tensor]:
    """Per-class L_SAM parts for the classes present: ``L_c = Σ_{i∈c} ℓ_i / B``."""
    split = per_class_objectives(per_sample, y, NUM_CLASSES)
    return {f"class_{c}": split[f"class_{c}"] for c in present}


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
    per_sample = F.cross_entropy(reference(INPUTS), LABELS, reduction="none")
    base = per_sample.mean() + VC_WEIGHT * spread_by_hand(per_sample, LABELS)
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
    b = [preference[int(name[-1])] for name in objectives]
    direction = plot_reference(rows, b).to(rows.dtype)

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
        def compute_perturbation_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            passes.append("perturb")
            return super().compute_perturbation_objectives(batch, batch_idx)

        def compute_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            passes.append("balance")
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
    with pytest.raises(ValueError, match="keep must lie in"):
        PLOT(keep_perturbation=2.0)
    with pytest.raises(ValueError, match="class index below 2"):
        PLOT(class_counts=[5, 1]).aggregate(torch.eye(2), names=["class_0", "class_7"])
    module = LongTailNet(PLOT())
    module.configure_balancing(PLOT(), scope="shared")
    with pytest.raises(
        ValueError,
        match=r"perturbs named submodules.*\['body', 'body.0', 'layer3', 'layer3.0', 'fc'\]",
    ):
        make_trainer(max_steps=1).fit(
            module, DataLoader(TensorDataset(INPUTS, LABELS), batch_size=24)
        )
