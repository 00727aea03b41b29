"""The common shape of every evoprune backbone: stages, then a classifier head."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn


class BaseSpec(BaseModel):
    """Fields every architecture spec has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_classes: PositiveInt = 10
    in_channels: PositiveInt = 1
    input_size: PositiveInt = 28  # pixels, square images


class StagedNet(nn.Module):
    """``stages`` (nn.ModuleList) then ``head``; forward = head(stage_k(...stage_1(x)))."""

    def __init__(self, spec: BaseSpec) -> None:
        super().__init__()
        self.spec: dict[str, Any] = spec.model_dump(mode="json")
        self.stages = nn.ModuleList()
        self.head: nn.Module = nn.Identity()

    @torch.no_grad()
    def stage_output_shape(self, upto: int) -> tuple[int, ...]:
        """Shape (C, H, W) after the first ``upto`` stages, from one zero image in eval mode."""
        was_training = self.training
        self.eval()
        x = torch.zeros(1, self.spec["in_channels"], self.spec["input_size"], self.spec["input_size"])
        for stage in self.stages[:upto]:
            x = stage(x)
        self.train(was_training)
        return tuple(x.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)
