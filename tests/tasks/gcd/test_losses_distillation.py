"""Tests for the SimGCD self-distillation cluster loss and its teacher-temperature schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_mtl.tasks.gcd.losses.distillation import (
    SelfDistillationLoss,
    self_distillation_loss,
    teacher_temperature,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ------------------------------------------------------------------------------- schedule


def test_teacher_temperature_values() -> None:
    assert teacher_temperature(0) == pytest.approx(0.07)
    # SimGCD's np.linspace(0.07, 0.04, 30): 29 steps of 0.03 / 29.
    assert teacher_temperature(15) == pytest.approx(0.07 - 0.03 * 15 / 29)
    assert teacher_temperature(29) == pytest.approx(0.04)
    assert teacher_temperature(30) == 0.04
    assert teacher_temperature(100) == 0.04
    schedule = np.linspace(0.07, 0.04, 30)
    for epoch in range(30):
        assert teacher_temperature(epoch) == pytest.approx(schedule[epoch], rel=1e-12)


def test_teacher_temperature_edge_cases() -> None:
    assert teacher_temperature(0, warmup_epochs=0) == 0.04
    assert teacher_temperature(0, warmup_epochs=1) == 0.07
    assert teacher_temperature(1, warmup_epochs=1) == 0.04
    assert teacher_temperature(np.int64(2), warmup_epochs=5, start=0.5, end=0.1) == pytest.approx(
        0.3
    )
    with pytest.raises(ValueError, match="epoch"):
        teacher_temperature(-1)
    with pytest.raises(ValueError, match="epoch"):
        teacher_temperature(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup_epochs"):
        teacher_temperature(0, warmup_epochs=-2)
    with pytest.raises(ValueError, match="Temperatures"):
        teacher_temperature(0, start=0.0)


# ----------------------------------------------------------------------------------- loss


def reference_distillation(
    logits: torch.Tensor,
    num_views: int,
    teacher_temp: float,
    student_temp: float,
    weight: float,
) -> tuple[float, float, float]:
    """Explicit loops in float64: (total, cross-entropy, mean entropy)."""
    rows = logits.detach().double().tolist()
    batch = len(rows) // num_views

    def softmax(row: list[float], temperature: float) -> list[float]:
        top = max(row)
        exps = [math.exp((x - top) / temperature) for x in row]
        total = math.fsum(exps)
        return [e / total for e in exps]

    student = [softmax(row, student_temp) for row in rows]
    teacher = [softmax(row, teacher_temp) for row in rows]
    pair_losses = []
    for teacher_view in range(num_views):
        for student_view in range(num_views):
            if teacher_view == student_view:
                continue
            per_sample = [
                -math.fsum(
                    t * math.log(s)
                    for t, s in zip(
                        teacher[teacher_view * batch + b],
                        student[student_view * batch + b],
                        strict=True,
                    )
                )
                for b in range(batch)
            ]
            pair_losses.append(math.fsum(per_sample) / batch)
    cross_entropy = math.fsum(pair_losses) / len(pair_losses)
    clusters = len(rows[0])
    mean = [math.fsum(p[k] for p in student) / len(student) for k in range(clusters)]
    entropy = -math.fsum(p * math.log(p) for p in mean)
    return cross_entropy - weight * entropy, cross_entropy, entropy


@pytest.mark.parametrize(
    ("num_views", "teacher_temp", "weight"), [(2, 0.07, 2.0), (2, 0.04, 1.0), (3, 0.05, 0.5)]
)
def test_loss_matches_reference(num_views: int, teacher_temp: float, weight: float) -> None:
    logits = torch.randn(num_views * 5, 6)
    out = self_distillation_loss(
        logits, teacher_temp, mean_entropy_weight=weight, num_views=num_views
    )
    total, cross_entropy, entropy = reference_distillation(
        logits, num_views, teacher_temp, 0.1, weight
    )
    assert out.total.item() == pytest.approx(total, rel=1e-5, abs=1e-6)
    assert out.cross_entropy.item() == pytest.approx(cross_entropy, rel=1e-5)
    assert out.mean_entropy.item() == pytest.approx(entropy, rel=1e-5)


def test_teacher_is_detached() -> None:
    logits = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    self_distillation_loss(logits, teacher_temp=0.07).total.backward()

    # Reference: the same loss written out with the teacher as a constant tensor.
    constant = logits.detach().clone()
    x = logits.detach().clone().requires_grad_()
    teacher = torch.softmax(constant / 0.07, dim=1).view(2, 4, 5)
    log_student = torch.log_softmax(x / 0.1, dim=1).view(2, 4, 5)
    cross_entropy = -0.5 * (
        (teacher[0] * log_student[1]).sum(1).mean() + (teacher[1] * log_student[0]).sum(1).mean()
    )
    mean = torch.softmax(x / 0.1, dim=1).mean(dim=0)
    (cross_entropy - 2.0 * -(mean * mean.log()).sum()).backward()
    assert logits.grad is not None and x.grad is not None
    torch.testing.assert_close(logits.grad, x.grad)

    # Sanity: letting the gradient flow through the teacher would give a different gradient.
    y = logits.detach().clone().requires_grad_()
    teacher_attached = torch.softmax(y / 0.07, dim=1).view(2, 4, 5)
    log_student_y = torch.log_softmax(y / 0.1, dim=1).view(2, 4, 5)
    attached = -0.5 * (
        (teacher_attached[0] * log_student_y[1]).sum(1).mean()
        + (teacher_attached[1] * log_student_y[0]).sum(1).mean()
    )
    mean_y = torch.softmax(y / 0.1, dim=1).mean(dim=0)
    (attached - 2.0 * -(mean_y * mean_y.log()).sum()).backward()
    assert y.grad is not None
    assert not torch.allclose(y.grad, logits.grad)


def test_mean_entropy_term_penalises_collapse() -> None:
    clusters = 4
    confident = 10.0 * torch.eye(clusters)  # 4 samples, each sure of a different cluster
    balanced = torch.cat([confident, confident])  # two identical views
    collapsed = torch.zeros(2 * clusters, clusters)
    collapsed[:, 0] = 10.0  # every sample sure of cluster 0
    for weight in (0.5, 1.0, 2.0):
        collapsed_loss = self_distillation_loss(collapsed, 0.04, mean_entropy_weight=weight)
        balanced_loss = self_distillation_loss(balanced, 0.04, mean_entropy_weight=weight)
        # Same (near-zero) cross-entropy; only the entropy of the mean prediction differs.
        torch.testing.assert_close(collapsed_loss.cross_entropy, balanced_loss.cross_entropy)
        assert balanced_loss.mean_entropy.item() == pytest.approx(math.log(clusters), rel=1e-4)
        assert collapsed_loss.mean_entropy.item() < 0.01
        assert collapsed_loss.total > balanced_loss.total
    no_weight = [
        self_distillation_loss(x, 0.04, mean_entropy_weight=0.0).total
        for x in (collapsed, balanced)
    ]
    torch.testing.assert_close(no_weight[0], no_weight[1])
    # Uniform predictions: cross-entropy log K and mean entropy log K.
    uniform = self_distillation_loss(torch.zeros(6, clusters), 0.04, mean_entropy_weight=2.0)
    assert uniform.total.item() == pytest.approx(-math.log(clusters), rel=1e-6)


def test_bf16_autocast_and_extreme_logits() -> None:
    logits = torch.randn(8, 10).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = self_distillation_loss(logits, 0.04)
    assert out.total.dtype == torch.float32
    torch.testing.assert_close(out.total, self_distillation_loss(logits.float(), 0.04).total)
    out.total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # A cluster nobody predicts has mean probability exp(-1e5): log p̄ must stay finite.
    extreme = torch.zeros(4, 3, requires_grad=True)
    shifted = extreme + torch.tensor([0.0, 0.0, -1e4])
    result = self_distillation_loss(shifted, 0.04)
    result.total.backward()
    assert torch.isfinite(result.total) and extreme.grad is not None
    assert torch.isfinite(extreme.grad).all()


def test_module_uses_schedule_and_weight() -> None:
    logits = torch.randn(6, 4)
    criterion = SelfDistillationLoss()
    for epoch in (0, 15, 30, 100):
        expected = self_distillation_loss(logits, teacher_temperature(epoch))
        torch.testing.assert_close(criterion(logits, epoch), expected.total)
    parts = criterion(logits, 5, mean_entropy_weight=0.5, return_parts=True)
    expected = self_distillation_loss(logits, teacher_temperature(5), mean_entropy_weight=0.5)
    torch.testing.assert_close(parts.total, expected.total)
    torch.testing.assert_close(parts.total, parts.cross_entropy - 0.5 * parts.mean_entropy)
    custom = SelfDistillationLoss(warmup_epochs=3, student_temp=0.2, num_views=3)
    assert custom.teacher_temperature(1) == pytest.approx(0.055)
    torch.testing.assert_close(
        custom(logits, 1),
        self_distillation_loss(logits, 0.055, student_temp=0.2, num_views=3).total,
    )
    assert "student_temp=0.2" in repr(custom)


def test_validation() -> None:
    with pytest.raises(ValueError, match="2-D"):
        self_distillation_loss(torch.randn(4), 0.04)
    with pytest.raises(ValueError, match="floating-point"):
        self_distillation_loss(torch.ones(4, 2, dtype=torch.long), 0.04)
    with pytest.raises(ValueError, match="multiple of 2"):
        self_distillation_loss(torch.randn(5, 3), 0.04)
    with pytest.raises(ValueError, match="num_views"):
        self_distillation_loss(torch.randn(4, 3), 0.04, num_views=1)
    with pytest.raises(ValueError, match="Temperatures"):
        self_distillation_loss(torch.randn(4, 3), 0.0)
    with pytest.raises(ValueError, match="mean_entropy_weight"):
        self_distillation_loss(torch.randn(4, 3), 0.04, mean_entropy_weight=-1.0)
    with pytest.raises(ValueError, match="student_temp"):
        SelfDistillationLoss(student_temp=0.0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        SelfDistillationLoss(warmup_epochs=-1)
    with pytest.raises(ValueError, match="epoch"):
        SelfDistillationLoss()(torch.randn(4, 3), epoch=-1)


def test_no_host_synchronisation() -> None:
    # Meta tensors have no data: reading a value on the host (.item(), `if tensor`) would raise.
    logits = torch.randn(8, 4, device="meta", requires_grad=True)
    SelfDistillationLoss()(logits, epoch=3).backward()
    assert logits.grad is not None and logits.grad.shape == (8, 4)
