"""ResNet for CIFAR-sized images (He et al. 2016, section 4.2): depth 6n + 2 (20, 32, 56, ...).

A 3x3 stem, three stages of ``n`` basic blocks at widths w, 2w, 4w (16, 32, 64 for ``width: 16``; the
second and third stages halve the resolution), global average pooling and one linear layer. Shortcuts
that change shape are 1x1 conv + BatchNorm (option B), so every channel of a residual stage is one
prunable unit shared by all the convs and BatchNorms that add into it.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt, field_validator
from torch import nn

from evoprune.core.models.base import BaseSpec


class ResNetCifarSpec(BaseSpec):
    name: Literal["resnet_cifar"] = "resnet_cifar"
    depth: PositiveInt = 20  # 6n + 2: 20, 32, 44, 56, 110
    width: PositiveInt = 16  # channels of the first stage (16 in the paper)
    input_size: PositiveInt | tuple[PositiveInt, PositiveInt] = 32

    @field_validator("depth")
    @classmethod
    def _six_n_plus_two(cls, depth: int) -> int:
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        return depth


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """Modules ``stem``, ``layer1``..``layer3`` (exits go after whole stages), ``pool``, ``fc``."""

    def __init__(self, spec: ResNetCifarSpec) -> None:
        super().__init__()
        self.spec = spec.model_dump(mode="json")
        n, w = (spec.depth - 2) // 6, spec.width
        self.stem = nn.Sequential(nn.Conv2d(spec.in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        widths, in_ch = [w, 2 * w, 4 * w], w
        for i, out_ch in enumerate(widths):
            blocks = [BasicBlock(in_ch if b == 0 else out_ch, out_ch, 2 if (i and b == 0) else 1) for b in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_ch = out_ch
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_ch, spec.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))  # (B, 4w, H/4, W/4)
        return self.fc(self.pool(x))
