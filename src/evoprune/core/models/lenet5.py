"""LeNet-5 for 28x28 inputs: conv6-pool-conv16-pool-fc120-fc84-fc10 (ReLU, max-pooling)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt
from torch import nn

from evoprune.core.models.base import BaseSpec, StagedNet


class LeNet5Spec(BaseSpec):
    name: Literal["lenet5"] = "lenet5"
    conv_channels: tuple[PositiveInt, PositiveInt] = (6, 16)
    fc_features: list[PositiveInt] = Field(default_factory=lambda: [120, 84])

    @property
    def num_stages(self) -> int:
        return 2


class LeNet5(StagedNet):
    def __init__(self, spec: LeNet5Spec) -> None:
        super().__init__(spec)
        c1, c2 = spec.conv_channels
        self.stages.append(
            nn.Sequential(nn.Conv2d(spec.in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        )  # (B, c1, 14, 14)
        self.stages.append(nn.Sequential(nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2)))  # (B, c2, 5, 5)
        c, h, w = self.stage_output_shape(len(self.stages))
        layers: list[nn.Module] = [nn.Flatten()]
        width = c * h * w
        for features in spec.fc_features:
            layers += [nn.Linear(width, features), nn.ReLU()]
            width = features
        layers.append(nn.Linear(width, spec.num_classes))
        self.head = nn.Sequential(*layers)
