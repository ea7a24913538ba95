"""Time one training step and measure peak memory of lightning_mtl against plain baselines.

A trunk (``--model``: ResNet-18 by default, or a small CNN) feeds T linear heads, each trained
with cross-entropy on random labels. Every configuration trains a fresh model built with the
same seed on a fixed set of random batches that stay on the device, so data loading is not
measured. Each step is timed with CUDA events after warm-up steps, the host synchronised only
once all steps have run; on the CPU with ``time.perf_counter`` or the process's CPU time
(``--clock``). Peak memory above the start of each configuration is read from the CUDA
allocator, or on the CPU from the resident set of a fresh process per configuration. See
``benchmarks/README.md`` for what each configuration means.

Usage::

    PYTHONPATH=. python benchmarks/step_overhead.py                      # bf16-mixed, T in {2, 10}
    PYTHONPATH=. python benchmarks/step_overhead.py --precision 32-true --tasks 2 4 10
    PYTHONPATH=. python benchmarks/step_overhead.py --device cpu --batch-size 8 --image-size 32 \
        --steps 3 --warmup 1 --tasks 2 3 --precision 32-true --out /tmp/bench_smoke  # smoke test
    PYTHONPATH=. python benchmarks/step_overhead.py --device cpu --model small_cnn \
        --batch-size 32 --image-size 32 --tasks 2 10 40 --precision 32-true --threads 1 \
        --clock cpu --configs plain separate_backwards jacobian --jacobian-forms auto loop

Strategies of the catalogue, and torchjd's aggregators of the same name, are added with
``--strategies`` and ``--torchjd-aggregators``; ``Name:key=value,...`` passes constructor
arguments (values read as YAML)::

    PYTHONPATH=. python benchmarks/step_overhead.py --tasks 2 10 40 --configs plain \
        --strategies PCGrad RGB RGB:alpha_steps=30 RGB:alpha_steps=50 CAGrad NashMTL UPGrad \
        --torchjd-aggregators UPGrad MGDA --libmtl-weightings PCGrad CAGrad MGDA GradVac

``--libmtl-weightings`` runs LibMTL's weighting classes (the registry's ``LibMTL`` package) in
the same plain loop, in fp32 (LibMTL has no mixed-precision scaling), with the hyper-parameters
of ``LIBMTL_DEFAULTS`` unless the spec overrides them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import inspect
import json
import logging
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
import torchvision
import yaml
from torch import Tensor, nn
from torch.nn import functional as F

import lightning_mtl.strategies as strategies
from lightning_mtl import MultiObjectiveMixin, Objectives
from lightning_mtl.callbacks import GradientAngleLogger
from lightning_mtl.strategies import (
    PGI,
    GradientBalancingStrategy,
    JacobianBatch,
    JacobianStrategy,
    LinearScalarization,
)

CONFIGS = (
    "plain",
    "mixin_ls",
    "pgi",
    "pgi_angles",
    "jacobian",
    "separate_backwards",
    "separate_backwards_lightning",
    "torchjd",
)
PRECISIONS = ("bf16-mixed", "32-true", "16-mixed")
JACOBIAN_FORMS = ("auto", "measure", "loop", "batched", "func")
NUM_CLASSES = 10
LR = 0.01
MOMENTUM = 0.9

# Warnings that say nothing about the measured step: Lightning's advice that does not apply to a
# benchmark feeding batches already on the device, and a deprecation inside the libraries.
_LIGHTNING_NOISE = (
    r".*does not have many workers.*",
    r".*log_every_n_steps.*",
    r".*Total length of `DataLoader` across ranks is zero.*",
    r".*isinstance\(treespec, LeafSpec\).*",  # torch's pytree deprecation, seen in Lightning
)


# --- model and data ------------------------------------------------------------------------------


def small_cnn() -> nn.Sequential:
    """Three 3x3 convolutions (32, 64, 128 channels), each with batch norm and ReLU, the first
    two followed by 2x2 max pooling, then global average pooling: 128-d features, 93,696
    trunk parameters. Small enough for steps at T = 40 on a 2-core CPU."""
    layers: list[nn.Module] = []
    channels = 3
    for index, width in enumerate((32, 64, 128)):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        layers.append(nn.MaxPool2d(2) if index < 2 else nn.AdaptiveAvgPool2d(1))
        channels = width
    return nn.Sequential(*layers, nn.Flatten())


def resnet18_trunk() -> nn.Module:
    """torchvision's ResNet-18 with its classifier removed: 512-d features."""
    trunk = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    trunk.fc = nn.Identity()
    return trunk


MODELS: dict[str, tuple[Callable[[], nn.Module], int, str]] = {
    "resnet18": (resnet18_trunk, 512, "ResNet-18 trunk"),
    "small_cnn": (small_cnn, 128, "small CNN trunk (3 conv + batch norm)"),
}
"""Trunk builder, feature width and description of each ``--model``."""


class MultiHeadNet(nn.Module):
    """A trunk (see ``MODELS``) followed by ``tasks`` linear heads."""

    def __init__(self, tasks: int, model: str = "resnet18") -> None:
        super().__init__()
        build_trunk, features, _ = MODELS[model]
        self.trunk = build_trunk()
        self.heads = nn.ModuleList(nn.Linear(features, NUM_CLASSES) for _ in range(tasks))

    def features_and_losses(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, list[Tensor]]:
        images, labels = batch
        features = self.trunk(images)
        losses = [
            F.cross_entropy(head(features), labels[:, index])
            for index, head in enumerate(self.heads)
        ]
        return features, losses

    def losses(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        _, losses = self.features_and_losses(batch)
        return {f"task{index}": loss for index, loss in enumerate(losses)}


def build_net(tasks: int, model: str, seed: int, device: torch.device) -> MultiHeadNet:
    torch.manual_seed(seed)
    return MultiHeadNet(tasks, model).to(device)


def make_batches(args: argparse.Namespace, tasks: int, device: torch.device) -> list[Any]:
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    return [
        (
            torch.randn(shape, generator=generator).to(device),
            torch.randint(0, NUM_CLASSES, (args.batch_size, tasks), generator=generator).to(device),
        )
        for _ in range(args.num_batches)
    ]


class CycledBatches(torch.utils.data.Dataset):
    """``length`` items cycling through a few fixed batches that already live on the device."""

    def __init__(self, batches: list[Any], length: int) -> None:
        self.batches = batches
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.batches[index % len(self.batches)]


def make_optimizer(parameters: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=LR, momentum=MOMENTUM)


# --- Lightning modules ---------------------------------------------------------------------------


class PlainModule(pl.LightningModule):
    """Automatic optimisation: ``training_step`` returns the sum of the task losses."""

    def __init__(self, net: MultiHeadNet) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return torch.stack(list(self.net.losses(batch).values())).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.parameters())


class SeparateBackwardsModule(pl.LightningModule):
    """T separate backward passes (:func:`separate_backwards`) inside Lightning's loop, with
    manual optimisation as the mixin uses: the reference that pays the same loop overhead."""

    def __init__(self, net: MultiHeadNet) -> None:
        super().__init__()
        self.net = net
        self.automatic_optimization = False
        self.separate = separate_backwards(net)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        features, losses = self.net.features_and_losses(batch)
        optimizer.zero_grad(set_to_none=True)
        self.separate(features, losses, None)
        optimizer.step()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.parameters())


class MixinModule(MultiObjectiveMixin, pl.LightningModule):
    """The same model with named objectives and a balancing strategy."""

    def __init__(self, net: MultiHeadNet, strategy: GradientBalancingStrategy, **balancing: Any):
        super().__init__()
        self.net = net
        self.configure_balancing(strategy, **balancing)

    def compute_objectives(self, batch: Any, batch_idx: int) -> dict[str, Tensor] | Objectives:
        if self.balancing_scope != "representation":
            return self.net.losses(batch)
        features, losses = self.net.features_and_losses(batch)
        names = (f"task{index}" for index in range(len(losses)))
        return Objectives(dict(zip(names, losses, strict=True)), representation=features)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.parameters())


class MeanOfJacobianRows(JacobianStrategy):
    """Needs the full per-objective Jacobian of the scope; returns its mean row.

    The combination is trivial on purpose, so that the measured cost is the engine's (the
    per-objective gradients of every shared parameter), not a solver's.
    """

    def direction(self, batch: JacobianBatch) -> Tensor:
        return batch.jacobian.mean(dim=0)


def pgi_groups(tasks: int) -> dict[str, dict[str, float]]:
    """PGI's two objectives: task0 is ``cls``, the other tasks together are ``rep``."""
    return {
        "cls": {"task0": 1.0},
        "rep": {f"task{index}": 1.0 for index in range(1, tasks)},
    }


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"RGB:alpha_steps=30,momentum=0.5"`` → ``("RGB", {"alpha_steps": 30, "momentum": 0.5})``.

    Example::

        >>> parse_spec("RGB:alpha_steps=30")
        ('RGB', {'alpha_steps': 30})
        >>> parse_spec("PCGrad")
        ('PCGrad', {})
    """
    name, _, arguments = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, arguments.split(",")):
        key, separator, value = item.partition("=")
        if not separator:
            raise ValueError(f"expected key=value in {spec!r}, got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    return name, options


def catalogue_strategy(spec: str) -> GradientBalancingStrategy:
    """A strategy of ``lightning_mtl.strategies`` from its spec (see :func:`parse_spec`)."""
    name, options = parse_spec(spec)
    cls = getattr(strategies, name, None)
    if not (isinstance(cls, type) and issubclass(cls, GradientBalancingStrategy)):
        raise ValueError(f"lightning_mtl.strategies has no strategy {name!r}")
    return cls(**options)


def torchjd_aggregator(spec: str, tasks: int) -> Any:
    """An aggregator of ``torchjd.aggregation`` from its spec (see :func:`parse_spec`);
    ``n_tasks`` (Nash-MTL's) is filled with ``tasks`` when the constructor takes it."""
    import torchjd.aggregation

    name, options = parse_spec(spec)
    cls = getattr(torchjd.aggregation, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"torchjd.aggregation has no aggregator {name!r}")
    if "n_tasks" in inspect.signature(cls).parameters:
        options.setdefault("n_tasks", tasks)
    return cls(**options)


LIBMTL_DEFAULTS: dict[str, dict[str, Any]] = {
    "CAGrad": {"calpha": 0.5, "rescale": 1},
    "MGDA": {"mgda_gn": "none"},
    "GradVac": {"beta": 0.5},
    "DWA": {"T": 2.0},
    "GradNorm": {"alpha": 1.5},
}
"""Keyword arguments LibMTL's ``backward`` requires, at the values of its example configs."""


def import_libmtl_weighting() -> Any:
    """``LibMTL.weighting``, importable on current torchvision.

    LibMTL's package ``__init__`` imports ``torchvision.models.utils``, which torchvision removed
    (0.13); the only name it takes from there is ``load_state_dict_from_url``, which lives in
    ``torch.hub``. The shim registers that module name before the import and changes nothing
    in the weighting code that is timed.
    """
    import types

    if "torchvision.models.utils" not in sys.modules:
        shim = types.ModuleType("torchvision.models.utils")
        shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore[attr-defined]
        sys.modules["torchvision.models.utils"] = shim
    import LibMTL.weighting

    return LibMTL.weighting


def libmtl_backward(
    net: MultiHeadNet, spec: str, device: torch.device
) -> Callable[[Tensor, list[Tensor], Any], None]:
    """LibMTL's weighting ``spec`` driving the trunk's gradient (its own ``backward``)."""
    weighting = import_libmtl_weighting()
    name, options = parse_spec(spec)
    base = getattr(weighting, name, None)
    if not isinstance(base, type):
        raise ValueError(f"LibMTL.weighting has no weighting {name!r}")
    arguments = {**LIBMTL_DEFAULTS.get(name, {}), **options}
    tasks = len(net.heads)

    class Harness(base):  # type: ignore[misc, valid-type]
        """The attributes and hooks LibMTL's weighting classes expect of their model."""

        def __init__(self) -> None:
            super().__init__()
            self.task_num, self.device, self.rep_grad = tasks, device, False
            self.task_name = [f"task{index}" for index in range(tasks)]
            self.epoch, self.epochs = 0, 1

        def get_share_params(self) -> Iterator[nn.Parameter]:
            return net.trunk.parameters()

        def zero_grad_share_params(self) -> None:
            net.trunk.zero_grad(set_to_none=False)

    harness = Harness()
    harness.init_param()

    def backward(features: Tensor, losses: list[Tensor], scaler: Any) -> None:
        # A stacked tensor: the loss-weighting classes need one, the others only index it.
        harness.backward(torch.stack(losses), **arguments)

    return backward


# --- timing --------------------------------------------------------------------------------------


class MemoryProbe:
    """Peak memory of one configuration above what was in use when it started (model, data and
    optimizer state it creates included), over the whole run and over the measured steps only.

    CUDA: the caching allocator's ``max_memory_allocated``. CPU: the peak resident set of the
    process (``VmHWM`` in ``/proc/self/status``, reset by writing 5 to ``/proc/self/clear_refs``;
    Linux only), which is why each CPU configuration runs in a fresh process.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.available = self.cuda or Path("/proc/self/clear_refs").exists()
        self.baseline = 0.0
        self.warmup_peak = 0.0

    def _status_mib(self, field_name: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 2**10
        raise RuntimeError(f"/proc/self/status has no {field_name}")

    def _current(self) -> float:
        if self.cuda:
            return torch.cuda.memory_allocated(self.device) / 2**20
        return self._status_mib("VmRSS")

    def _peak(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self._status_mib("VmHWM")

    def _reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def start(self) -> None:
        """Before the configuration builds anything."""
        if not self.available:
            return
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        self._reset_peak()
        self.baseline = self.warmup_peak = self._current()

    def measured_steps_start(self) -> None:
        """At the start of the first measured step (after the warm-up steps)."""
        if self.available:
            self.warmup_peak = self._peak()
            self._reset_peak()

    def peaks_mib(self) -> tuple[float | None, float | None]:
        """Peak above the start over the whole run, and over the measured steps."""
        if not self.available:
            return None, None
        measured = self._peak()
        return max(self.warmup_peak, measured) - self.baseline, measured - self.baseline


class StepTimer:
    """Start/stop marks around each step: CUDA events on a GPU; on the CPU ``perf_counter``
    (``clock="wall"``) or the process's CPU time (``clock="cpu"``, ``process_time``: on a shared
    machine it leaves out the time other processes hold the cores). The memory probe is told
    when the first measured step (after ``warmup``) starts."""

    def __init__(
        self, device: torch.device, warmup: int, probe: MemoryProbe, clock: str = "wall"
    ) -> None:
        self.cuda = device.type == "cuda"
        self.host_clock = time.process_time if clock == "cpu" else time.perf_counter
        self.warmup = warmup
        self.probe = probe
        self.starts: list[Any] = []
        self.stops: list[Any] = []

    def _mark(self) -> Any:
        if not self.cuda:
            return self.host_clock()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        if len(self.starts) == self.warmup:
            self.probe.measured_steps_start()
        self.starts.append(self._mark())

    def stop(self) -> None:
        self.stops.append(self._mark())

    def durations_ms(self, skip: int) -> tuple[list[float], float]:
        """Per-step times after ``skip`` warm-up steps, and the mean time per step over the
        whole measured window (which also counts what happens between steps)."""
        if len(self.starts) != len(self.stops) or len(self.stops) <= skip:
            raise RuntimeError(
                f"timed {len(self.starts)} starts and {len(self.stops)} stops; expected more "
                f"than {skip} complete steps."
            )
        starts, stops = self.starts[skip:], self.stops[skip:]
        if self.cuda:
            torch.cuda.synchronize()
            steps = [begin.elapsed_time(end) for begin, end in zip(starts, stops, strict=True)]
            window = starts[0].elapsed_time(stops[-1])
        else:
            steps = [(end - begin) * 1e3 for begin, end in zip(starts, stops, strict=True)]
            window = (stops[-1] - starts[0]) * 1e3
        return steps, window / len(steps)


class StepTimerCallback(pl.Callback):
    """Marks the start and the end of every training batch (put it last among the callbacks,
    so that the other callbacks' ``on_train_batch_end`` work is inside the measured step)."""

    def __init__(self, timer: StepTimer) -> None:
        self.timer = timer

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, idx: int):
        self.timer.start()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.timer.stop()


# --- runners -------------------------------------------------------------------------------------


@dataclass
class Result:
    config: str
    tasks: int
    precision: str
    status: str = "ok"
    reason: str = ""
    step_ms: list[float] = field(default_factory=list)
    median_ms: float | None = None
    q1_ms: float | None = None
    q3_ms: float | None = None
    iqr_ms: float | None = None
    window_ms_per_step: float | None = None
    ratio_to_plain: float | None = None
    ratio_to_separate: float | None = None
    peak_memory_mib: float | None = None
    measured_peak_memory_mib: float | None = None
    resident_before_mib: float | None = None
    notes: list[str] = field(default_factory=list)


def run_lightning(
    module: pl.LightningModule,
    callbacks: list[pl.Callback],
    batches: list[Any],
    args: argparse.Namespace,
    device: torch.device,
    probe: MemoryProbe,
) -> tuple[list[float], float]:
    timer = StepTimer(device, args.warmup, probe, args.clock)
    total = args.warmup + args.steps
    trainer = pl.Trainer(
        max_steps=total,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=args.precision,
        devices=1,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        callbacks=[*callbacks, StepTimerCallback(timer)],
    )
    loader = torch.utils.data.DataLoader(
        CycledBatches(batches, total), batch_size=None, shuffle=False, num_workers=0
    )
    trainer.fit(module, loader)
    if trainer.global_step != total:
        raise RuntimeError(f"the Trainer stopped after {trainer.global_step} of {total} steps.")
    return timer.durations_ms(args.warmup)


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "32-true":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_loop(
    net: MultiHeadNet,
    backward: Callable[[Tensor, list[Tensor], Any], None],
    batches: list[Any],
    args: argparse.Namespace,
    device: torch.device,
    precision: str,
    probe: MemoryProbe,
) -> tuple[list[float], float]:
    """A plain PyTorch training loop; ``backward(features, losses, scaler)`` fills ``.grad``."""
    net.train()
    optimizer = make_optimizer(net.parameters())
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    timer = StepTimer(device, args.warmup, probe, args.clock)
    for step in range(args.warmup + args.steps):
        batch = batches[step % len(batches)]
        timer.start()
        with autocast_for(precision, device):
            features, losses = net.features_and_losses(batch)
        optimizer.zero_grad(set_to_none=True)
        backward(features, losses, scaler)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        timer.stop()
    return timer.durations_ms(args.warmup)


def separate_backwards(net: MultiHeadNet) -> Callable[[Tensor, list[Tensor], Any], None]:
    """T backward passes, one per loss, w.r.t. the trunk (and that loss's head); the trunk gets
    the mean of the T gradients, each head its own loss's gradient."""
    trunk = [p for p in net.trunk.parameters() if p.requires_grad]
    heads = [[p for p in head.parameters() if p.requires_grad] for head in net.heads]

    def backward(features: Tensor, losses: list[Tensor], scaler: Any) -> None:
        trunk_grads: list[tuple[Tensor, ...]] = []
        for index, loss in enumerate(losses):
            scaled = scaler.scale(loss) if scaler is not None else loss
            grads = torch.autograd.grad(
                scaled, trunk + heads[index], retain_graph=index < len(losses) - 1
            )
            trunk_grads.append(grads[: len(trunk)])
            for parameter, grad in zip(heads[index], grads[len(trunk) :], strict=True):
                parameter.grad = grad
        for parameter, *grads in zip(trunk, *trunk_grads, strict=True):
            parameter.grad = torch.stack(grads).mean(dim=0)

    return backward


@dataclass
class TorchJD:
    version: str
    mtl_backward: Callable[..., Any]
    jac_to_grad: Callable[..., Any] | None
    mean: type
    api: str  # "{}" stands for the aggregator


def load_torchjd() -> tuple[TorchJD | None, str]:
    """The installed torchjd's ``mtl_backward``, or ``None`` and why not.

    torchjd >= 0.17 (``torchjd.autojac``): ``mtl_backward(losses, features=...)`` leaves the
    shared parameters' Jacobian in their ``.jac`` and ``jac_to_grad(params, aggregator)``
    aggregates it into ``.grad``. Older versions take ``aggregator=`` in ``mtl_backward`` itself
    (``torchjd.autojac.mtl_backward`` or, older still, ``torchjd.mtl_backward``).
    """
    try:
        import torchjd
        from torchjd.aggregation import Mean
    except ImportError as error:
        return None, f"torchjd is not importable ({error}); pip install torchjd"
    try:
        from torchjd.autojac import mtl_backward
    except ImportError:
        mtl_backward = torchjd.mtl_backward
    version = getattr(torchjd, "__version__", None)
    if version is None:
        from importlib.metadata import version as distribution_version

        version = distribution_version("torchjd")
    if "aggregator" in inspect.signature(mtl_backward).parameters:
        api = f"{mtl_backward.__module__}.mtl_backward(losses=..., features=..., aggregator={{}})"
        return TorchJD(version, mtl_backward, None, Mean, api), ""
    try:
        from torchjd.autojac import jac_to_grad
    except ImportError as error:
        return None, f"torchjd {version}: mtl_backward takes no aggregator and {error}"
    api = "torchjd.autojac.mtl_backward(losses, features=...) + jac_to_grad(trunk, {})"
    return TorchJD(version, mtl_backward, jac_to_grad, Mean, api), ""


def torchjd_backward(
    net: MultiHeadNet, jd: TorchJD, aggregator: Any
) -> Callable[[Tensor, list[Tensor], Any], None]:
    trunk = [p for p in net.trunk.parameters() if p.requires_grad]
    heads = [[p for p in head.parameters() if p.requires_grad] for head in net.heads]

    def backward(features: Tensor, losses: list[Tensor], scaler: Any) -> None:
        params = {"features": features, "tasks_params": heads, "shared_params": trunk}
        if jd.jac_to_grad is None:
            jd.mtl_backward(losses=losses, aggregator=aggregator, **params)
        else:
            jd.mtl_backward(losses, **params)
            jd.jac_to_grad(trunk, aggregator)

    return backward


def run_config(
    config: str,
    tasks: int,
    batches: list[Any],
    args: argparse.Namespace,
    device: torch.device,
    jd: TorchJD | None,
    jd_reason: str,
    probe: MemoryProbe,
) -> Result:
    is_torchjd = config == "torchjd" or config.startswith("torchjd:")
    precision = "32-true" if is_torchjd or config.startswith("libmtl:") else args.precision
    result = Result(config=config, tasks=tasks, precision=precision)
    if is_torchjd and jd is None:
        result.status, result.reason = "skipped", jd_reason
        return result
    net = build_net(tasks, args.model, args.seed, device)
    module: pl.LightningModule | None = None
    callbacks: list[pl.Callback] = []
    mixin_config, _, form = config.partition("@")
    balancing: dict[str, Any] = {"jacobian_form": form} if form else {}
    if config == "plain":
        module = PlainModule(net)
    elif config == "separate_backwards_lightning":
        module = SeparateBackwardsModule(net)
    elif config == "mixin_ls":
        module = MixinModule(net, LinearScalarization())
    elif config in ("pgi", "pgi_angles"):
        module = MixinModule(net, PGI(alpha=0.35), groups=pgi_groups(tasks))
        if config == "pgi_angles":
            callbacks.append(GradientAngleLogger(every_n_steps=1, heatmap=False))
    elif mixin_config == "jacobian":
        module = MixinModule(net, MeanOfJacobianRows(), scope="shared", **balancing)
    elif mixin_config.startswith("strategy:"):
        strategy = catalogue_strategy(mixin_config.removeprefix("strategy:"))
        module = MixinModule(net, strategy, scope=args.strategy_scope, **balancing)
    if module is not None:
        steps, window = run_lightning(module, callbacks, batches, args, device, probe)
        engine = getattr(module, "gradient_engine", None)
        forms = sorted(set(getattr(engine.jacobians, "choices", {}).values())) if engine else []
        if forms:
            result.notes.append(f"per-objective gradients in the {'/'.join(forms)} form")
        elif engine is not None and getattr(engine.jacobians, "batched", True) is False:
            result.notes.append("per-objective gradients fell back to one backward per objective")
    elif config == "separate_backwards":
        backward = separate_backwards(net)
        steps, window = run_loop(net, backward, batches, args, device, precision, probe)
    elif config.startswith("libmtl:"):
        backward = libmtl_backward(net, config.removeprefix("libmtl:"), device)
        steps, window = run_loop(net, backward, batches, args, device, precision, probe)
        result.notes.append("LibMTL weighting in a plain loop; always fp32")
    elif is_torchjd:
        assert jd is not None
        spec = config.partition(":")[2]
        aggregator = torchjd_aggregator(spec, tasks) if spec else jd.mean()
        backward = torchjd_backward(net, jd, aggregator)
        steps, window = run_loop(net, backward, batches, args, device, precision, probe)
        api = jd.api.format(f"{spec}()" if spec else "Mean()")
        result.notes.append(f"torchjd {jd.version}: {api}; always fp32")
    else:
        raise ValueError(f"unknown configuration {config!r}")
    quartiles = statistics.quantiles(steps, n=4, method="inclusive") if len(steps) > 1 else None
    result.step_ms = steps
    result.median_ms = statistics.median(steps)
    result.q1_ms, result.q3_ms = (quartiles[0], quartiles[2]) if quartiles else (steps[0],) * 2
    result.iqr_ms = result.q3_ms - result.q1_ms
    result.window_ms_per_step = window
    return result


def measure(
    config: str,
    tasks: int,
    batches: list[Any],
    args: argparse.Namespace,
    device: torch.device,
    jd: TorchJD | None,
    jd_reason: str,
) -> Result:
    """Run one configuration from a clean memory state; failures become a result, not a crash."""
    probe = MemoryProbe(device)
    probe.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for pattern in _LIGHTNING_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            result = run_config(config, tasks, batches, args, device, jd, jd_reason, probe)
        except Exception as error:  # a failing configuration must not hide the others
            if isinstance(error, torch.cuda.OutOfMemoryError):
                reason = "out of GPU memory"
            else:
                reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            fp32_only = config.startswith(("torchjd", "libmtl:"))
            precision = "32-true" if fp32_only else args.precision
            result = Result(config, tasks, precision, status="failed", reason=reason)
    for message in dict.fromkeys(str(w.message).splitlines()[0][:200] for w in caught):
        result.notes.append(f"warning: {message}")
    if result.status == "ok" and probe.available:
        result.peak_memory_mib, result.measured_peak_memory_mib = probe.peaks_mib()
        result.resident_before_mib = probe.baseline
    gc.collect()
    return result


def measure_in_fresh_process(config: str, tasks: int, argv: list[str]) -> Result:
    """:func:`measure` in a new Python process running this script with ``--child``, so that
    the CPU's peak resident set is this configuration's alone."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, __file__, *argv, "--child", config, str(tasks)]
        completed = subprocess.run(
            [*command, "--child-out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        if completed.returncode == 0 and out.exists():
            return Result(**json.loads(out.read_text()))
    lines = completed.stderr.strip().splitlines() or [f"exit status {completed.returncode}"]
    reason = f"the child process failed: {lines[-1][:300]}"
    return Result(config, tasks, "-", status="failed", reason=reason)


# --- report --------------------------------------------------------------------------------------


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def header(args: argparse.Namespace, device: torch.device, jd: TorchJD | None) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torchvision": torchvision.__version__,
        "torchjd": jd.version if jd is not None else None,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "settings": {
            key: value
            for key, value in vars(args).items()
            if key not in ("out", "child", "child_out")
        },
    }


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: list[Result]) -> str:
    columns = ["configuration", "T", "precision", "median ms", "IQR ms", "ratio to plain"]
    columns += ["ratio to separate", "window ms/step", "peak MiB", "measured-steps peak MiB"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for result in results:
        if result.status != "ok":
            cells = [result.config, str(result.tasks), result.precision]
            cells += [f"{result.status}: {result.reason}"] + ["-"] * (len(columns) - 4)
        else:
            cells = [
                result.config,
                str(result.tasks),
                result.precision,
                _number(result.median_ms),
                _number(result.iqr_ms),
                _number(result.ratio_to_plain),
                _number(result.ratio_to_separate),
                _number(result.window_ms_per_step),
                _number(result.peak_memory_mib, 0),
                _number(result.measured_peak_memory_mib, 0),
            ]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def markdown(info: dict[str, Any], results: list[Result], cuda: bool) -> str:
    settings = info["settings"]
    threads = f"{settings['threads'] or torch.get_num_threads()} CPU threads"
    if not cuda:
        threads += ", steps timed by " + (
            "the process's CPU time" if settings["clock"] == "cpu" else "the wall clock"
        )
    lines = [
        "# lightning_mtl step overhead",
        "",
        f"- device: {info['device']} ({info['device_type']}; {threads})",
        f"- torch {info['torch']}, lightning {info['lightning']}, "
        f"torchvision {info['torchvision']}, torchjd {info['torchjd'] or 'not installed'}, "
        f"CUDA {info['cuda']}, Python {info['python']}",
        f"- date: {info['date']}",
        f"- command: `{info['command']}`",
        f"- {MODELS[settings['model']][2]}, {settings['batch_size']} images of "
        f"3x{settings['image_size']}x{settings['image_size']}, {settings['warmup']} warm-up + "
        f"{settings['steps']} measured steps; median and interquartile range of the per-step times",
        "",
        table(results),
        "",
        "Ratios: median over the median of `plain` (of `separate_backwards`) at the same T and the "
        "run's precision, also for `torchjd`, which always runs in fp32. Window ms/step: the "
        "whole measured window over the number of steps, which also counts the time between "
        "steps. A suffix `@form` is the form of per-objective gradients the engine was given.",
        "Peak MiB: the most memory in use during the configuration (warm-up included) above what "
        "was in use when it started; measured-steps peak: the same over the measured steps only. "
        + (
            "Memory: torch.cuda.max_memory_allocated."
            if cuda
            else "Memory: the peak resident set of a fresh process per configuration (VmHWM, "
            "reset through /proc/self/clear_refs), above its resident set after imports and data."
        ),
    ]
    notes = [
        f"- {result.config} (T={result.tasks}): {note}"
        for result in results
        for note in result.notes
    ]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="measured steps (default 30)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up steps (default 10)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-batches", type=int, default=4, help="fixed batches cycled")
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10], help="values of T")
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16-mixed")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=[],
        help="catalogue strategies to add, Name or Name:key=value,... (e.g. RGB:alpha_steps=30)",
    )
    parser.add_argument(
        "--strategy-scope",
        choices=("shared", "representation"),
        default="shared",
        help="what --strategies balance: the trunk's parameters or its output features",
    )
    parser.add_argument(
        "--torchjd-aggregators",
        nargs="+",
        default=[],
        help="torchjd aggregators to add, Name or Name:key=value,... (e.g. UPGrad)",
    )
    parser.add_argument(
        "--libmtl-weightings",
        nargs="+",
        default=[],
        help="LibMTL weightings to add, Name or Name:key=value,... (e.g. PCGrad CAGrad)",
    )
    parser.add_argument(
        "--jacobian-forms",
        nargs="+",
        choices=JACOBIAN_FORMS,
        default=[],
        help="run `jacobian` and --strategies once per form of per-objective gradients "
        "(configuration@form); default: the engine's default only",
    )
    parser.add_argument("--model", choices=tuple(MODELS), default="resnet18")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="CPU device: time steps by the wall clock or by the process's CPU time",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmark_results"))
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "T"), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.num_batches < 1:
        parser.error("--steps and --num-batches must be positive, --warmup not negative.")
    if min(args.tasks) < 2:
        parser.error("every T must be at least 2 (PGI needs two objectives).")
    if args.device == "cuda" and args.clock != "wall":
        parser.error("--clock cpu times CPU runs; CUDA steps are timed with CUDA events.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device is available; use --device cpu for a smoke test.")
    args.configs = [config for config in CONFIGS if config in args.configs]
    for spec in args.strategies:
        try:
            catalogue_strategy(spec)
        except (ValueError, TypeError) as error:
            parser.error(f"--strategies {spec}: {error}")
    args.configs += [f"strategy:{spec}" for spec in args.strategies]
    if args.jacobian_forms:
        args.configs = [
            variant
            for config in args.configs
            for variant in (
                [f"{config}@{form}" for form in args.jacobian_forms]
                if config == "jacobian" or config.startswith("strategy:")
                else [config]
            )
        ]
    args.configs += [f"torchjd:{spec}" for spec in args.torchjd_aggregators]
    args.configs += [f"libmtl:{spec}" for spec in args.libmtl_weightings]
    return args


def run_child(args: argparse.Namespace, device: torch.device) -> int:
    """``--child CONFIG T``: measure one configuration, write its result as JSON."""
    config, tasks = args.child[0], int(args.child[1])
    batches = make_batches(args, tasks, device)
    wants_torchjd = config.startswith("torchjd")
    jd, jd_reason = load_torchjd() if wants_torchjd else (None, "not requested")
    result = measure(config, tasks, batches, args, device, jd, jd_reason)
    args.child_out.write_text(json.dumps(asdict(result)))
    return 0


def with_ratios(results: list[Result]) -> None:
    """Fill each result's ratios to ``plain`` and ``separate_backwards`` at the same T."""
    references = {
        (result.config, result.tasks): result.median_ms
        for result in results
        if result.status == "ok" and result.config in ("plain", "separate_backwards")
    }
    for result in results:
        if result.median_ms is None:
            continue
        plain = references.get(("plain", result.tasks))
        separate = references.get(("separate_backwards", result.tasks))
        result.ratio_to_plain = result.median_ms / plain if plain else None
        result.ratio_to_separate = result.median_ms / separate if separate else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.child is not None:
        return run_child(args, device)
    wants_torchjd = any(config.startswith("torchjd") for config in args.configs)
    jd, jd_reason = load_torchjd() if wants_torchjd else (None, "not requested")
    if wants_torchjd and jd is None:
        print(f"torchjd: skipped: {jd_reason}", file=sys.stderr)
    info = header(args, device, jd)
    results: list[Result] = []
    for tasks in args.tasks:
        batches = make_batches(args, tasks, device) if device.type == "cuda" else []
        for config in args.configs:
            if device.type == "cuda":
                result = measure(config, tasks, batches, args, device, jd, jd_reason)
            else:
                result = measure_in_fresh_process(config, tasks, argv)
            summary = (
                f"median {result.median_ms:.2f} ms, IQR {result.iqr_ms:.2f} ms, "
                f"peak {_number(result.peak_memory_mib, 0)} MiB"
                if result.status == "ok"
                else f"{result.status}: {result.reason}"
            )
            print(f"T={tasks} {config}: {summary}", file=sys.stderr, flush=True)
            results.append(result)
        del batches
    with_ratios(results)
    report = markdown(info, results, device.type == "cuda")
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"step_overhead_{device.type}_{args.precision}"
    (args.out / f"{stem}.md").write_text(report)
    payload = {**info, "results": [asdict(result) for result in results]}
    payload["settings"]["configs"] = list(args.configs)
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {args.out / stem}.md and .json", file=sys.stderr)
    return 0 if all(result.status != "failed" for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
