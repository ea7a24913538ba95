"""Tests for the CIFAR ResNet-32 backbone."""

from __future__ import annotations

import pytest
import torch

from lightning_mtl.tasks.long_tail.resnet_cifar import (
    BasicBlock,
    NormalizedLinear,
    ResNetCIFAR,
    resnet32,
)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv3(cin: int, cout: int) -> int:
    return 9 * cin * cout  # 3×3 kernels, no bias (a BatchNorm follows)


def bn(channels: int) -> int:
    return 2 * channels  # weight and bias; the running statistics are buffers


def same(channels: int) -> int:
    return 2 * conv3(channels, channels) + 2 * bn(channels)  # a block that keeps the shape


def expected_resnet32_parameters(num_classes: int, shortcut: str, normalized: bool) -> int:
    """Parameter count of ResNet-32 written out stage by stage."""
    stem = conv3(3, 16) + bn(16)  # 432 + 32
    stage1 = 5 * same(16)  # 5 × 4672 = 23360
    down2 = conv3(16, 32) + conv3(32, 32) + 2 * bn(32)  # 13952
    down3 = conv3(32, 64) + conv3(64, 64) + 2 * bn(64)  # 55552
    stage2, stage3 = down2 + 4 * same(32), down3 + 4 * same(64)  # 88192, 351488
    projections = 0 if shortcut == "A" else (16 * 32 + bn(32)) + (32 * 64 + bn(64))  # 2752
    head = 64 * num_classes + (0 if normalized else num_classes)  # 650 for 10 classes
    return stem + stage1 + stage2 + stage3 + projections + head


def test_resnet32_parameter_counts() -> None:
    assert expected_resnet32_parameters(10, "A", False) == 464_154  # the familiar "0.46M"
    assert count(resnet32(10)) == 464_154
    assert count(resnet32(10, normalized_classifier=True)) == 464_144
    assert count(resnet32(10, shortcut="B")) == expected_resnet32_parameters(10, "B", False)
    assert count(resnet32(100)) == expected_resnet32_parameters(100, "A", False)


def test_resnet32_structure_and_names() -> None:
    model = resnet32(10)
    names = [name for name, _ in model.named_children()]
    assert names == ["conv1", "bn1", "layer1", "layer2", "layer3", "fc"]
    for stage, width in zip((model.layer1, model.layer2, model.layer3), (16, 32, 64), strict=True):
        assert len(stage) == 5 and all(isinstance(block, BasicBlock) for block in stage)
        assert stage[-1].conv2.out_channels == width
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == 32  # 31 conv layers + fc: the "32"
    assert isinstance(model.fc, torch.nn.Linear)
    assert isinstance(resnet32(10, normalized_classifier=True).fc, NormalizedLinear)
    # PLOT's class-level step selects parameters by the stage name.
    assert any(name.startswith("layer3.") for name, _ in model.named_parameters())


def test_resnet32_shapes_and_features() -> None:
    model = resnet32(7).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, feats = model(x), model.features(x)
    assert logits.shape == (3, 7) and feats.shape == (3, 64) and model.feature_dim == 64
    assert torch.allclose(logits, model.fc(feats))
    assert bool((feats >= 0).all())  # pooled after a ReLU
    cosine = resnet32(7, normalized_classifier=True).eval()
    with torch.no_grad():
        assert cosine(x).abs().max() <= 1.0 + 1e-5


def test_shortcut_a_is_parameter_free_subsample_and_pad() -> None:
    block = BasicBlock(16, 32, stride=2, shortcut="A")
    assert count(block.shortcut) == 0
    x = torch.randn(1, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (1, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])  # 8 zero channels on each side
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_backward_and_validation() -> None:
    model = ResNetCIFAR(10, blocks_per_stage=1)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="num_classes"):
        resnet32(0)
    with pytest.raises(ValueError, match="shortcut"):
        resnet32(10, shortcut="C")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="blocks_per_stage"):
        ResNetCIFAR(10, blocks_per_stage=0)
