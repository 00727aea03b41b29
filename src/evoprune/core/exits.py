"""Multi-exit networks: early-exit heads after chosen backbone stages (BranchyNet, Shallow-Deep Nets).

A ``MultiExitNet`` wraps a ``StagedNet`` backbone. ``forward`` returns the logits of every exit
(early exits in stage order, the backbone's own head last). ``early_exit_predict`` is a real early
exit on batches: a sample whose confidence at an exit passes the threshold leaves there, and only the
samples still in flight are computed by the next stage.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator
from torch import nn

from evoprune.core.models import ModelSpec, StagedNet, build_model, parse_model_spec
from evoprune.core.models.base import image_shape

Criterion = Literal["max_softmax", "entropy"]


class ExitHeadSpec(BaseModel):
    """One exit head: [conv3x3 -> ReLU] -> adaptive avg-pool -> [fc -> ReLU] -> fc (logits)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conv_channels: NonNegativeInt = 0  # 0: no conv layer in the head
    pool_size: PositiveInt = 4  # pooled feature map is pool_size x pool_size
    hidden_features: NonNegativeInt = 64  # 0: a single linear layer


class MultiExitSpec(BaseModel):
    """Architecture of a multi-exit network: backbone spec + where the exits go + head shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["multi_exit"] = "multi_exit"
    backbone: ModelSpec
    exit_after: list[PositiveInt] = Field(min_length=1)  # 1-based stage indices
    head: ExitHeadSpec = Field(default_factory=ExitHeadSpec)

    @field_validator("exit_after")
    @classmethod
    def _sorted_unique(cls, value: list[int]) -> list[int]:
        if sorted(set(value)) != value:
            raise ValueError(f"must be strictly increasing stage indices, got {value}")
        return value


def check_exit_positions(exit_after: list[int], num_stages: int, where: str = "build_exits.exit_after") -> None:
    """Exits go after stages 1..num_stages-1 (after the last stage sits the backbone's own head)."""
    bad = [k for k in exit_after if not 1 <= k < num_stages]
    if bad:
        raise ValueError(
            f"`{where}` = {exit_after}: no stage {bad} to put an exit after. The backbone has {num_stages} "
            f"stages, so early exits may follow stages 1..{num_stages - 1} (the final exit is the backbone's head)."
        )


class MultiExitNet(nn.Module):
    """A backbone with early exits. ``freeze_backbone()`` keeps the backbone in eval mode with frozen
    weights, so that training the heads leaves it bit-identical (BatchNorm statistics included)."""

    def __init__(self, backbone: StagedNet, spec: MultiExitSpec) -> None:
        super().__init__()
        check_exit_positions(spec.exit_after, len(backbone.stages))
        self.spec: dict[str, Any] = spec.model_dump(mode="json")
        self.backbone = backbone
        self.exit_after = list(spec.exit_after)
        self.exit_heads = nn.ModuleList(
            _make_head(backbone.stage_output_shape(k), spec.head, backbone.spec["num_classes"]) for k in self.exit_after
        )
        self.backbone_frozen = False

    @property
    def num_exits(self) -> int:
        return len(self.exit_heads) + 1

    def freeze_backbone(self) -> MultiExitNet:
        self.backbone_frozen = True
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> MultiExitNet:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # (B, C, H, W) -> E x (B, num_classes)
        outputs = []
        heads = dict(zip(self.exit_after, self.exit_heads, strict=True))
        for k, stage in enumerate(self.backbone.stages, start=1):
            x = stage(x)
            if k in heads:
                outputs.append(heads[k](x))
        outputs.append(self.backbone.head(x))
        return outputs

    def exit_path(self, exit_index: int) -> nn.Sequential:
        """The modules a sample runs through to reach exit ``exit_index`` (0-based), alone."""
        stages = list(self.backbone.stages)
        if exit_index == self.num_exits - 1:
            return nn.Sequential(*stages, self.backbone.head)
        return nn.Sequential(*stages[: self.exit_after[exit_index]], self.exit_heads[exit_index])

    @torch.no_grad()
    def early_exit_predict(
        self, x: torch.Tensor, threshold: float, criterion: Criterion = "max_softmax"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict with confidence-based early exiting; samples that left are not computed further.

        Args:
            x: float images (B, C, H, W).
            threshold: a sample leaves at the first early exit whose confidence >= threshold;
                ``threshold >= 1`` disables early exiting (every sample reaches the final exit).
            criterion: ``max_softmax`` or ``entropy`` (confidence = 1 - entropy / log(num_classes)).

        Returns:
            Predicted classes (B,) and the 0-based exit each sample used (B,).
        """
        b = x.shape[0]
        preds = torch.empty(b, dtype=torch.long, device=x.device)
        used = torch.full((b,), self.num_exits - 1, dtype=torch.long, device=x.device)
        alive = torch.arange(b, device=x.device)  # original indices of samples still in flight
        heads = dict(zip(self.exit_after, range(len(self.exit_heads)), strict=True))
        for k, stage in enumerate(self.backbone.stages, start=1):
            x = stage(x)
            if k in heads and threshold < 1.0:
                e = heads[k]
                logits = self.exit_heads[e](x)
                leave = confidence(logits, criterion) >= threshold
                preds[alive[leave]] = logits[leave].argmax(1)
                used[alive[leave]] = e
                x, alive = x[~leave], alive[~leave]
                if alive.numel() == 0:
                    return preds, used
        preds[alive] = self.backbone.head(x).argmax(1)
        return preds, used


def _make_head(feature_shape: tuple[int, ...], spec: ExitHeadSpec, num_classes: int) -> nn.Sequential:
    channels = feature_shape[0]
    layers: list[nn.Module] = []
    if spec.conv_channels:
        layers += [nn.Conv2d(channels, spec.conv_channels, 3, padding=1), nn.ReLU()]
        channels = spec.conv_channels
    layers += [nn.AdaptiveAvgPool2d(spec.pool_size), nn.Flatten()]
    width = channels * spec.pool_size**2
    if spec.hidden_features:
        layers += [nn.Linear(width, spec.hidden_features), nn.ReLU()]
        width = spec.hidden_features
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def confidence(logits: torch.Tensor, criterion: Criterion) -> torch.Tensor:
    """Confidence in [0, 1] of each row of logits (..., C)."""
    probs = logits.float().softmax(-1)
    if criterion == "max_softmax":
        return probs.max(-1).values
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return 1.0 - entropy / math.log(logits.shape[-1])


def final_exit_key(keys: Iterable[str], suffix: str) -> str:
    """The name of the last exit's figure among names like ``exit<k><suffix>`` (``exit3_accuracy`` in the
    search's tables, ``exit2.test_accuracy`` in measurements), chosen by exit number, not by position."""
    keys = list(keys)
    numbered = {int(m.group(1)): k for k in keys if (m := re.fullmatch(rf"exit(\d+){re.escape(suffix)}", k))}
    if not numbered:
        raise KeyError(f"no exit<k>{suffix} among {keys}")
    return numbered[max(numbered)]


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """One sample's shape (C, H, W) for a backbone or a multi-exit network."""
    spec = model.backbone.spec if isinstance(model, MultiExitNet) else model.spec
    return image_shape(spec["in_channels"], spec["input_size"])


def attach_exits(backbone: StagedNet, exit_after: list[int], head: ExitHeadSpec | dict | None = None) -> MultiExitNet:
    """A multi-exit network around ``backbone`` (shared, not copied); heads get fresh weights."""
    spec = MultiExitSpec(backbone=parse_model_spec(backbone.spec), exit_after=exit_after, head=head or ExitHeadSpec())
    return MultiExitNet(backbone, spec)


def build_network(spec: dict[str, Any]) -> nn.Module:
    """Build any evoprune network (plain backbone or multi-exit) from its spec dict."""
    if spec.get("name") == "multi_exit":
        parsed = MultiExitSpec.model_validate(spec)
        return MultiExitNet(build_model(parsed.backbone), parsed)
    return build_model(spec)
