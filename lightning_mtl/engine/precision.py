"""Arithmetic that must not run in reduced precision under mixed-precision training."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Autocast off on ``device``, a no-op where autocast does not exist (e.g. ``meta``).

    The engine runs the balancing arithmetic (Gramian, solver input and output, combined
    direction, strategy state) inside it, so that it stays in float32 or wider under
    ``bf16-mixed`` and ``16-mixed`` while the objectives are differentiated as the user's
    precision dictates; losses that need full precision (Sinkhorn, softmax over many classes) use
    it too.

    Example::

        >>> a = torch.ones(2, 2)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16), full_precision(a.device):
        ...     (a @ a).dtype
        torch.float32
    """
    if not torch.amp.is_autocast_available(device.type):
        yield
        return
    with torch.autocast(device.type, enabled=False):
        yield
