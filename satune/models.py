"""Model registry. Every model takes images in [0,1] and normalises inside (AutoAttack's contract).

A model is a shared backbone producing a feature vector and one linear head per task: head 0 is
the primary task (the only one evaluated), BiaMAT adds an auxiliary head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from satune.specs import ModelSpec


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class Net(nn.Module):
    def __init__(self, normalize: Normalize, backbone: nn.Module, feature_dim: int, head_sizes: Sequence[int]):
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.heads = nn.ModuleList(nn.Linear(feature_dim, n) for n in head_sizes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Primary-task logits: what evaluation and attacks see."""
        return self.heads[0](self.features(x))

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.features(x)
        return [head(f) for head in self.heads]


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------
# Backbones: (in_channels, (H, W)) -> (module, feature_dim)


def small_cnn(channels: int, size: tuple[int, int]) -> tuple[nn.Module, int]:
    """Three 3x3 conv layers and a small dense layer; about 60k parameters at 28x28.

    Sized for CPU sweeps: an adversarial epoch over 4 000 MNIST images takes seconds on one core.
    """
    h, w = size[0] // 4, size[1] // 4
    net = nn.Sequential(
        _conv_bn(channels, 16),
        nn.MaxPool2d(2),
        _conv_bn(16, 32),
        nn.MaxPool2d(2),
        _conv_bn(32, 32),
        nn.Flatten(),
        nn.Linear(32 * h * w, 32),
        nn.ReLU(inplace=True),
    )
    return net, 32


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PreActBlock(nn.Module):
    """Pre-activation basic block. SAT's PreActResNet-18 projects the shortcut (1x1 conv) in every
    block; wide ResNets project only where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, always_project: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        project = always_project or cin != cout or stride != 1
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if project else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        residual = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return residual + (x if self.shortcut is None else self.shortcut(out))


def preact_resnet18(channels: int, size: tuple[int, int]) -> tuple[nn.Module, int]:
    """SAT's variant: stem 64, stages 128/256/512/512 (two blocks each), BN-ReLU, global pool."""
    widths, strides = (128, 256, 512, 512), (1, 2, 2, 2)
    layers: list[nn.Module] = [nn.Conv2d(channels, 64, 3, 1, 1, bias=False)]
    cin = 64
    for width, stride in zip(widths, strides, strict=True):
        layers += [PreActBlock(cin, width, stride, True), PreActBlock(width, width, 1, True)]
        cin = width
    layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin


def _wide_resnet(depth: int, widen: int) -> Callable:
    def build(channels: int, size: tuple[int, int]) -> tuple[nn.Module, int]:
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        layers: list[nn.Module] = [nn.Conv2d(channels, 16, 3, 1, 1, bias=False)]
        cin = 16
        for width, stride in zip(widths, (1, 2, 2), strict=True):
            for i in range(n):
                layers.append(PreActBlock(cin, width, stride if i == 0 else 1))
                cin = width
        layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return nn.Sequential(*layers), cin

    return build


def resnet50(channels: int, size: tuple[int, int]) -> tuple[nn.Module, int]:
    from torchvision.models import resnet50 as tv_resnet50

    net = tv_resnet50(weights=None)
    if channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


ARCHITECTURES: dict[str, Callable[[int, tuple[int, int]], tuple[nn.Module, int]]] = {
    "small_cnn": small_cnn,
    "preact_resnet18": preact_resnet18,
    "wrn28_10": _wide_resnet(28, 10),
    "wrn34_10": _wide_resnet(34, 10),
    "resnet50": resnet50,
}


def create_model(
    spec: ModelSpec,
    shape: tuple[int, int, int],
    head_sizes: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
) -> Net:
    """Build `spec.arch` for images of `shape` (C, H, W) with one head per task; CPU, float32."""
    backbone, dim = ARCHITECTURES[spec.arch](shape[0], (shape[1], shape[2]))
    model = Net(Normalize(mean, std), backbone, dim, head_sizes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model
