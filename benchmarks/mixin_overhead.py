"""The mixin's own cost per training step: a model so small that the step is all bookkeeping.

A ``Linear(8, 8)`` trunk with T ``Linear(8, 1)`` heads, batch 2, on the CPU, one thread. Three
configurations: ``plain`` (automatic optimisation, the summed loss, no logging), ``ls`` (the
mixin with ``LinearScalarization``) and ``pgi`` (the mixin with PGI over two groups, task 0 and
the rest). The median step time over 180 steps (after 20) is the Python the mixin adds to every
step, which on a GPU is paid while the device waits for work.

With ``--strategies``, the same tiny model under each named strategy of the catalogue (default
arguments): the step is then the strategy's solver, its Python and its kernels.

Usage::

    PYTHONPATH=. python benchmarks/mixin_overhead.py --tasks 10 40
    PYTHONPATH=. python benchmarks/mixin_overhead.py --tasks 40 --strategies MGDA CAGrad UPGrad
    PYTHONPATH=. python benchmarks/mixin_overhead.py --tasks 10 40 --angles  # + angle logger

``--angles`` adds a :class:`~lightning_mtl.callbacks.GradientAngleLogger` measuring every step
to the ``LinearScalarization`` configuration.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_mtl import MultiObjectiveMixin
from lightning_mtl.strategies import PGI, LinearScalarization

STEPS, WARMUP = 200, 20


class Heads(nn.Module):
    def __init__(self, tasks: int) -> None:
        super().__init__()
        self.trunk = nn.Linear(8, 8)
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(tasks))

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        z = self.trunk(x)
        return {f"task{i}": head(z).pow(2).mean() for i, head in enumerate(self.heads)}


class Plain(pl.LightningModule):
    def __init__(self, tasks: int) -> None:
        super().__init__()
        self.net = Heads(tasks)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return torch.stack(list(self.net.losses(batch[0]).values())).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Mixin(MultiObjectiveMixin, pl.LightningModule):
    def __init__(
        self, tasks: int, pgi: bool, strategy: Any = None, jacobian_form: str = "auto"
    ) -> None:
        super().__init__()
        self.net = Heads(tasks)
        if strategy is not None:
            self.configure_balancing(strategy, jacobian_form=jacobian_form)
        elif pgi:
            rest = {f"task{i}": 1.0 for i in range(1, tasks)}
            self.configure_balancing(PGI(), groups={"cls": {"task0": 1.0}, "rep": rest})
        else:
            self.configure_balancing(LinearScalarization())

    def compute_objectives(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        return self.net.losses(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class StepTimes(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def median_ms(module: pl.LightningModule, *callbacks: pl.Callback) -> float:
    times = StepTimes()
    data = torch.utils.data.TensorDataset(torch.randn(2 * STEPS, 8))
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, times],
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    return statistics.median(times.seconds[WARMUP:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--strategies", nargs="+", default=[], help="catalogue strategy names")
    parser.add_argument("--angles", action="store_true", help="LS with angles every step")
    parser.add_argument(
        "--jacobian-form", default="auto", help="the strategies' jacobian_form (see the engine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.angles:
        from lightning_mtl.callbacks import GradientAngleLogger

        print("| T | mixin + LS + angles every step, ms |")
        print("|---|---|")
        for tasks in args.tasks:
            angles = GradientAngleLogger(every_n_steps=1, heatmap=False)
            print(f"| {tasks} | {median_ms(Mixin(tasks, False), angles):.2f} |", flush=True)
        return
    if args.strategies:
        import lightning_mtl.strategies as catalogue

        print("| strategy | T | ms per step |")
        print("|---|---|---|")
        for name in args.strategies:
            for tasks in args.tasks:
                strategy = getattr(catalogue, name)()
                module = Mixin(tasks, False, strategy, args.jacobian_form)
                print(f"| {name} | {tasks} | {median_ms(module):.2f} |", flush=True)
        return
    print("| T | plain ms | mixin + LS ms | mixin + PGI ms |")
    print("|---|---|---|---|")
    for tasks in args.tasks:
        cells = [
            median_ms(Plain(tasks)),
            median_ms(Mixin(tasks, False)),
            median_ms(Mixin(tasks, True)),
        ]
        print(f"| {tasks} | " + " | ".join(f"{value:.2f}" for value in cells) + " |")


if __name__ == "__main__":
    main()
