"""Tests for the supervised contrastive loss."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_mtl.tasks.gcd import SupConLoss, supervised_contrastive_loss


def reference_supcon(
    features: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    base_temperature: float,
) -> float:
    """Slow float64 SupCon ("L_out") with explicit loops over anchors, written from the paper."""
    feats = features.detach().to(torch.float64)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    batch_size, num_views, _ = feats.shape
    items = []
    for sample in range(batch_size):
        group = int(labels[sample]) if labels is not None else sample
        for view in range(num_views):
            items.append((feats[sample, view], group))

    per_anchor = []
    for a, (z_a, group_a) in enumerate(items):
        others = [k for k in range(len(items)) if k != a]
        sims = {k: float(z_a @ items[k][0]) / temperature for k in others}
        top = max(sims.values())
        log_denominator = top + math.log(math.fsum(math.exp(s - top) for s in sims.values()))
        positives = [k for k in others if items[k][1] == group_a]
        if not positives:
            continue
        mean_log_prob = math.fsum(sims[p] - log_denominator for p in positives) / len(positives)
        per_anchor.append(-(temperature / base_temperature) * mean_log_prob)
    if not per_anchor:
        return 0.0
    return math.fsum(per_anchor) / len(per_anchor)


@pytest.mark.parametrize("num_views", [2, 3])
@pytest.mark.parametrize("use_labels", [False, True])
@pytest.mark.parametrize(("temperature", "base_temperature"), [(0.07, None), (0.5, 0.07)])
def test_matches_reference(
    num_views: int, use_labels: bool, temperature: float, base_temperature: float | None
) -> None:
    gen = torch.Generator().manual_seed(1234 + num_views)
    features = torch.randn(10, num_views, 16, generator=gen)
    labels = torch.randint(0, 4, (10,), generator=gen) if use_labels else None
    expected = reference_supcon(
        features, labels, temperature, base_temperature if base_temperature else temperature
    )

    loss32 = supervised_contrastive_loss(features, labels, temperature, base_temperature)
    assert loss32.dtype == torch.float32
    assert loss32.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)

    loss64 = supervised_contrastive_loss(features.double(), labels, temperature, base_temperature)
    assert loss64.dtype == torch.float64
    assert loss64.item() == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_single_view_with_labels_skips_anchors_without_positive() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(5, 1, 8, generator=gen)
    labels = torch.tensor([0, 0, 1, 1, 2])  # the sample with label 2 has no positive
    loss = supervised_contrastive_loss(features, labels)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(reference_supcon(features, labels, 0.07, 0.07), rel=1e-5)


def test_no_positive_at_all_gives_zero_and_finite_grad() -> None:
    features = torch.randn(4, 1, 8, requires_grad=True)
    loss = supervised_contrastive_loss(features, torch.arange(4))
    loss.backward()
    assert loss.item() == 0.0
    assert features.grad is not None
    assert torch.isfinite(features.grad).all()

    single = torch.randn(1, 1, 8, requires_grad=True)
    loss = supervised_contrastive_loss(single, torch.zeros(1, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0
    assert single.grad is not None
    assert torch.isfinite(single.grad).all()


def test_no_labels_equals_unique_labels() -> None:
    features = torch.randn(6, 2, 12)
    unlabelled = supervised_contrastive_loss(features)
    unique = supervised_contrastive_loss(features, torch.arange(10, 16))
    torch.testing.assert_close(unlabelled, unique)


def test_invariant_to_feature_scaling() -> None:
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(8, 2, 16, generator=gen)
    labels = torch.randint(0, 3, (8,), generator=gen)
    scales = torch.rand(8, 2, 1, generator=gen) * 20.0 + 0.05
    torch.testing.assert_close(
        supervised_contrastive_loss(features * scales, labels),
        supervised_contrastive_loss(features, labels),
    )


def test_invariant_to_batch_permutation() -> None:
    features = torch.randn(8, 2, 16)
    labels = torch.randint(0, 3, (8,))
    perm = torch.randperm(8)
    torch.testing.assert_close(
        supervised_contrastive_loss(features[perm], labels[perm]),
        supervised_contrastive_loss(features, labels),
    )


def test_aligned_same_label_features_give_lower_loss() -> None:
    gen = torch.Generator().manual_seed(7)
    labels = torch.arange(4).repeat(4)  # 16 samples, 4 classes
    prototypes = torch.randn(4, 32, generator=gen)
    aligned = prototypes[labels].unsqueeze(1) + 0.05 * torch.randn(16, 2, 32, generator=gen)
    random = torch.randn(16, 2, 32, generator=gen)
    assert supervised_contrastive_loss(aligned, labels) < supervised_contrastive_loss(
        random, labels
    )


def test_gradient_is_finite_and_nonzero() -> None:
    features = torch.randn(8, 2, 16, requires_grad=True)
    loss = supervised_contrastive_loss(features, torch.randint(0, 3, (8,)))
    loss.backward()
    assert features.grad is not None
    assert torch.isfinite(features.grad).all()
    assert features.grad.abs().sum() > 0


def test_bf16_autocast_close_to_fp32() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 64)
    inputs = torch.randn(32, 2, 32)
    labels = torch.randint(0, 5, (32,))
    reference = supervised_contrastive_loss(layer(inputs), labels)

    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        features = layer(inputs)
        assert features.dtype == torch.bfloat16
        loss = supervised_contrastive_loss(features, labels)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    # Only the bf16 rounding of the features themselves remains.
    assert loss.item() == pytest.approx(reference.item(), rel=2e-2)
    # Inside, bf16 features are upcast before any arithmetic.
    torch.testing.assert_close(loss, supervised_contrastive_loss(features.float(), labels))


def test_runs_without_host_synchronisation() -> None:
    # Meta tensors have no data: any .item() / bool(tensor) in the forward would raise.
    features = torch.empty(4, 2, 8, device="meta")
    labels = torch.empty(4, dtype=torch.long, device="meta")
    assert supervised_contrastive_loss(features, labels).shape == torch.Size([])
    assert supervised_contrastive_loss(features).shape == torch.Size([])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_without_sync() -> None:
    features = torch.randn(64, 2, 128, device="cuda")
    labels = torch.randint(0, 10, (64,), device="cuda")
    reference = supervised_contrastive_loss(features.double(), labels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = supervised_contrastive_loss(features.bfloat16(), labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=2e-2)


def test_module_matches_function() -> None:
    features = torch.randn(6, 2, 8)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    criterion = SupConLoss(temperature=0.2, base_temperature=0.1)
    torch.testing.assert_close(
        criterion(features, labels),
        supervised_contrastive_loss(features, labels, temperature=0.2, base_temperature=0.1),
    )
    assert "temperature=0.2" in repr(criterion)


@pytest.mark.parametrize(
    ("features", "labels", "kwargs", "match"),
    [
        (torch.randn(4, 8), None, {}, "must be 3-D"),
        (torch.randn(2, 4, 2, 8), None, {}, "must be 3-D"),
        (torch.randint(0, 3, (4, 2, 8)), None, {}, "floating-point"),
        (torch.randn(4, 1, 8), None, {}, "at least 2 views"),
        (torch.randn(4, 2, 8), torch.zeros(3, dtype=torch.long), {}, r"shape \[batch\]"),
        (torch.randn(4, 2, 8), torch.zeros(4, 1, dtype=torch.long), {}, r"shape \[batch\]"),
        (torch.randn(4, 2, 8), torch.zeros(4), {}, "integer tensor"),
        (torch.randn(4, 2, 8), None, {"temperature": 0.0}, "temperature` must be > 0"),
        (torch.randn(4, 2, 8), None, {"temperature": -1.0}, "temperature` must be > 0"),
        (torch.randn(4, 2, 8), None, {"base_temperature": 0.0}, "base_temperature` must be > 0"),
        (torch.randn(4, 2, 8), None, {"mask": torch.ones(4)}, "mask` must be a bool"),
        (torch.randn(4, 2, 8), None, {"mask": torch.ones(3, dtype=torch.bool)}, "mask` must be"),
    ],
)
def test_error_messages(
    features: torch.Tensor, labels: torch.Tensor | None, kwargs: dict[str, float], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        supervised_contrastive_loss(features, labels, **kwargs)


@pytest.mark.parametrize("labelled", [True, False], ids=["supcon", "infonce"])
def test_mask_gives_the_loss_of_the_selected_samples(labelled: bool) -> None:
    torch.manual_seed(5)
    features = torch.randn(10, 2, 6, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0, 2, 2]) if labelled else None
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0, 0, 1], dtype=torch.bool)
    masked = supervised_contrastive_loss(features, labels, temperature=0.2, mask=mask)
    kept_labels = labels[mask] if labels is not None else None
    expected = reference_supcon(features[mask], kept_labels, 0.2, 0.2)
    assert masked.item() == pytest.approx(expected, rel=1e-5)
    # The masked-out samples get no gradient; the others get the gradient of the indexed loss.
    (grad,) = torch.autograd.grad(masked, features)
    kept = features[mask].detach().requires_grad_(True)
    (kept_grad,) = torch.autograd.grad(
        supervised_contrastive_loss(kept, kept_labels, temperature=0.2), kept
    )
    torch.testing.assert_close(grad[mask], kept_grad)
    assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))


def test_empty_mask_gives_zero_with_finite_gradients() -> None:
    features = torch.randn(4, 2, 8, requires_grad=True)
    mask = torch.zeros(4, dtype=torch.bool)
    loss = supervised_contrastive_loss(features, torch.arange(4), mask=mask)
    (grad,) = torch.autograd.grad(loss, features)
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


def test_module_rejects_bad_temperatures() -> None:
    with pytest.raises(ValueError, match="temperature` must be > 0"):
        SupConLoss(temperature=0.0)
    with pytest.raises(ValueError, match="base_temperature` must be > 0"):
        SupConLoss(base_temperature=-0.1)
