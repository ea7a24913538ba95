"""Tests for the long-tailed recognition losses, the DRW schedule and mixup."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_mtl.tasks.long_tail.losses import (
    BalancedSoftmaxLoss,
    DeferredReweighting,
    LDAMLoss,
    LogitAdjustedLoss,
    drw_weights,
    ldam_margins,
    mixup,
)

COUNTS = [400, 100, 25, 4]


def log_softmax_at(row: list[float], index: int) -> float:
    """log softmax(row)[index] in float64 with an explicit log-sum-exp."""
    top = max(row)
    return row[index] - top - math.log(math.fsum(math.exp(v - top) for v in row))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=generator), torch.tensor([0, 1, 2, 3, 3, 1])


# --- LDAM ---------------------------------------------------------------------------------------


def test_ldam_margins_by_hand() -> None:
    # n^{-1/4} = 1/4.472, 1/3.162, 1/2.236, 1/1.414; the rarest class (4 samples) gets max_m.
    expected = [0.5 * (4 / n) ** 0.25 for n in COUNTS]
    assert torch.allclose(ldam_margins(COUNTS, 0.5), torch.tensor(expected))
    assert ldam_margins(COUNTS, 0.3).max().item() == pytest.approx(0.3)


def reference_ldam(logits, targets, counts, max_m, s, weight=None) -> list[float]:
    """Per-sample (weighted) LDAM losses from the formula, in float64 Python."""
    margins = [max_m * (min(counts) / n) ** 0.25 for n in counts]
    out = []
    for z, y in zip(logits.tolist(), targets.tolist(), strict=True):
        shifted = [s * (v - (margins[y] if c == y else 0.0)) for c, v in enumerate(z)]
        w = 1.0 if weight is None else weight[y]
        out.append(-w * log_softmax_at(shifted, y))
    return out


def test_ldam_matches_formula(batch) -> None:
    logits, targets = batch
    per_sample = reference_ldam(logits, targets, COUNTS, 0.5, 30.0)
    loss = LDAMLoss(COUNTS, max_m=0.5, s=30.0)
    assert loss(logits, targets).item() == pytest.approx(sum(per_sample) / 6, rel=1e-5)
    none = LDAMLoss(COUNTS, reduction="none")(logits, targets)
    assert torch.allclose(none, torch.tensor(per_sample), rtol=1e-5)
    total = LDAMLoss(COUNTS, s=10.0, reduction="sum")(logits, targets)
    expected_sum = sum(reference_ldam(logits, targets, COUNTS, 0.5, 10.0))
    assert total.item() == pytest.approx(expected_sum, rel=1e-5)


def test_ldam_weighted_mean_divides_by_summed_weights(batch) -> None:
    logits, targets = batch
    weight = [0.5, 1.0, 2.0, 3.0]
    per_sample = reference_ldam(logits, targets, COUNTS, 0.5, 30.0, weight)
    norm = sum(weight[y] for y in targets.tolist())
    expected = sum(per_sample) / norm
    fixed = LDAMLoss(COUNTS, weight=torch.tensor(weight))(logits, targets)
    per_call = LDAMLoss(COUNTS)(logits, targets, weight=torch.tensor(weight))
    assert fixed.item() == pytest.approx(expected, rel=1e-5)
    assert per_call.item() == pytest.approx(expected, rel=1e-5)
    # Same convention as F.cross_entropy with weights.
    margins = ldam_margins(COUNTS)
    z = logits - F.one_hot(targets, 4) * margins[targets, None]
    ce = F.cross_entropy(30.0 * z, targets, weight=torch.tensor(weight))
    assert torch.allclose(fixed, ce, rtol=1e-5)


def test_ldam_only_lowers_the_true_class(batch) -> None:
    logits, targets = batch
    # Lowering only the true logit makes every loss larger than plain cross-entropy (s = 1 so
    # that no sample saturates at a loss of 0), and the rarest class is penalised most.
    plain = F.cross_entropy(logits, targets, reduction="none")
    ldam = LDAMLoss(COUNTS, s=1.0, reduction="none")(logits, targets)
    assert bool((ldam > plain).all())
    equal_logits = torch.zeros(4, 4)
    per_class = LDAMLoss(COUNTS, s=1.0, reduction="none")(equal_logits, torch.arange(4))
    assert bool((per_class[1:] > per_class[:-1]).all())


def test_ldam_bf16_and_autocast(batch) -> None:
    logits, targets = batch
    loss = LDAMLoss(COUNTS)
    low = logits.to(torch.bfloat16).requires_grad_()
    value = loss(low, targets)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(low.detach().float(), targets).item(), rel=1e-6)
    value.backward()
    assert low.grad is not None and low.grad.dtype == torch.bfloat16
    assert bool(torch.isfinite(low.grad.float()).all())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(logits, targets).dtype == torch.float32


def test_ldam_validation(batch) -> None:
    logits, targets = batch
    with pytest.raises(ValueError, match="class_counts"):
        LDAMLoss([10, 0, 3])
    with pytest.raises(ValueError, match="max_m"):
        LDAMLoss(COUNTS, max_m=0.0)
    with pytest.raises(ValueError, match="`s`"):
        LDAMLoss(COUNTS, s=-1.0)
    with pytest.raises(ValueError, match="weight"):
        LDAMLoss(COUNTS, weight=torch.ones(3))
    with pytest.raises(ValueError, match="reduction"):
        LDAMLoss(COUNTS, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="logits"):
        LDAMLoss(COUNTS)(logits[:, :3], targets)
    with pytest.raises(ValueError, match="targets"):
        LDAMLoss(COUNTS)(logits, targets.float())
    # Buffers are derived from hyper-parameters, so they stay out of checkpoints.
    assert LDAMLoss(COUNTS, weight=torch.ones(4)).state_dict() == {}


# --- DRW ----------------------------------------------------------------------------------------


def test_drw_weights_formula_and_normalisation() -> None:
    beta = 0.9999
    raw = [(1 - beta) / (1 - beta**n) for n in COUNTS]
    expected = [4 * w / sum(raw) for w in raw]
    weights = drw_weights(COUNTS, beta)
    assert torch.allclose(weights, torch.tensor(expected), rtol=1e-6)
    assert weights.sum().item() == pytest.approx(4.0, rel=1e-6)
    assert bool((weights[1:] > weights[:-1]).all())  # rarer classes weigh more
    assert torch.equal(drw_weights(COUNTS, 0.0), torch.ones(4))
    with pytest.raises(ValueError, match="beta"):
        drw_weights(COUNTS, 1.0)


def test_deferred_reweighting_switches_at_start_epoch() -> None:
    drw = DeferredReweighting(COUNTS, start_epoch=160)
    assert all(drw(epoch) is None for epoch in (0, 1, 159))
    for epoch in (160, 199):
        weights = drw(epoch)
        assert weights is not None and torch.equal(weights, drw_weights(COUNTS))
        assert weights.sum().item() == pytest.approx(len(COUNTS), rel=1e-6)
    assert drw.state_dict() == {}
    assert drw.double()(160).dtype == torch.float64  # a buffer: follows the module
    with pytest.raises(ValueError, match="start_epoch"):
        DeferredReweighting(COUNTS, start_epoch=-1)


def test_ldam_drw_schedule_end_to_end(batch) -> None:
    logits, targets = batch
    loss, drw = LDAMLoss(COUNTS), DeferredReweighting(COUNTS, start_epoch=2)
    before = loss(logits, targets, weight=drw(1))
    after = loss(logits, targets, weight=drw(2))
    assert torch.equal(before, loss(logits, targets))
    assert torch.allclose(after, LDAMLoss(COUNTS, weight=drw_weights(COUNTS))(logits, targets))
    assert not torch.allclose(before, after)


# --- Balanced Softmax / logit adjustment --------------------------------------------------------


def test_balanced_softmax_matches_formula(batch) -> None:
    logits, targets = batch
    expected = []
    for z, y in zip(logits.tolist(), targets.tolist(), strict=True):
        # -log( n_y e^{z_y} / Σ_j n_j e^{z_j} )
        shifted = [v + math.log(n) for v, n in zip(z, COUNTS, strict=True)]
        expected.append(-log_softmax_at(shifted, y))
    per_sample = BalancedSoftmaxLoss(COUNTS, reduction="none")(logits, targets)
    assert torch.allclose(per_sample, torch.tensor(expected), rtol=1e-5)
    mean = BalancedSoftmaxLoss(COUNTS)(logits, targets)
    assert mean.item() == pytest.approx(sum(expected) / 6, rel=1e-5)


def test_logit_adjusted_matches_formula(batch) -> None:
    logits, targets = batch
    tau, total = 0.5, sum(COUNTS)
    expected = []
    for z, y in zip(logits.tolist(), targets.tolist(), strict=True):
        shifted = [v + tau * math.log(n / total) for v, n in zip(z, COUNTS, strict=True)]
        expected.append(-log_softmax_at(shifted, y))
    value = LogitAdjustedLoss(COUNTS, tau=tau)(logits, targets)
    assert value.item() == pytest.approx(sum(expected) / 6, rel=1e-5)
    # τ = 1 is Balanced Softmax: shifting every logit by log N does not change the softmax.
    assert torch.allclose(
        LogitAdjustedLoss(COUNTS)(logits, targets), BalancedSoftmaxLoss(COUNTS)(logits, targets)
    )
    with pytest.raises(ValueError, match="tau"):
        LogitAdjustedLoss(COUNTS, tau=-1.0)


def test_prior_losses_bf16(batch) -> None:
    logits, targets = batch
    low = logits.to(torch.bfloat16)
    for loss in (BalancedSoftmaxLoss(COUNTS), LogitAdjustedLoss(COUNTS, tau=1.0)):
        value = loss(low, targets)
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(loss(low.float(), targets).item(), rel=1e-6)


# --- mixup --------------------------------------------------------------------------------------


def test_mixup_is_a_convex_combination() -> None:
    # Identity inputs reveal the permutation: row i of the mix is λ e_i + (1 − λ) e_π(i).
    inputs, onehot = torch.eye(8), F.one_hot(torch.arange(8) % 3, 3).float()
    mixed, mixed_targets, lam = mixup(inputs, onehot, 0.4, torch.Generator().manual_seed(3))
    assert 0.0 <= lam <= 1.0
    partner = (mixed - lam * inputs).argmax(dim=1)
    assert sorted(partner.tolist()) == list(range(8))  # a permutation
    assert torch.allclose(mixed, lam * inputs + (1 - lam) * inputs[partner])
    assert torch.allclose(mixed_targets, lam * onehot + (1 - lam) * onehot[partner])
    assert torch.allclose(mixed_targets.sum(dim=1), torch.ones(8))
    assert bool((mixed_targets >= 0).all())


def test_mixup_seeded_dtype_and_alpha_zero() -> None:
    x = torch.randn(5, 3, 4, 4).to(torch.bfloat16)
    y = F.one_hot(torch.tensor([0, 1, 2, 1, 0]), 3).float()
    first = mixup(x, y, 1.0, torch.Generator().manual_seed(0))
    second = mixup(x, y, 1.0, torch.Generator().manual_seed(0))
    assert first[2] == second[2] and torch.equal(first[0], second[0])
    assert first[0].dtype == torch.bfloat16 and first[1].dtype == torch.float32
    same_x, same_y, lam = mixup(x, y, 0.0, torch.Generator().manual_seed(0))
    assert lam == 1.0 and torch.equal(same_x, x) and torch.equal(same_y, y)


def test_mixup_lambda_follows_beta() -> None:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.zeros(2, 1), torch.eye(2)
    lams = torch.tensor([mixup(x, y, 0.2, generator)[2] for _ in range(2000)])
    # Beta(0.2, 0.2): mean 1/2, variance 1/(4(2α+1)) = 0.1786; U-shaped (mass near 0 and 1).
    assert lams.mean().item() == pytest.approx(0.5, abs=0.03)
    assert lams.var().item() == pytest.approx(1 / (4 * 1.4), abs=0.015)


def test_mixup_validation() -> None:
    x, y = torch.randn(4, 2), torch.eye(4)
    with pytest.raises(ValueError, match="alpha"):
        mixup(x, y, -0.1)
    with pytest.raises(ValueError, match="targets_onehot"):
        mixup(x, y[:3], 1.0)
    with pytest.raises(ValueError, match="floating"):
        mixup(x, torch.arange(4).view(4, 1), 1.0)
    with pytest.raises(ValueError, match="inputs"):
        mixup(torch.arange(4), y, 1.0)
