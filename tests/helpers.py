"""Strategies, models and a Lightning harness shared by the tests (not part of the package)."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mtl import MultiObjectiveMixin, Objectives
from lightning_mtl.strategies.base import (
    GradientBalancingStrategy,
    GramianBatch,
    GramianWeighting,
    JacobianBatch,
    JacobianStrategy,
)


class UnitRowMean(JacobianStrategy):
    """Mean of the unit-normalised rows: a Jacobian strategy that is nonlinear in the rows."""

    def direction(self, batch: JacobianBatch) -> Tensor:
        rows = batch.jacobian
        return (rows / rows.norm(dim=1, keepdim=True)).mean(0)


class InverseNormWeights(GramianWeighting):
    """Weights 1/‖g_t‖ from the Gramian's diagonal: a Gramian strategy, nonlinear in the scale."""

    def weights(self, batch: GramianBatch) -> Tensor:
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


DATA = TensorDataset(
    torch.randn(32, 4, generator=torch.Generator().manual_seed(3)),
    torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(4)),
)


class TinyModule(MultiObjectiveMixin, pl.LightningModule):
    def __init__(
        self,
        strategy: GradientBalancingStrategy,
        scope: object = "shared",
        lr: float = 1.0,
        momentum: float = 0.0,
        epoch_decay: float | None = None,
    ) -> None:
        super().__init__()
        self.net = TwoHeadNet()
        self.lr, self.momentum, self.epoch_decay = lr, momentum, epoch_decay
        self.configure_balancing(strategy, scope=scope)  # type: ignore[arg-type]

    def compute_objectives(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        features = self.net.features(x)
        return Objectives(self.net.losses(x, y, features), representation=features)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)
        if self.epoch_decay is None:
            return optimizer
        decay = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=self.epoch_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "epoch"}}


def make_trainer(**kwargs) -> pl.Trainer:  # type: ignore[no-untyped-def]
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def flat_params(module: torch.nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def one_full_batch_step(module: TinyModule, **trainer_kwargs) -> tuple[TwoHeadNet, Tensor]:  # type: ignore[no-untyped-def]
    initial = copy.deepcopy(module.net)
    make_trainer(max_steps=1, **trainer_kwargs).fit(module, DataLoader(DATA, batch_size=32))
    return initial, flat_params(initial) - flat_params(module.net)


def strategy_catalogue() -> dict[str, Callable[[], GradientBalancingStrategy]]:
    """Every strategy of the catalogue with its defaults (PLOT with a class profile)."""
    import lightning_mtl.strategies as catalogue

    factories: dict[str, Callable[[], GradientBalancingStrategy]] = {
        name: getattr(catalogue, name)
        for name in catalogue.__all__
        if isinstance(getattr(catalogue, name), type)
        and issubclass(getattr(catalogue, name), GradientBalancingStrategy)
        and not inspect.isabstract(getattr(catalogue, name))
        and getattr(catalogue, name) is not catalogue.SharpnessAware  # a wrapper: see PLOT
    }
    factories["PLOT"] = lambda: catalogue.PLOT(class_counts=[10, 1])
    return factories


def engine_steps(
    strategy: GradientBalancingStrategy,
    device: str,
    watch_last: Callable[[], AbstractContextManager[object]] = nullcontext,
    steps: int = 3,
) -> None:
    """``steps`` engine steps of ``strategy`` on TwoHeadNet; the last one runs inside
    ``watch_last()`` (e.g. a host-synchronisation check: the earlier steps may build state)."""
    from lightning_mtl.engine import Backend, GradientEngine, Scope
    from lightning_mtl.strategies import PLOT, SharpnessAware, TrainingProgress

    net = TwoHeadNet().to(device)
    x, y = (t.to(device) for t in DATA.tensors)
    names = ("class_0", "class_1") if isinstance(strategy, PLOT) else ("cls", "rep")
    scope = Scope(
        parameters=list(net.trunk.parameters()),
        others=[*net.cls_head.parameters(), *net.rep_head.parameters()],
    )
    backend = Backend(loss_scale=torch.full((), 1024.0, device=device))
    engine = GradientEngine()
    strategy.setup(names)
    # The mixin balances a wrapper's inner strategy (and perturbs the weights around it).
    balancer = strategy.inner if isinstance(strategy, SharpnessAware) else strategy
    for step in range(steps):
        net.zero_grad(set_to_none=True)
        objectives = torch.stack(list(net.losses(x, y).values()))
        progress = TrainingProgress(step=step, total_steps=10, total_epochs=1)
        with watch_last() if step == steps - 1 else nullcontext():
            engine.step(names, objectives, balancer, scope, progress, backend)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


class TrunkReference(NamedTuple):
    """What a one-step test of a trunk-scoped strategy compares against, computed by hand."""

    losses: dict[str, Tensor]
    rows: Tensor  # [2, trunk size]: the cls and rep gradients of the trunk
    head_gradient: Tensor  # the summed objectives' gradient of both heads


def trunk_reference(initial: TwoHeadNet) -> TrunkReference:
    """The objectives, the trunk's per-objective gradients and the heads' summed gradient of
    ``initial`` on :data:`DATA` (see :func:`one_full_batch_step`)."""
    losses = initial.losses(*DATA.tensors)
    trunk = list(initial.trunk.parameters())
    heads = [*initial.cls_head.parameters(), *initial.rep_head.parameters()]
    rows = torch.stack([grads_of(losses["cls"], trunk), grads_of(losses["rep"], trunk)])
    return TrunkReference(losses, rows, grads_of(losses["cls"] + losses["rep"], heads))


def cluster_accuracy_by_hand(model: nn.Module, loader: Any, num_old: int) -> dict[str, float]:
    """GCD's All / Old / New of ``model`` on ``loader``'s ``(images, labels, _)`` batches,
    computed apart from :class:`~lightning_mtl.tasks.gcd.ClusterAccuracy`: the argmax
    clusters, a NumPy count matrix, one Hungarian matching of clusters to classes over all
    samples (scipy), and the matched share of all, old-class and new-class samples."""
    model.eval()
    with torch.no_grad():
        pairs = [(model(images).argmax(1), labels) for images, labels, _ in loader]
    predicted = torch.cat([p for p, _ in pairs]).numpy()
    labels = torch.cat([y for _, y in pairs]).numpy()
    size = int(max(predicted.max(), labels.max())) + 1
    counts = np.zeros((size, size))
    np.add.at(counts, (predicted, labels), 1)
    clusters, classes = linear_sum_assignment(-counts)
    to_class = dict(zip(clusters.tolist(), classes.tolist(), strict=True))
    hits = np.array(
        [to_class[c] == y for c, y in zip(predicted.tolist(), labels.tolist(), strict=True)]
    )
    old = labels < num_old
    return {"all": hits.mean(), "old": hits[old].mean(), "new": hits[~old].mean()}


def predictions_by_hand(
    model: nn.Module, loader: Any, batches: int | None = None
) -> tuple[Tensor, Tensor]:
    """``(argmax predictions, labels)`` of ``model`` in eval mode over the first ``batches``
    ``(images, labels, …)`` batches of ``loader`` (all of them by default), concatenated."""
    model.eval()
    predicted, labels = [], []
    with torch.no_grad():
        for index, (images, targets, *_) in enumerate(loader):
            if batches is not None and index == batches:
                break
            predicted.append(model(images).argmax(-1))
            labels.append(targets)
    return torch.cat(predicted), torch.cat(labels)
