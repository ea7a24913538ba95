"""Which code path a solver takes: host shortcuts on the CPU, fixed work on an accelerator.

Reading a CPU tensor on the host costs nothing, so on the CPU the solvers stop as soon as they
have converged, decompose with LAPACK's ``eigh`` and let CAGrad try few levels per round. On an
accelerator each of those reads would make the host wait for the device, so the solvers run a
fixed amount of work instead: fixed iteration counts, the Jacobi eigensolver, CAGrad's wide
search. Both paths give the same results (``tests/test_accelerator_paths.py``).
:func:`accelerator_code_paths` makes CPU tensors take the accelerator path, so that tests and
benchmarks can check and measure it without a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor

__all__ = ["accelerator_code_paths", "host_shortcuts"]

_simulating_an_accelerator = False


def host_shortcuts(tensor: Tensor) -> bool:
    """Whether a solver may read ``tensor`` on the host for free: it lives on the CPU (and
    :func:`accelerator_code_paths` is not in force).

    Example::

        >>> import torch
        >>> host_shortcuts(torch.zeros(2))
        True
        >>> with accelerator_code_paths():
        ...     host_shortcuts(torch.zeros(2))
        False
    """
    return tensor.device.type == "cpu" and not _simulating_an_accelerator


@contextmanager
def accelerator_code_paths() -> Iterator[None]:
    """Inside the block, CPU tensors take the strategies' accelerator code paths.

    For tests and benchmarks: a GPU run's solver work (and its op count) reproduced on the CPU.
    Not thread-safe: it switches a module-level flag.

    Example::

        >>> import torch
        >>> from lightning_mtl.strategies import MGDA
        >>> rows = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> with accelerator_code_paths():
        ...     fixed_work = MGDA().aggregate(rows)
        >>> torch.allclose(fixed_work, MGDA().aggregate(rows))
        True
    """
    global _simulating_an_accelerator
    previous = _simulating_an_accelerator
    _simulating_an_accelerator = True
    try:
        yield
    finally:
        _simulating_an_accelerator = previous
