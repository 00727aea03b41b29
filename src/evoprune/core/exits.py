"""Multi-exit networks: early-exit heads after named modules of any backbone (BranchyNet, Shallow-Deep Nets).

A ``MultiExitNet`` wraps a backbone (any traceable ``nn.Module`` with a spec) cut into segments after
the modules named in ``exit_after`` (``core.models.segments``). ``forward`` returns the logits of every
exit (early exits in order, the backbone's own output last). ``early_exit_predict`` is a real early exit
on batches: a sample whose confidence at an exit passes the threshold leaves there, and only the
samples still in flight are computed by the next segment. Heads are shaped from a probe forward.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator
from torch import nn

from evoprune.core.models import ModelSpec, build_model, parse_model_spec
from evoprune.core.models.adapter import input_shape, model_spec
from evoprune.core.models.segments import SplitError, split_after

Criterion = Literal["max_softmax", "entropy"]


class ExitHeadSpec(BaseModel):
    """One exit head: [conv3x3 -> ReLU] -> adaptive avg-pool -> [fc -> ReLU] -> fc (logits).
    After a layer with flat (B, F) output: [fc -> ReLU] -> fc."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conv_channels: NonNegativeInt = 0  # 0: no conv layer in the head
    pool_size: PositiveInt = 4  # pooled feature map is pool_size x pool_size
    hidden_features: NonNegativeInt = 64  # 0: a single linear layer


def exit_module_names(exit_after: Iterable[int | str]) -> list[str]:
    """Module names of exit positions; an integer k is shorthand for the k-th stage of a built-in
    staged network (``stages.{k-1}``)."""
    return [f"stages.{k - 1}" if isinstance(k, int) else str(k) for k in exit_after]


class MultiExitSpec(BaseModel):
    """Architecture of a multi-exit network: backbone spec + where the exits go + head shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["multi_exit"] = "multi_exit"
    backbone: ModelSpec
    exit_after: list[str] = Field(min_length=1)  # module names (dotted paths in the backbone)
    head: ExitHeadSpec = Field(default_factory=ExitHeadSpec)

    @field_validator("exit_after", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        names = exit_module_names(value) if isinstance(value, (list, tuple)) else value
        if isinstance(names, list) and len(set(names)) != len(names):
            raise ValueError(f"must name each module once, got {value}")
        return names


class _ExitPath(nn.Module):
    """The segments a sample runs through to reach one exit, then that exit's head (for costing it alone)."""

    def __init__(self, segments: list[nn.Module], head: nn.Module | None) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for segment in self.segments:
            x = segment(x)
        return x if self.head is None else self.head(x)


class MultiExitNet(nn.Module):
    """A backbone with early exits. ``freeze_backbone()`` keeps the backbone in eval mode with frozen
    weights, so that training the heads leaves it bit-identical (BatchNorm statistics included).

    The segments share the backbone's modules and are not registered as submodules: the state dict
    holds ``backbone.*`` and ``exit_heads.*`` only.
    """

    def __init__(self, backbone: nn.Module, spec: MultiExitSpec) -> None:
        super().__init__()
        self.spec: dict[str, Any] = spec.model_dump(mode="json")
        self.backbone = backbone
        self.exit_after = list(spec.exit_after)
        self.segments = split_after(backbone, self.exit_after)  # plain list: not registered
        shapes = self.feature_shapes()
        num_classes = model_spec(backbone)["num_classes"]
        self.exit_heads = nn.ModuleList(_make_head(shapes[e], spec.head, num_classes) for e in range(len(shapes)))
        self.backbone_frozen = False

    @torch.no_grad()
    def feature_shapes(self) -> list[tuple[int, ...]]:
        """Shape of one sample's features at each early exit ((C, H, W) or (F,)), from a probe forward."""
        was_training = self.backbone.training
        self.backbone.eval()
        x = torch.zeros(1, *input_shape(self), device=next(self.backbone.parameters()).device)
        shapes = []
        for segment in self.segments[:-1]:
            x = segment(x)
            shapes.append(tuple(x.shape[1:]))
        self.backbone.train(was_training)
        return shapes

    @property
    def num_exits(self) -> int:
        return len(self.exit_heads) + 1

    @property
    def exit_points(self) -> list[str]:
        """Where each exit sits: the module names of the early exits, then ``output``."""
        return [*self.exit_after, "output"]

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
        for segment, head in zip(self.segments, self.exit_heads, strict=False):
            x = segment(x)
            outputs.append(head(x))
        outputs.append(self.segments[-1](x))
        return outputs

    def exit_path(self, exit_index: int) -> nn.Module:
        """The modules a sample runs through to reach exit ``exit_index`` (0-based), alone."""
        if exit_index == self.num_exits - 1:
            return _ExitPath(self.segments, None)
        return _ExitPath(self.segments[: exit_index + 1], self.exit_heads[exit_index])

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
        for e, (segment, head) in enumerate(zip(self.segments, self.exit_heads, strict=False)):
            x = segment(x)
            if threshold < 1.0:
                logits = head(x)
                leave = confidence(logits, criterion) >= threshold
                preds[alive[leave]] = logits[leave].argmax(1)
                used[alive[leave]] = e
                x, alive = x[~leave], alive[~leave]
                if alive.numel() == 0:
                    return preds, used
        preds[alive] = self.segments[-1](x).argmax(1)
        return preds, used


def _make_head(feature_shape: tuple[int, ...], spec: ExitHeadSpec, num_classes: int) -> nn.Sequential:
    channels = feature_shape[0]
    layers: list[nn.Module] = []
    if len(feature_shape) == 1:  # flat features (after a linear layer)
        width = channels
        if spec.hidden_features:
            layers += [nn.Linear(width, spec.hidden_features), nn.ReLU()]
            width = spec.hidden_features
        return nn.Sequential(*layers, nn.Linear(width, num_classes))
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


def attach_exits(
    backbone: nn.Module, exit_after: list[int | str], head: ExitHeadSpec | dict | None = None
) -> MultiExitNet:
    """A multi-exit network around ``backbone`` (shared, not copied) with exits after the named modules
    (integers: stages of a built-in staged network); heads get fresh weights."""
    if any(isinstance(m, nn.LSTM) for m in backbone.modules()):
        raise SplitError(
            f"{type(backbone).__name__} is recurrent: early exits after its layers do not apply to an LSTM (every "
            "exit would need the whole sequence). Prune it without build_exits (conf/lstm)."
        )
    spec = MultiExitSpec(
        backbone=parse_model_spec(model_spec(backbone)), exit_after=exit_after, head=head or ExitHeadSpec()
    )
    return MultiExitNet(backbone, spec)


def build_network(spec: dict[str, Any]) -> nn.Module:
    """Build any evoprune network (plain backbone or multi-exit) from its spec dict."""
    if spec.get("name") == "multi_exit":
        parsed = MultiExitSpec.model_validate(spec)
        return MultiExitNet(build_model(parsed.backbone), parsed)
    return build_model(spec)


def spec_differences(
    found: Any, model: dict[str, Any] | BaseModel, exit_after: list[int | str] | None = None
) -> list[str]:
    """How a checkpoint's spec ``found`` differs from the configured network: the backbone ``model`` and,
    when ``found`` is a multi-exit spec and ``exit_after`` is given, the exits. Empty when it fits."""
    configured = parse_model_spec(model).model_dump(mode="json")
    try:
        multi = (
            MultiExitSpec.model_validate(found)
            if isinstance(found, dict) and found.get("name") == "multi_exit"
            else None
        )
        backbone = (multi.backbone if multi else parse_model_spec(found)).model_dump(mode="json")
    except ValueError as exc:
        return [f"its spec describes no model evoprune can build ({str(exc).splitlines()[0]})"]
    diffs = [
        f"{key}: {backbone.get(key)!r} in the file, {configured.get(key)!r} in train_dense.model"
        for key in sorted(set(configured) | set(backbone))
        if backbone.get(key) != configured.get(key)
    ]
    if multi is not None and exit_after is not None and multi.exit_after != exit_module_names(exit_after):
        diffs.append(f"exit_after: {multi.exit_after} in the file, {exit_module_names(exit_after)} in build_exits")
    return diffs


def check_network_config(
    spec: dict[str, Any] | BaseModel, exit_after: list[int | str] | None, checkpoint: str | None = None
) -> None:
    """Fail before any training if the model cannot be built, the checkpoint does not fit it, or an
    exit names a module it cannot be cut after; each error names the setting and the fix."""
    from evoprune.core.models.adapter import load_weights, read_state_dict

    model = build_model(spec)
    if checkpoint is not None:
        load_weights(model, read_state_dict(checkpoint), f"train_dense.checkpoint.path = {checkpoint}")
    if exit_after:
        try:
            split_after(model, exit_module_names(exit_after))
        except ValueError as exc:
            raise ValueError(f"build_exits.exit_after = {list(exit_after)}: {exc}") from exc


__all__ = [
    "MultiExitNet",
    "MultiExitSpec",
    "attach_exits",
    "build_network",
    "check_network_config",
    "input_shape",
    "spec_differences",
]
