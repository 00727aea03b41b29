"""The common shape of every evoprune backbone: stages, then a classifier head."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn

InputSize = PositiveInt | tuple[PositiveInt, PositiveInt]  # pixels: square side, or (height, width)


def image_shape(in_channels: int, input_size: int | tuple[int, int] | list[int]) -> tuple[int, int, int]:
    """One sample's shape (C, H, W) from ``in_channels`` and ``input_size`` (a side or (H, W))."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    return int(in_channels), int(h), int(w)


class BaseSpec(BaseModel):
    """Fields every architecture spec has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["builtin"] = "builtin"  # builtin | torchvision | factory (evoprune.core.models)
    num_classes: PositiveInt = 10
    in_channels: PositiveInt = 1
    input_size: InputSize = 28  # pixels: a side (square images) or [height, width]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One sample's shape (C, H, W)."""
        return image_shape(self.in_channels, self.input_size)


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
        x = torch.zeros(1, *image_shape(self.spec["in_channels"], self.spec["input_size"]))
        for stage in self.stages[:upto]:
            x = stage(x)
        self.train(was_training)
        return tuple(x.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)
