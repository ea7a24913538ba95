"""Tests for Sinkhorn-Knopp and the SwAV swapped-prediction loss."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import pytest
import torch

from lightning_mtl.tasks.gcd.losses.swav import SwAVLoss, sinkhorn_knopp, swav_loss

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def reference_sinkhorn(
    scores: torch.Tensor, epsilon: float, iterations: int, small: float = 0.0
) -> np.ndarray:
    """PGI appendix A.1, algorithm 1, transcribed literally with explicit loops in float64.

    ``small`` is the algorithm's unspecified constant against division by zero. It is 0 here: in
    float64 with these scores no sum vanishes, and any positive value would visibly shift the
    masses of prototypes whose total is tiny (their sums can be far below 1e-12).
    """
    scores_np = scores.detach().to(torch.float64).numpy()
    batch, prototypes = scores_np.shape
    top = max(scores_np[b, k] / epsilon for b in range(batch) for k in range(prototypes))
    # line 1: Q = exp(O / ε − max)ᵀ, shape K × B
    q = [
        [math.exp(scores_np[b, k] / epsilon - top) for b in range(batch)] for k in range(prototypes)
    ]
    total = math.fsum(q[k][b] for k in range(prototypes) for b in range(batch))  # line 2
    q = [[q[k][b] / (total + small) for b in range(batch)] for k in range(prototypes)]
    for _ in range(iterations):
        for k in range(prototypes):  # lines 6-7: each prototype (row) gets mass 1/K
            row = math.fsum(q[k])
            q[k] = [value / (row + small) / prototypes for value in q[k]]
        for b in range(batch):  # lines 8-9: each sample (column) gets mass 1/B
            column = math.fsum(q[k][b] for k in range(prototypes))
            for k in range(prototypes):
                q[k][b] = q[k][b] / (column + small) / batch
    return np.array(q).T * batch  # lines 11-12: × B, back to B × K


class FakeProcessGroup:
    """``world_size`` threads standing in for DDP processes; ``all_reduce`` sums their tensors.

    Every rank blocks in ``all_reduce`` until all ranks have contributed, exactly like a
    collective, and all ranks get the same sum (summed in rank order).
    """

    def __init__(self, world_size: int, in_place: bool = False) -> None:
        self.world_size = world_size
        self.in_place = in_place
        self.calls = [0] * world_size
        self._slots: list[torch.Tensor | None] = [None] * world_size
        self._barrier = threading.Barrier(world_size, timeout=30)

    def all_reduce_for(self, rank: int) -> Callable[[torch.Tensor], torch.Tensor | None]:
        """The all-reduce callable of ``rank``."""

        def all_reduce(tensor: torch.Tensor) -> torch.Tensor | None:
            self.calls[rank] += 1
            self._slots[rank] = tensor.clone()
            self._barrier.wait()
            total = torch.stack([slot for slot in self._slots if slot is not None]).sum(dim=0)
            self._barrier.wait()  # nobody overwrites a slot before everyone has read them all
            if self.in_place:  # like torch.distributed.all_reduce: in place, returns None
                tensor.copy_(total)
                return None
            return total

        return all_reduce

    def run(
        self, work: Callable[[int, Callable[[torch.Tensor], torch.Tensor | None]], T]
    ) -> list[T]:
        """Run ``work(rank, all_reduce)`` on every rank concurrently; results in rank order."""
        with ThreadPoolExecutor(max_workers=self.world_size) as pool:
            futures = [
                pool.submit(work, rank, self.all_reduce_for(rank))
                for rank in range(self.world_size)
            ]
            return [future.result() for future in futures]


def split_sinkhorn(
    scores: torch.Tensor,
    sizes: list[int],
    mask: torch.Tensor | None = None,
    in_place: bool = False,
    **kwargs: float,
) -> tuple[torch.Tensor, FakeProcessGroup]:
    """Sinkhorn of ``scores`` split into per-"process" chunks of ``sizes``, re-concatenated."""
    chunks = scores.split(sizes)
    masks = mask.split(sizes) if mask is not None else [None] * len(sizes)
    group = FakeProcessGroup(len(sizes), in_place=in_place)
    parts = group.run(
        lambda rank, reduce: sinkhorn_knopp(
            chunks[rank], all_reduce=reduce, mask=masks[rank], **kwargs
        )
    )
    return torch.cat(parts), group


# ----------------------------------------------------------------------------- Sinkhorn


@pytest.mark.parametrize(
    ("batch", "prototypes", "epsilon", "iterations"),
    [(8, 3, 0.05, 3), (5, 7, 0.1, 1), (16, 4, 0.05, 10), (1, 3, 0.05, 3), (6, 1, 0.05, 2)],
)
def test_sinkhorn_matches_algorithm_1(
    batch: int, prototypes: int, epsilon: float, iterations: int
) -> None:
    scores = torch.rand(batch, prototypes, dtype=torch.float64) * 2 - 1  # cosine-like
    expected = reference_sinkhorn(scores, epsilon, iterations)
    codes64 = sinkhorn_knopp(scores, epsilon=epsilon, iterations=iterations)
    np.testing.assert_allclose(codes64.numpy(), expected, rtol=1e-9, atol=1e-12)
    codes32 = sinkhorn_knopp(scores.float(), epsilon=epsilon, iterations=iterations)
    assert codes32.dtype == torch.float32
    np.testing.assert_allclose(codes32.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_sinkhorn_marginals() -> None:
    scores = torch.rand(12, 4, dtype=torch.float64) * 2 - 1
    codes = sinkhorn_knopp(scores)
    expected = reference_sinkhorn(scores, 0.05, 3)
    # The last normalisation is over samples: each code is a distribution over prototypes.
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(12, dtype=torch.float64))
    # The prototype masses after 3 iterations are the algorithm's, not yet exactly balanced.
    np.testing.assert_allclose(codes.sum(dim=0).numpy(), expected.sum(axis=0), rtol=1e-9)
    # With enough iterations they converge to the equipartition B / K = 3 (faster for a softer ε).
    balanced = sinkhorn_knopp(scores, epsilon=0.5, iterations=200)
    torch.testing.assert_close(balanced.sum(dim=0), torch.full((4,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(balanced.sum(dim=1), torch.ones(12, dtype=torch.float64))


@pytest.mark.parametrize("offset", [-30.0, 7.5, 1e3])
def test_sinkhorn_invariant_to_constant(offset: float) -> None:
    scores = torch.randn(10, 5, dtype=torch.float64)
    torch.testing.assert_close(
        sinkhorn_knopp(scores + offset), sinkhorn_knopp(scores), rtol=1e-9, atol=1e-12
    )
    # float32 rounds scores + offset itself, so the agreement is only as good as that rounding.
    torch.testing.assert_close(
        sinkhorn_knopp(scores.float() + 5.0), sinkhorn_knopp(scores.float()), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_sinkhorn_large_scores_stay_finite(dtype: torch.dtype) -> None:
    scores = (torch.randn(16, 6) * 1e4).to(dtype)
    scores[:, 2] = -1e4  # a prototype that nobody likes still gets its share
    codes = sinkhorn_knopp(scores)
    assert codes.dtype == torch.float32
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = sinkhorn_knopp(scores)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, codes)


def test_sinkhorn_has_no_gradient() -> None:
    scores = torch.randn(6, 3, requires_grad=True)
    codes = sinkhorn_knopp(scores)
    assert not codes.requires_grad
    assert codes.grad_fn is None


def test_sinkhorn_mask_equals_subset() -> None:
    scores = torch.randn(9, 4, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True, False, True, False, True, True])
    codes = sinkhorn_knopp(scores, mask=mask)
    assert (codes[~mask] == 0).all()
    torch.testing.assert_close(codes[mask], sinkhorn_knopp(scores[mask]))
    # Excluded samples' scores do not matter, not even non-finite ones.
    changed = scores.clone()
    changed[~mask] = torch.tensor([float("nan"), float("inf"), -1e300, 0.0], dtype=torch.float64)
    torch.testing.assert_close(sinkhorn_knopp(changed, mask=mask), codes)
    assert (sinkhorn_knopp(scores, mask=torch.zeros(9, dtype=torch.bool)) == 0).all()


# ------------------------------------------------------------------------ Sinkhorn, DDP


@pytest.mark.parametrize("sizes", [[6, 6], [3, 9], [4, 4, 4], [2, 5, 0, 5]])
def test_sinkhorn_split_batch_equals_full_batch(sizes: list[int]) -> None:
    scores = torch.randn(12, 5, dtype=torch.float64)
    expected = sinkhorn_knopp(scores)
    codes, group = split_sinkhorn(scores, sizes)
    torch.testing.assert_close(codes, expected, rtol=1e-9, atol=1e-12)
    assert group.calls == [2 * 3] * len(sizes)  # two collectives per iteration, on every rank

    codes32, _ = split_sinkhorn(scores.float(), sizes)
    torch.testing.assert_close(codes32, expected.float(), rtol=1e-4, atol=1e-6)


def test_sinkhorn_split_batch_in_place_all_reduce_and_mask() -> None:
    scores = torch.randn(10, 3, dtype=torch.float64)
    mask = torch.rand(10) > 0.4
    mask[0] = True
    codes, _ = split_sinkhorn(scores, [5, 5], mask=mask, in_place=True, iterations=5)
    torch.testing.assert_close(codes, sinkhorn_knopp(scores, iterations=5, mask=mask))


def test_sinkhorn_split_batch_large_and_different_scales() -> None:
    # One process sees huge scores, the other tiny ones: the shared shift must still be safe.
    scores = torch.cat([torch.randn(6, 4) * 1e4, torch.randn(6, 4)]).bfloat16()
    expected = sinkhorn_knopp(scores)
    codes, _ = split_sinkhorn(scores, [6, 6])
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(12))


def test_sinkhorn_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="2-D"):
        sinkhorn_knopp(torch.randn(4))
    with pytest.raises(ValueError, match="floating-point"):
        sinkhorn_knopp(torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one prototype"):
        sinkhorn_knopp(torch.randn(4, 0))
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_knopp(torch.randn(4, 2), epsilon=0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn_knopp(torch.randn(4, 2), iterations=0)
    with pytest.raises(ValueError, match="mask"):
        sinkhorn_knopp(torch.randn(4, 2), mask=torch.ones(4))


# ------------------------------------------------------------------------------ SwAV loss


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_swav_loss_single_sample_by_hand() -> None:
    # One sample: each prototype row has one entry, so the code is uniform whatever the scores.
    p1 = torch.tensor([[0.0, 0.1]])
    p2 = torch.tensor([[0.2, 0.0]])
    torch.testing.assert_close(sinkhorn_knopp(p1), torch.tensor([[0.5, 0.5]]))
    # log softmax([0, 1]) sums to 1 − 2 log(1 + e); log softmax([2, 0]) to 2 − 2 log(1 + e²).
    expected = -1.5 + math.log(1 + math.e) + math.log(1 + math.e**2)
    assert swav_loss(p1, p2).item() == pytest.approx(expected, rel=1e-6)


def test_swav_loss_symmetric_pair_by_hand() -> None:
    # exp(P / ε) = [[e^a, 1], [1, e^a]] is already doubly stochastic after one row normalisation:
    # the codes are [[σ(a), σ(−a)], [σ(−a), σ(a)]] with a = 0.05 / 0.05 = 1 and 0.1 / 0.05 = 2.
    p1 = torch.tensor([[0.05, 0.0], [0.0, 0.05]])
    p2 = torch.tensor([[0.1, 0.0], [0.0, 0.1]])
    sig = torch.sigmoid(torch.tensor(1.0)).item()
    torch.testing.assert_close(sinkhorn_knopp(p1), torch.tensor([[sig, 1 - sig], [1 - sig, sig]]))

    def sigma(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    # P2 / τ = [1, 0] and P1 / τ = [0.5, 0]: log softmax is [log σ(x), log σ(−x)].
    per_sample = -(
        sigma(1) * log_sigmoid(1)
        + sigma(-1) * log_sigmoid(-1)
        + sigma(2) * log_sigmoid(0.5)
        + sigma(-2) * log_sigmoid(-0.5)
    )
    assert swav_loss(p1, p2).item() == pytest.approx(per_sample, rel=1e-6)
    # Both samples have the same loss by symmetry, so any non-empty mask gives the same value.
    assert swav_loss(p1, p2, mask=torch.tensor([True, False])).item() == pytest.approx(
        per_sample, rel=1e-6
    )


def reference_swav(
    p1: torch.Tensor, p2: torch.Tensor, mask: list[bool], temperature: float
) -> float:
    """Eq. 11 with explicit loops over samples and prototypes, codes from algorithm 1."""
    q1 = reference_sinkhorn(p1, 0.05, 3)
    q2 = reference_sinkhorn(p2, 0.05, 3)
    a = p1.detach().double().numpy() / temperature
    b = p2.detach().double().numpy() / temperature
    terms = []
    for i, selected in enumerate(mask):
        if not selected:
            continue
        lse_a = math.log(math.fsum(math.exp(x) for x in a[i]))
        lse_b = math.log(math.fsum(math.exp(x) for x in b[i]))
        terms.append(
            -math.fsum(
                q1[i, k] * (b[i, k] - lse_b) + q2[i, k] * (a[i, k] - lse_a)
                for k in range(a.shape[1])
            )
        )
    return math.fsum(terms) / max(len(terms), 1)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_swav_loss_matches_reference(temperature: float) -> None:
    p1 = torch.rand(10, 4) * 2 - 1
    p2 = torch.rand(10, 4) * 2 - 1
    mask = torch.rand(10) > 0.5
    loss = swav_loss(p1, p2, mask=mask, temperature=temperature)
    assert loss.item() == pytest.approx(
        reference_swav(p1, p2, mask.tolist(), temperature), rel=1e-5
    )
    assert swav_loss(p1, p2, temperature=temperature).item() == pytest.approx(
        reference_swav(p1, p2, [True] * 10, temperature), rel=1e-5
    )
    torch.testing.assert_close(
        swav_loss(p1, p2, mask=torch.ones(10, dtype=torch.bool)), swav_loss(p1, p2)
    )


def test_swav_gradient_flows_to_logits_not_through_codes() -> None:
    p1 = torch.randn(8, 5, requires_grad=True)
    p2 = torch.randn(8, 5, requires_grad=True)
    mask = torch.tensor([True, True, False, True, False, True, True, False])
    temperature = 0.1
    swav_loss(p1, p2, mask=mask, temperature=temperature).backward()
    # With the codes as constants, d/dP1 of −Σ_k Q2 log softmax(P1 / τ) is (softmax − Q2) / τ
    # (each code sums to 1), divided by the number of masked samples. Any gradient through the
    # codes would add terms.
    q1, q2 = sinkhorn_knopp(p1), sinkhorn_knopp(p2)
    count = int(mask.sum())
    weight = mask[:, None].float() / (temperature * count)
    torch.testing.assert_close(p1.grad, (torch.softmax(p1 / temperature, 1) - q2) * weight)
    torch.testing.assert_close(p2.grad, (torch.softmax(p2 / temperature, 1) - q1) * weight)


def test_swav_mask_unmasked_samples_get_no_gradient() -> None:
    p1 = torch.randn(6, 3, requires_grad=True)
    p2 = torch.randn(6, 3, requires_grad=True)
    mask = torch.tensor([True, False, False, True, True, False])
    swav_loss(p1, p2, mask=mask).backward()
    assert p1.grad is not None and p2.grad is not None
    assert (p1.grad[~mask] == 0).all() and (p2.grad[~mask] == 0).all()
    assert (p1.grad[mask] != 0).any()


def test_swav_mask_sinkhorn_ignores_unmasked_samples() -> None:
    p1 = torch.randn(8, 4)
    p2 = torch.randn(8, 4)
    mask = torch.tensor([True, False, True, False, True, True, False, False])
    loss = swav_loss(p1, p2, mask=mask, mask_sinkhorn=True)
    torch.testing.assert_close(loss, swav_loss(p1[mask], p2[mask]))
    changed1, changed2 = p1.clone(), p2.clone()
    changed1[~mask] = torch.randn(4, 4) * 100
    changed2[~mask] = float("nan")
    torch.testing.assert_close(swav_loss(changed1, changed2, mask=mask, mask_sinkhorn=True), loss)
    # By default (as in the paper) the codes use the whole batch, so unmasked samples do shape
    # the targets of the masked ones.
    default = swav_loss(p1, p2, mask=mask)
    assert not torch.allclose(swav_loss(changed1, p2, mask=mask), default)


@pytest.mark.parametrize("mask_sinkhorn", [False, True])
def test_swav_all_false_mask_is_zero_with_finite_gradient(mask_sinkhorn: bool) -> None:
    p1 = torch.randn(5, 3, requires_grad=True)
    p2 = torch.randn(5, 3, requires_grad=True)
    loss = swav_loss(p1, p2, mask=torch.zeros(5, dtype=torch.bool), mask_sinkhorn=mask_sinkhorn)
    assert loss.item() == 0.0
    loss.backward()
    assert p1.grad is not None and p2.grad is not None
    assert torch.isfinite(p1.grad).all() and (p1.grad == 0).all()
    assert torch.isfinite(p2.grad).all() and (p2.grad == 0).all()


def test_swav_bf16_autocast() -> None:
    p1 = (torch.rand(16, 8) * 2 - 1).bfloat16().requires_grad_()
    p2 = (torch.rand(16, 8) * 2 - 1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = swav_loss(p1, p2)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, swav_loss(p1.float(), p2.float()))
    loss.backward()
    assert p1.grad is not None and torch.isfinite(p1.grad).all()
    huge = swav_loss(p1.detach() * 1e4, p2 * 1e4)
    assert torch.isfinite(huge)


def test_swav_split_batch_mean_of_losses_equals_full_batch() -> None:
    p1 = torch.randn(12, 5, dtype=torch.float64)
    p2 = torch.randn(12, 5, dtype=torch.float64)
    group = FakeProcessGroup(2)
    chunks1, chunks2 = p1.split(6), p2.split(6)
    losses = group.run(
        lambda rank, reduce: swav_loss(chunks1[rank], chunks2[rank], all_reduce=reduce)
    )
    # Equal local batches: DDP's gradient average is the gradient of the mean of local losses.
    torch.testing.assert_close(torch.stack(losses).mean(), swav_loss(p1, p2))


def test_swav_module_and_validation() -> None:
    p1, p2 = torch.randn(6, 3), torch.randn(6, 3)
    mask = torch.tensor([True, False] * 3)
    criterion = SwAVLoss(temperature=0.2, epsilon=0.1, iterations=4)
    torch.testing.assert_close(
        criterion(p1, p2, mask), swav_loss(p1, p2, mask, temperature=0.2, epsilon=0.1, iterations=4)
    )
    assert "temperature=0.2" in repr(criterion)
    with pytest.raises(ValueError, match="same shape"):
        swav_loss(p1, torch.randn(6, 4))
    with pytest.raises(ValueError, match="floating-point"):
        swav_loss(p1.long(), p2.long())
    with pytest.raises(ValueError, match="mask"):
        swav_loss(p1, p2, mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="temperature"):
        swav_loss(p1, p2, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SwAVLoss(temperature=-1.0)
    with pytest.raises(ValueError, match="epsilon"):
        SwAVLoss(epsilon=0.0)
    with pytest.raises(ValueError, match="iterations"):
        SwAVLoss(iterations=0)


def test_no_host_synchronisation() -> None:
    # Meta tensors have no data: reading a value on the host (.item(), `if tensor`) would raise.
    scores = torch.randn(8, 4, device="meta", requires_grad=True)
    mask = torch.ones(8, dtype=torch.bool, device="meta")
    assert sinkhorn_knopp(scores, mask=mask).shape == (8, 4)
    loss = swav_loss(scores, scores.detach(), mask=mask, mask_sinkhorn=True)
    loss.backward()
    assert scores.grad is not None and scores.grad.shape == (8, 4)
