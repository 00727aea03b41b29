"""AlexNet (Krizhevsky et al. 2012) scaled for 28x28 / 32x32 images, as seed 003 evaluates it.

Five convs (5x5, 5x5, then three 3x3) with ReLU, max-pooling after the first, second and fifth,
then dropout-fc-ReLU-dropout-fc-ReLU-fc. Stages: [conv1, pool], [conv2, pool], [conv3..conv5, pool].
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, confloat
from torch import nn

from evoprune.core.models.base import BaseSpec, StagedNet


class AlexNetSmallSpec(BaseSpec):
    name: Literal["alexnet_small"] = "alexnet_small"
    conv_channels: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt, PositiveInt] = (64, 192, 384, 256, 256)
    fc_features: list[PositiveInt] = Field(default_factory=lambda: [512, 256])
    dropout: confloat(ge=0.0, lt=1.0) = 0.5


class AlexNetSmall(StagedNet):
    def __init__(self, spec: AlexNetSmallSpec) -> None:
        super().__init__(spec)
        c1, c2, c3, c4, c5 = spec.conv_channels
        pool = dict(kernel_size=3, stride=2, padding=1)
        self.stages.append(
            nn.Sequential(nn.Conv2d(spec.in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(**pool))
        )
        self.stages.append(nn.Sequential(nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(**pool)))
        self.stages.append(
            nn.Sequential(
                nn.Conv2d(c2, c3, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(c3, c4, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(c4, c5, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(**pool),
            )
        )
        c, h, w = self.stage_output_shape(len(self.stages))
        head: list[nn.Module] = [nn.Flatten()]
        width = c * h * w
        for features in spec.fc_features:
            head += [nn.Dropout(spec.dropout), nn.Linear(width, features), nn.ReLU()]
            width = features
        head.append(nn.Linear(width, spec.num_classes))
        self.head = nn.Sequential(*head)
