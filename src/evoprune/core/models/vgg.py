"""VGG-style CNN with BatchNorm sized for small (28x28) images.

Each stage is ``k`` x (conv3x3 -> BN -> ReLU) followed by 2x2 max-pooling; ``stages`` lists the
conv widths per stage, e.g. [[32, 32], [64, 64], [128]] gives 28 -> 14 -> 7 -> 3 pixels.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, confloat, field_validator, model_validator
from torch import nn

from evoprune.core.models.base import BaseSpec, StagedNet


class VGGSpec(BaseSpec):
    name: Literal["vgg"] = "vgg"
    stages: list[list[PositiveInt]] = Field(default_factory=lambda: [[32, 32], [64, 64], [128, 128]])
    fc_features: list[PositiveInt] = Field(default_factory=lambda: [256])
    dropout: confloat(ge=0.0, lt=1.0) = 0.3

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @field_validator("stages")
    @classmethod
    def _non_empty(cls, stages: list[list[int]]) -> list[list[int]]:
        if not stages or any(not s for s in stages):
            raise ValueError("needs at least one stage, each with at least one conv width")
        return stages

    @model_validator(mode="after")
    def _fits_the_input(self) -> VGGSpec:
        if min(self.input_shape[1:]) < 2 ** len(self.stages):
            raise ValueError(
                f"{len(self.stages)} pooling stages shrink a {self.input_size}px input to nothing; "
                "use fewer `stages` in train_dense.model"
            )
        return self


class VGGNet(StagedNet):
    def __init__(self, spec: VGGSpec) -> None:
        super().__init__(spec)
        in_ch = spec.in_channels
        for widths in spec.stages:
            layers: list[nn.Module] = []
            for width in widths:
                layers += [nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
                in_ch = width
            layers.append(nn.MaxPool2d(2))
            self.stages.append(nn.Sequential(*layers))
        c, h, w = self.stage_output_shape(len(self.stages))
        head: list[nn.Module] = [nn.Flatten()]
        width = c * h * w
        for features in spec.fc_features:
            head += [
                nn.Linear(width, features, bias=False),
                nn.BatchNorm1d(features),
                nn.ReLU(),
                nn.Dropout(spec.dropout),
            ]
            width = features
        head.append(nn.Linear(width, spec.num_classes))
        self.head = nn.Sequential(*head)
