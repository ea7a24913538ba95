"""The Jacobian computer's forms (loop, batched, func) and the measured choice among them."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import lightning_mtl.engine.jacobian as jacobian_module
from lightning_mtl.engine import JacobianComputer

TASKS, BATCH, CLASSES = 4, 6, 3


class ConvNet(nn.Module):
    """Convolution, batch norm and ReLU in a trunk; one linear head and cross-entropy per task;
    plus a parameter no objective uses (the first of ``parameters()``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.heads = nn.ModuleList(nn.Linear(4, CLASSES) for _ in range(TASKS))
        self.unused = nn.Parameter(torch.ones(2))

    def objectives(self, images: Tensor, labels: Tensor) -> Tensor:
        features = self.trunk(images)
        losses = [
            F.cross_entropy(head(features), labels[:, t]) for t, head in enumerate(self.heads)
        ]
        return torch.stack(losses)


def _data(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(BATCH, 3, 6, 6, generator=generator, dtype=torch.float64).to(dtype)
    return images, torch.randint(0, CLASSES, (BATCH, TASKS), generator=generator)


def _reference(net: ConvNet) -> Tensor:
    """Float64 Jacobian, one ``torch.autograd.grad`` of each loss of a float64 copy."""
    double = copy.deepcopy(net).double()
    objectives = double.objectives(*_data(torch.float64))
    params = list(double.parameters())
    rows = []
    for loss in objectives:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    return torch.stack(rows)


@pytest.mark.parametrize("form", ["loop", "batched", "func", "auto", "measure"])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_every_form_gives_the_float64_jacobian(form: str, chunk_size: int | None) -> None:
    net = ConvNet()
    expected = _reference(net)
    objectives = net.objectives(*_data())
    computer = JacobianComputer(chunk_size, form=form)  # type: ignore[arg-type]
    for _ in range(4):  # "auto": warm-up, two timed calls, then the chosen form
        jacobian = computer(objectives, list(net.parameters()))
        assert jacobian.dtype == torch.float32
        torch.testing.assert_close(jacobian.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.all(jacobian[:, :2] == 0)  # the unused parameter (a module's own come first)
    # The graph is retained: the objectives can still be differentiated.
    objectives.sum().backward()


def test_each_call_returns_a_new_matrix() -> None:
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    computer = JacobianComputer(form="loop")
    first = computer(torch.stack([(w**2).sum(), w.sum()]), [w])
    second = computer(torch.stack([(w**3).sum(), 2 * w.sum()]), [w])
    torch.testing.assert_close(first, torch.tensor([[2.0, 4.0], [1.0, 1.0]]))
    torch.testing.assert_close(second, torch.tensor([[3.0, 12.0], [2.0, 2.0]]))


@pytest.mark.parametrize("fast", ["loop", "batched", "func"])
def test_auto_uses_the_fastest_form_and_says_so_once(
    fast: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Timings are made up (the form ``fast`` takes 1 ms, the others 2 ms), so the choice does
    # not depend on the load of the machine running the tests; every form still runs.
    def marked(
        self: JacobianComputer, form: str, outputs: Tensor, inputs: list[Tensor], out: Tensor
    ) -> tuple[float, float]:
        jacobian_module._FORM_FUNCTIONS[form](outputs, inputs, out, self.chunk_size)
        return 0.0, 0.001 if form == fast else 0.002

    monkeypatch.setattr(JacobianComputer, "_marked", marked)
    messages: list[str] = []
    monkeypatch.setattr(jacobian_module, "rank_zero_info", messages.append)
    net = ConvNet()
    objectives = net.objectives(*_data())
    computer = JacobianComputer(form="measure")
    for _ in range(5):
        computer(objectives, list(net.parameters()))
    assert list(computer.choices.values()) == [fast]
    assert len(messages) == 1
    assert f"use the {fast!r} form" in messages[0]


def test_auto_waits_for_unfinished_timings_without_measuring_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On a device the timings are events, read only once the device has reached them: here the
    # first two polls (two timed calls of the first form each) find them unfinished, as a busy
    # GPU would.
    reads: list[int] = []
    seconds = jacobian_module._seconds

    def unfinished_twice(start: float, stop: float) -> float | None:
        reads.append(1)
        return None if len(reads) <= 4 else seconds(start, stop)

    monkeypatch.setattr(jacobian_module, "_seconds", unfinished_twice)
    runs: list[str] = []
    for form, function in dict(jacobian_module._FORM_FUNCTIONS).items():

        def counted(*args: object, form: str = form, function=function) -> None:  # type: ignore[no-untyped-def]
            runs.append(form)
            function(*args)

        monkeypatch.setitem(jacobian_module._FORM_FUNCTIONS, form, counted)
    net = ConvNet()
    expected = _reference(net)
    objectives = net.objectives(*_data())
    computer = JacobianComputer(form="measure")
    for call in range(5):
        jacobian = computer(objectives, list(net.parameters()))
        torch.testing.assert_close(jacobian.double(), expected, rtol=1e-5, atol=1e-6)
        assert bool(computer.choices) == (call >= 4)
    # Each form ran on the three measured calls only; the waiting calls used the loop.
    assert sorted(runs) == sorted(["batched", "func", "loop"] * 3)


class NoBatching(torch.autograd.Function):
    """Doubles its input; its backward fails on the batched tensors of both vmaps."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        return x * 2

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        grad.numpy()  # fails on a batched tensor, works on a plain one
        return grad * 2


def _unbatchable() -> tuple[Tensor, Tensor, Tensor]:
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    doubled = NoBatching.apply(w)
    outputs = torch.stack([doubled.sum(), (doubled**2).sum()])
    return w, outputs, torch.tensor([[2.0, 2.0], [8.0, -16.0]])


@pytest.mark.parametrize("form", ["batched", "func"])
def test_a_forced_form_that_fails_falls_back_to_the_loop_with_a_warning(form: str) -> None:
    w, outputs, expected = _unbatchable()
    computer = JacobianComputer(form=form)  # type: ignore[arg-type]
    with pytest.warns(RuntimeWarning, match="fall back"):
        jacobian = computer(outputs, [w])
    torch.testing.assert_close(jacobian, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        torch.testing.assert_close(computer(outputs, [w]), expected)
    assert list(computer.choices.values()) == ["loop"]


def test_auto_drops_the_forms_that_fail_and_names_them(monkeypatch: pytest.MonkeyPatch) -> None:
    messages: list[str] = []
    monkeypatch.setattr(jacobian_module, "rank_zero_info", messages.append)
    w, outputs, expected = _unbatchable()
    computer = JacobianComputer(form="measure")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            torch.testing.assert_close(computer(outputs, [w]), expected)
    assert list(computer.choices.values()) == ["loop"]
    assert "batched failed" in messages[0] and "func failed" in messages[0]


class CountingBackward(torch.autograd.Function):
    """The identity, counting how many backward passes go through it."""

    calls = 0

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        CountingBackward.calls += 1
        return grad


@pytest.mark.parametrize(
    ("stack", "head_passes"),
    [
        (torch.stack, TASKS),  # each objective's graph once
        (lambda losses: torch.stack(losses) * 1024.0, TASKS),  # through a loss scale
        (lambda losses: torch.cat([loss.view(1) for loss in losses]), TASKS * TASKS),
    ],
)
def test_the_loop_runs_each_objectives_graph_once_when_they_are_stacked(
    stack: Callable[[list[Tensor]], Tensor], head_passes: int
) -> None:
    torch.manual_seed(0)
    trunk = nn.Linear(3, 4)
    heads = [nn.Linear(4, 1) for _ in range(TASKS)]
    features = trunk(torch.randn(5, 3))
    losses = [CountingBackward.apply(head(features)).square().mean() for head in heads]
    outputs = stack(losses)
    params = list(trunk.parameters())
    CountingBackward.calls = 0
    jacobian = JacobianComputer(form="loop")(outputs, params)
    assert CountingBackward.calls == head_passes
    scale = outputs[0].item() / losses[0].item()
    expected = torch.stack(
        [
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
            for loss in losses
        ]
    )
    torch.testing.assert_close(jacobian, scale * expected)


def test_a_single_objective_is_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    messages: list[str] = []
    monkeypatch.setattr(jacobian_module, "rank_zero_info", messages.append)
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    computer = JacobianComputer()
    torch.testing.assert_close(
        computer(torch.stack([(w**2).sum()]), [w]), torch.tensor([[2.0, 4.0]])
    )
    assert list(computer.choices.values()) == ["loop"] and not messages


def test_rejects_an_unknown_form() -> None:
    with pytest.raises(ValueError, match="form must be one of"):
        JacobianComputer(form="vmap")  # type: ignore[arg-type]


def test_the_loop_gives_zero_rows_to_objectives_without_a_graph() -> None:
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    computer = JacobianComputer(form="loop")
    stacked = torch.stack([(w**2).sum(), torch.tensor(5.0), 3 * w.sum()])
    torch.testing.assert_close(
        computer(stacked, [w]), torch.tensor([[2.0, 4.0], [0.0, 0.0], [3.0, 3.0]])
    )
    # A leaf among the stacked objectives: the loop starts at the stack's output instead.
    leaf = torch.tensor(1.0, requires_grad=True)
    stacked = torch.stack([(w**2).sum(), torch.tensor(5.0), leaf])
    expected = torch.tensor([[2.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(computer(stacked, [w, leaf]), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("form", ["loop", "batched", "func", "auto", "measure"])
def test_every_form_gives_the_jacobian_on_a_gpu(form: str) -> None:
    # The backward pass runs on autograd's device thread there; the loss scale of 16-mixed
    # multiplies the stacked objectives. Convolutions may use TF32, hence the tolerance.
    net = ConvNet()
    expected = 1024.0 * _reference(net)
    cuda = copy.deepcopy(net).cuda()
    images, labels = _data()
    objectives = cuda.objectives(images.cuda(), labels.cuda()) * torch.tensor(1024.0).cuda()
    computer = JacobianComputer(2, form=form)  # type: ignore[arg-type]
    for _ in range(4):
        jacobian = computer(objectives, list(cuda.parameters()))
        torch.testing.assert_close(jacobian.double().cpu(), expected, rtol=2e-3, atol=2e-3)


def test_auto_takes_the_loop_on_the_cpu_without_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    measured: list[str] = []
    monkeypatch.setattr(
        JacobianComputer, "_marked", lambda self, form, *args: measured.append(form)
    )
    net = ConvNet()
    computer = JacobianComputer()
    jacobian = computer(net.objectives(*_data()), list(net.parameters()))
    torch.testing.assert_close(jacobian.double(), _reference(net), rtol=1e-5, atol=1e-6)
    assert list(computer.choices.values()) == ["loop"] and measured == []
