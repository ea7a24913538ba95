"""Catch, on the CPU, the calls that would make a CUDA device wait for the host, and count the
ops a call dispatches (on a GPU, each non-view op is a kernel launch).

``torch.cuda.set_sync_debug_mode("error")`` only works on a GPU. Most synchronising calls are
recognisable by name, whatever the device: reading a value back (``item``, ``bool(tensor)``,
``tolist``, ``numpy``, ``cpu``), ops whose output size depends on the data (``nonzero``,
boolean indexing, ``masked_select``, ``unique``, ``bincount``, ``repeat_interleave`` without
``output_size``) and linear-algebra routines that check their LAPACK/cuSOLVER status
(``eigh``, ``svd``, ``cholesky``, ``solve``, ``inv``, ...). ``detect_host_syncs`` records
every such call, with the package line that made it, so that a CPU test can hold the hot
path to the GPU rule. Calls that a CUDA device makes without waiting (copies to the device,
random numbers on a CPU generator) are not listed, and neither are the reads inside
``torch.optim``: its optimizers keep their step counters on the host unless ``capturable``, so
those reads never wait for the device.
"""

from __future__ import annotations

import collections
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Python-level calls that copy a tensor to the host (the ``__bool__``/``__int__``/``__float__``
# family shows up below as ``_local_scalar_dense``).
HOST_READS = frozenset({"tolist", "numpy", "cpu"})

# Linear algebra whose CUDA implementation reads its status code back to raise an error.
CHECKED_LINALG = frozenset(
    {
        "linalg_eigh",
        "linalg_eigvalsh",
        "linalg_svd",
        "linalg_svdvals",
        "svd",
        "linalg_cholesky",
        "cholesky",
        "linalg_solve",
        "linalg_inv",
        "inverse",
        "linalg_lstsq",
        "linalg_pinv",
        "linalg_matrix_rank",
        "linalg_eig",
        "linalg_eigvals",
    }
)

# Dispatcher ops that wait for the device: a scalar read, or an output sized by the data.
SYNCING_OPS = frozenset(
    {
        "_local_scalar_dense",
        "nonzero",
        "masked_select",
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "unique_dim_consecutive",
        "bincount",
        "equal",
        "is_nonzero",
    }
)


@dataclass(frozen=True)
class HostSync:
    """One synchronising call: what it was, and the package line (else the caller) that made it."""

    call: str
    where: str


def _record(found: list[HostSync], call: str) -> None:
    frames = [f for f in traceback.extract_stack() if f.filename != __file__]
    if any("/torch/optim/" in f.filename for f in frames):
        return
    package = [f for f in frames if "lightning_mtl" in f.filename and "/tests/" not in f.filename]
    frame = (package or frames)[-1]
    where = f"{frame.filename.rsplit('lightning_mtl', 1)[-1].lstrip('/')}:{frame.lineno}"
    found.append(HostSync(call, where))


def _has_boolean_index(args: tuple[Any, ...]) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(
        isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in (indices or ())
    )


class _FunctionWatch(TorchFunctionMode):
    def __init__(self, found: list[HostSync]) -> None:
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = getattr(func, "__name__", "")
        if name in HOST_READS or name in CHECKED_LINALG:
            _record(self.found, name)
        return func(*args, **(kwargs or {}))


class _DispatchWatch(TorchDispatchMode):
    def __init__(self, found: list[HostSync]) -> None:
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        syncs = (
            name in SYNCING_OPS
            or name in {"_linalg_eigh", "_linalg_svd"}
            or (
                name in {"index", "index_put", "index_put_", "_index_put_impl"}
                and _has_boolean_index(args)
            )
            or (
                name == "repeat_interleave"
                and kwargs.get("output_size") is None
                and isinstance(args[0], torch.Tensor)
                and len(args) == 1
            )
        )
        if syncs:
            _record(self.found, name)
        return func(*args, **kwargs)


@contextmanager
def detect_host_syncs(into: list[HostSync] | None = None) -> Iterator[list[HostSync]]:
    """Record the synchronising calls made inside the block (appended to ``into`` if given).

    Example::

        >>> with detect_host_syncs() as found:
        ...     x = torch.arange(4.0)
        ...     y = (x * 2).sum()          # stays on the device
        ...     z = x[x > 1]               # boolean index: the size depends on the data
        ...     w = float(y)               # a scalar read
        >>> [sync.call for sync in found]
        ['index', '_local_scalar_dense']
    """
    found: list[HostSync] = [] if into is None else into
    with ExitStack() as stack:
        stack.enter_context(_FunctionWatch(found))
        stack.enter_context(_DispatchWatch(found))
        yield found


def watch_steps(module: Any, hook: str = "training_step") -> list[list[HostSync]]:
    """Record the synchronising calls of every call of ``module.<hook>`` (a list per call).

    The check is on the step only: Lightning's own loop (progress bar, logging at the cadence
    the user chose) reads values back by design.
    """
    steps: list[list[HostSync]] = []
    step = getattr(module, hook)

    def watched(*args: Any, **kwargs: Any) -> Any:
        with detect_host_syncs() as found:
            output = step(*args, **kwargs)
        steps.append(found)
        return output

    setattr(module, hook, watched)
    return steps


# Ops that only re-describe a tensor: they cost host time but launch no kernel.
VIEW_OPS = frozenset(
    {
        "alias",
        "as_strided",
        "detach",
        "diagonal",
        "expand",
        "lift_fresh",
        "permute",
        "reshape",
        "select",
        "slice",
        "split",
        "squeeze",
        "t",
        "transpose",
        "unbind",
        "unsqueeze",
        "view",
        "_reshape_alias",
        "_unsafe_view",
    }
)


class OpCounter(TorchDispatchMode):
    """Counts the ops dispatched inside the block: ``kernels`` by name, and ``views``.

    Example::

        >>> with OpCounter() as ops:
        ...     x = torch.ones(3).unsqueeze(0) * 2
        >>> dict(ops.kernels), ops.views, ops.total
        ({'ones': 1, 'mul': 1}, 1, 3)
    """

    def __init__(self) -> None:
        super().__init__()
        self.kernels: collections.Counter[str] = collections.Counter()
        self.views = 0

    @property
    def total(self) -> int:
        """Every dispatched op, kernels and views."""
        return sum(self.kernels.values()) + self.views

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        if name in VIEW_OPS:
            self.views += 1
        else:
            self.kernels[name] += 1
        return func(*args, **(kwargs or {}))


def ops_per_iteration(solve: Callable[[int], object]) -> int:
    """The ops that one more iteration adds to ``solve(iterations)``, set-up excluded: on an
    accelerator the iteration counts are fixed, so this is a solver's cost there."""
    counts = []
    for iterations in (20, 21):
        with OpCounter() as ops:
            solve(iterations)
        counts.append(ops.total)
    return counts[1] - counts[0]
