"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One intra-op thread: for files of tiny convolutions, where on a loaded 2-core machine
    OpenMP's spin-waiting made them up to 3× slower (64 s with two threads, 19 s with one,
    measured side by side on tests/test_multidigits.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def skip_cifar_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accept fake CIFAR files: torchvision verifies MD5 sums even with ``download=False`` (in
    ``CIFAR10._check_integrity`` and ``_load_meta``, both via ``cifar.check_integrity``), and a
    fake file cannot match the real checksums. Existence is still checked."""
    from torchvision.datasets import cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.fixture
def accelerator_paths() -> Iterator[None]:
    """The strategies' GPU code paths on the CPU: fixed iteration counts, the Jacobi eigensolver
    and CAGrad's wide level search."""
    from lightning_mtl.strategies import accelerator_code_paths

    with accelerator_code_paths():
        yield
