"""Per-objective gradients of a set of tensors, in the form that is fastest for the problem."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_info
from torch import Tensor
from torch.autograd.graph import GradientEdge

JacobianForm = Literal["auto", "measure", "loop", "batched", "func"]
"""How :class:`JacobianComputer` forms the Jacobian (see there)."""

_FORMS: tuple[str, ...] = ("batched", "func", "loop")
"""The forms ``"auto"`` measures, in the order of a trial; ``loop`` last, so that a trial call
returns the loop's result whatever the timings."""

_WARMUP_CALLS = 1
_TIMED_CALLS = 2

_ProblemKey = tuple[int, tuple[tuple[int, ...], ...], torch.dtype, torch.device]


class JacobianComputer:
    """Computes the ``[T, D]`` matrix of per-objective gradients of ``inputs``.

    Three forms give the same matrix (to float32 rounding); which is fastest depends on the
    device and the model, so by default the computer measures them:

    * ``"loop"``: one backward pass per objective. Where ``outputs`` is a ``torch.stack`` of the
      objectives (possibly times a loss scale), each pass starts at its objective's input of the
      stack, so it runs that objective's own graph (its task head) and the shared part, not
      every head with a zero gradient. Holds one row of gradients at a time.
    * ``"batched"``: one backward pass per chunk of ``chunk_size`` objectives, batched by
      autograd's ``is_grads_batched``. That uses PyTorch's older ``vmap``, which has no batching
      rule for convolution or batch-norm backward: those run row by row and are stacked again.
    * ``"func"``: ``torch.func.vmap`` over ``torch.autograd.grad`` of the graph already built,
      per chunk of ``chunk_size`` objectives (the mechanism torchjd uses); its batching rules
      cover convolution and batch norm. ``torch.func.jacrev`` is not an option: it needs the
      objectives as a function of the inputs, and the engine receives a graph already built by
      the user's ``compute_objectives``.
    * ``"measure"``: for each problem (number of objectives, shapes of the inputs, device) the
      first call runs every form once (warm-up), the next two calls time each form on the same
      graph, and the fastest is used from then on; the choice is logged once
      (``rank_zero_info``) and kept in :attr:`choices`. On an accelerator the times are events
      in the stream, read once the device has passed them (the host never waits for it), so the
      choice may come a call or two later. Until it is made the result is the loop's, and during
      the three measured calls the memory in use is that of the most demanding form. A form that
      fails is dropped.
    * ``"auto"`` (the default): the loop on the CPU, ``"measure"`` on an accelerator. On the CPU
      the loop was the fastest form in every configuration measured (a small CNN at T = 2, 10
      and 40, and the representation scope: ``benchmarks/RESULTS.md``), and measuring would
      hold the batched forms' intermediates for three steps (about 1 GB at T = 40 there, against
      130 MiB for the loop).

    The batched forms hold ``chunk_size`` rows of gradients and of the backward pass's
    intermediates at once. Every form writes straight into one freshly allocated float32 matrix
    (no second ``[T, D]`` copy), which is returned and belongs to the caller: no later call
    reuses it, so it may be kept across steps. Under data parallelism each process chooses for
    itself: the forms differ only by rounding and none communicates, so the collective that
    follows sees the same operations on every process, and its result is the same on all.

    If a forced ``"batched"`` or ``"func"`` form fails (an operator of the model cannot be
    batched), the computer warns once and uses the loop for the rest of its life.

    Args:
        chunk_size: objectives per batched backward pass (``batched`` and ``func``, also while
            ``auto`` measures them); lower it to cap their memory, which grows with the number
            of rows. ``None``: all objectives.
        form: ``"auto"``, ``"measure"``, or one of ``"loop"``, ``"batched"``, ``"func"``.

    Example::

        >>> import torch
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> losses = torch.stack([(w**2).sum(), w.sum()])
        >>> JacobianComputer(form="loop")(losses, [w])
        tensor([[2., 4.],
                [1., 1.]])
    """

    def __init__(self, chunk_size: int | None = None, form: JacobianForm = "auto") -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None; got {chunk_size}.")
        if form not in get_args(JacobianForm):
            raise ValueError(f"form must be one of {get_args(JacobianForm)}; got {form!r}.")
        self.chunk_size = chunk_size
        self.form = form
        self.choices: dict[_ProblemKey, str] = {}
        """The form used for each problem seen so far, once chosen (or forced)."""
        self._trials: dict[_ProblemKey, _Trial] = {}
        self._failures: dict[str, str] = {}

    def __call__(self, outputs: Tensor, inputs: Sequence[Tensor]) -> Tensor:
        """Gradients of each entry of the 1-D ``outputs`` with respect to ``inputs``, flattened.

        The graph is retained, so the caller can still differentiate ``outputs`` afterwards.
        Inputs an output does not depend on contribute zeros.
        """
        if outputs.ndim != 1:
            raise ValueError(f"outputs must be 1-D; got shape {tuple(outputs.shape)}.")
        if not inputs:
            raise ValueError("there are no inputs to differentiate with respect to.")
        inputs = list(inputs)
        rows = outputs.shape[0]
        jacobian = torch.empty(
            rows, sum(t.numel() for t in inputs), dtype=torch.float32, device=outputs.device
        )
        key = (rows, tuple(tuple(t.shape) for t in inputs), outputs.dtype, outputs.device)
        form = self.choices.get(key) or self._forced_form(key, rows)
        if form is None:
            self._trial(key, outputs, inputs, jacobian)
            return jacobian
        if form != "loop" and not self._fill(form, outputs, inputs, jacobian):
            self.choices[key] = form = "loop"
        if form == "loop":
            _loop(outputs, inputs, jacobian, self.chunk_size)
        return jacobian

    def _forced_form(self, key: _ProblemKey, rows: int) -> str | None:
        """The form of a problem not seen yet: ``None`` if it must be measured."""
        measured = self.form == "measure" or (self.form == "auto" and key[3].type != "cpu")
        if measured and rows > 1:
            return None
        form = self.form if self.form in _FORMS and self.form not in self._failures else "loop"
        self.choices[key] = form
        return form

    def _fill(self, form: str, outputs: Tensor, inputs: list[Tensor], jacobian: Tensor) -> bool:
        """Fill ``jacobian`` with a forced batched ``form``; ``False`` if that form failed."""
        try:
            _FORM_FUNCTIONS[form](outputs, inputs, jacobian, self.chunk_size)
        except (RuntimeError, NotImplementedError) as error:
            self._failures[form] = str(error)
            warnings.warn(
                f"The {form!r} form of per-objective gradients failed, so they fall back to one "
                f"backward pass per objective (slower). Cause: {error}",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        return True

    def _trial(
        self, key: _ProblemKey, outputs: Tensor, inputs: list[Tensor], jacobian: Tensor
    ) -> None:
        """One call of the measurement: every form on each of the first ``_WARMUP_CALLS +
        _TIMED_CALLS`` calls, then the choice as soon as the timings can be read (a device's
        events are read once it has reached them, never waited for; until then the loop)."""
        trial = self._trials.setdefault(key, _Trial())
        if trial.calls < _WARMUP_CALLS + _TIMED_CALLS:
            trial.calls += 1
            for form in list(trial.marks):
                try:
                    trial.marks[form].append(self._marked(form, outputs, inputs, jacobian))
                except (RuntimeError, NotImplementedError) as error:
                    if form == "loop":
                        raise
                    del trial.marks[form]
                    self._failures[form] = str(error).splitlines()[0][:200]
        else:
            _loop(outputs, inputs, jacobian, self.chunk_size)
        best = trial.best_seconds() if trial.calls == _WARMUP_CALLS + _TIMED_CALLS else None
        if best is None:
            return
        chosen = min(best, key=best.__getitem__)
        self.choices[key] = chosen
        del self._trials[key]
        measured = ", ".join(f"{form} {seconds * 1e3:.1f} ms" for form, seconds in best.items())
        failed = "".join(
            f"; {form} failed: {self._failures[form]}" for form in _FORMS if form not in best
        )
        rank_zero_info(
            f"lightning_mtl: per-objective gradients of {key[0]} objectives w.r.t. "
            f"{jacobian.shape[1]:,} values on {outputs.device} use the {chosen!r} form "
            f"(fastest of {measured}{failed})."
        )

    def _marked(
        self, form: str, outputs: Tensor, inputs: list[Tensor], jacobian: Tensor
    ) -> tuple[_Mark, _Mark]:
        start = _mark(outputs.device)
        _FORM_FUNCTIONS[form](outputs, inputs, jacobian, self.chunk_size)
        return start, _mark(outputs.device)


_Mark = float | torch.Event


def _mark(device: torch.device) -> _Mark:
    """A point in time: the host's clock on the CPU, an event in the device's stream elsewhere
    (recording it does not wait for the device)."""
    if device.type == "cpu":
        return time.perf_counter()
    event = torch.Event(device, enable_timing=True)
    event.record(torch.accelerator.current_stream(device))
    return event


def _seconds(start: _Mark, stop: _Mark) -> float | None:
    """Time between two marks, or ``None`` while the device has not reached ``stop``."""
    if isinstance(start, float) and isinstance(stop, float):
        return stop - start
    assert isinstance(start, torch.Event) and isinstance(stop, torch.Event)
    return start.elapsed_time(stop) / 1e3 if stop.query() else None


class _Trial:
    """The timings of the forms on the calls measured so far for one problem."""

    def __init__(self) -> None:
        self.calls = 0
        self.marks: dict[str, list[tuple[_Mark, _Mark]]] = {form: [] for form in _FORMS}

    def best_seconds(self) -> dict[str, float] | None:
        """Each form's fastest timed call (the warm-up calls left out), or ``None`` while a
        device has not finished them."""
        best = {}
        for form, marks in self.marks.items():
            seconds = [_seconds(start, stop) for start, stop in marks[_WARMUP_CALLS:]]
            if None in seconds:
                return None
            best[form] = min(s for s in seconds if s is not None)
        return best


def _loop(outputs: Tensor, inputs: list[Tensor], jacobian: Tensor, chunk_size: int | None) -> None:
    starts = _stacked_rows(outputs)
    grads: Sequence[Tensor | None]
    for row in range(outputs.shape[0]):
        start = starts[row] if starts is not None else None
        if starts is None:
            grads = torch.autograd.grad(outputs[row], inputs, retain_graph=True, allow_unused=True)
        elif start is None:
            grads = (None,) * len(inputs)
        else:
            edge, grad = start
            grads = torch.autograd.grad(
                edge, inputs, grad_outputs=grad, retain_graph=True, allow_unused=True
            )
        _write(jacobian[row : row + 1], grads, inputs)


_ENTRYWISE_NODES = frozenset(
    {"MulBackward0", "DivBackward0", "NegBackward0", "CloneBackward0", "ToCopyBackward0"}
)
"""Backward nodes of entry-wise operations, whose Jacobian is diagonal when one input and the
output have the objectives' shape."""


def _stacked_rows(outputs: Tensor) -> list[tuple[GradientEdge, Tensor] | None] | None:
    """Where each objective's own backward pass can start, if ``outputs`` is a ``torch.stack``
    of the objectives, possibly followed by entry-wise operations such as a loss scale.

    A pass started at ``outputs[row]`` goes through the stack, which hands every other
    objective a zero gradient and so runs all T objectives' graphs (the task heads) in each of
    the T passes. Starting at the objective's own input of the stack, with the gradient that
    reaches it, runs each head once. Returns, per row, that edge and gradient (``None`` for an
    objective without a graph), or ``None`` where ``outputs`` has another form. Reads nothing
    back from the device.
    """
    rows = outputs.shape[0]
    # The operations between the stack and ``outputs`` are entry-wise, so the gradient that
    # reaches the stack from a unit vector is that vector times their diagonal Jacobian, and
    # the diagonal is what reaches it from a vector of ones.
    scale = torch.ones(rows, dtype=outputs.dtype, device=outputs.device)
    node = outputs.grad_fn
    while node is not None and node.name() in _ENTRYWISE_NODES:
        live = [index for index, (child, _) in enumerate(node.next_functions) if child is not None]
        if len(live) != 1:
            return None
        backward: Any = node  # a backward node applies its derivative when called
        reached = _as_tuple(backward(scale))[live[0]]
        if reached is None or reached.shape != (rows,):
            return None
        scale = reached
        node = node.next_functions[live[0]][0]
    if node is None or node.name() != "StackBackward0" or len(node.next_functions) != rows:
        return None
    if any(
        child is not None and child.name().endswith("AccumulateGrad")
        for child, _ in node.next_functions
    ):
        return None
    return [
        None if child is None else (GradientEdge(child, index), scale[row])
        for row, (child, index) in enumerate(node.next_functions)
    ]


def _as_tuple(grads: Tensor | tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
    return grads if isinstance(grads, tuple) else (grads,)


def _batched(
    outputs: Tensor, inputs: list[Tensor], jacobian: Tensor, chunk_size: int | None
) -> None:
    for start, selector in _chunks(outputs, chunk_size):
        grads = torch.autograd.grad(
            outputs,
            inputs,
            grad_outputs=selector,
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
        _write(jacobian[start : start + selector.shape[0]], grads, inputs)


def _func(outputs: Tensor, inputs: list[Tensor], jacobian: Tensor, chunk_size: int | None) -> None:
    used: list[bool] = []

    def vjp(selector_row: Tensor) -> tuple[Tensor, ...]:
        # torch.func.vmap returns tensors only: the unused inputs' ``None`` are recorded aside.
        grads = torch.autograd.grad(
            outputs, inputs, grad_outputs=selector_row, retain_graph=True, allow_unused=True
        )
        used[:] = [grad is not None for grad in grads]
        return tuple(grad for grad in grads if grad is not None)

    for start, selector in _chunks(outputs, chunk_size):
        computed = iter(torch.func.vmap(vjp)(selector))
        grads = [next(computed) if is_used else None for is_used in used]
        _write(jacobian[start : start + selector.shape[0]], grads, inputs)


_FORM_FUNCTIONS: dict[str, Callable[[Tensor, list[Tensor], Tensor, int | None], None]] = {
    "loop": _loop,
    "batched": _batched,
    "func": _func,
}


def _chunks(outputs: Tensor, chunk_size: int | None) -> list[tuple[int, Tensor]]:
    """``(first row, rows of the identity)`` for each chunk of objectives."""
    rows = outputs.shape[0]
    identity = torch.eye(rows, dtype=outputs.dtype, device=outputs.device)
    step = chunk_size or rows
    return [(start, identity[start : start + step]) for start in range(0, rows, step)]


def _write(block: Tensor, grads: Sequence[Tensor | None], inputs: Sequence[Tensor]) -> None:
    """Copy each input's gradients (``[*shape]`` for one row, ``[rows, *shape]`` for several)
    into its columns of ``block`` (``[rows, D]``) without an intermediate copy; ``None`` (an
    unused input) writes zeros."""
    offset = 0
    for grad, tensor in zip(grads, inputs, strict=True):
        columns = block[:, offset : offset + tensor.numel()]
        if grad is None:
            columns.zero_()
        else:
            columns.view(block.shape[0], *tensor.shape).copy_(grad)
        offset += tensor.numel()


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one flat float32 vector (the layout of a Jacobian's columns)."""
    return torch.cat([tensor.reshape(-1).float() for tensor in tensors])


def unflatten_into_grads(parameters: Sequence[Tensor], flat: Tensor) -> None:
    """Write consecutive slices of ``flat`` into the ``.grad`` of each parameter."""
    offset = 0
    for parameter in parameters:
        size = parameter.numel()
        parameter.grad = flat[offset : offset + size].view_as(parameter).to(parameter.dtype)
        offset += size
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries; parameters have {offset}.")
