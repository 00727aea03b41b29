"""LeNet-300-100 (LeCun et al. 1998): an MLP on the flattened image, fc300-fc100-fc10 with ReLU.

Stages: [flatten, fc300, ReLU], [fc100, ReLU]; head: fc10. Exits after a stage see flat features.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt
from torch import nn

from evoprune.core.models.base import BaseSpec, StagedNet


class LeNet300Spec(BaseSpec):
    name: Literal["lenet300"] = "lenet300"
    hidden_features: list[PositiveInt] = Field(default_factory=lambda: [300, 100], min_length=1)

    @property
    def num_stages(self) -> int:
        return len(self.hidden_features)


class LeNet300(StagedNet):
    def __init__(self, spec: LeNet300Spec) -> None:
        super().__init__(spec)
        c, h, w = spec.input_shape
        width = c * h * w
        for k, features in enumerate(spec.hidden_features):
            layers: list[nn.Module] = [nn.Flatten()] if k == 0 else []
            self.stages.append(nn.Sequential(*layers, nn.Linear(width, features), nn.ReLU()))
            width = features
        self.head = nn.Linear(width, spec.num_classes)
