"""A row-sequential LSTM classifier: an image read as a sequence (E-LSTM's row-sequential MNIST).

A (C, H, W) image becomes ``steps`` time steps of ``features = C*H*W / steps`` values (default: H steps of
one row each, 28 x 28 for Fashion-MNIST); an ``nn.LSTM`` of ``num_layers`` layers and ``hidden_size`` units
reads them and a linear head classifies the last step's hidden state. Its prunable units are the LSTM's
hidden units (``evoprune.core.lstm``); it has no stages, so early exits do not apply.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt, model_validator
from torch import nn

from evoprune.core.models.base import BaseSpec


class LSTMSeqSpec(BaseSpec):
    name: Literal["lstm_seq"] = "lstm_seq"
    hidden_size: PositiveInt = 128
    num_layers: PositiveInt = 1
    steps: PositiveInt | None = None  # time steps per image; None: the image height (one row per step)

    @property
    def sequence_shape(self) -> tuple[int, int]:
        """(steps, features) of one image."""
        c, h, w = self.input_shape
        steps = self.steps or h
        return steps, c * h * w // steps

    @model_validator(mode="after")
    def _image_is_steps_by_features(self) -> LSTMSeqSpec:
        c, h, w = self.input_shape
        steps = self.steps or h
        if (c * h * w) % steps:
            raise ValueError(
                f"an image of {c}x{h}x{w} = {c * h * w} values cannot be read as {steps} steps of equal "
                "features; choose `steps` dividing it (default: the image height)"
            )
        return self


class LSTMSeq(nn.Module):
    """``lstm`` (batch_first) over the image's rows, then ``head`` on the last step's hidden state."""

    def __init__(self, spec: LSTMSeqSpec) -> None:
        super().__init__()
        self.spec = spec.model_dump(mode="json")
        self.input_shape = spec.input_shape
        self.steps, features = spec.sequence_shape
        self.lstm = nn.LSTM(features, spec.hidden_size, spec.num_layers, batch_first=True)
        self.head = nn.Linear(spec.hidden_size, spec.num_classes)

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, steps, features) sequences; any other image size is refused."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"lstm_seq expects images of shape {self.input_shape} (read as {self.steps} steps of "
                f"{self.lstm.input_size} features), got {tuple(x.shape[1:])}; set train_dense.model.input_size "
                "(and steps) to the data's size"
            )
        return x.reshape(x.shape[0], self.steps, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        out, _ = self.lstm(self.sequence(x))
        return self.head(out[:, -1])
