"""Nodes of build_exits."""

from __future__ import annotations

import copy
from typing import Literal

import pandas as pd
import torch
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator
from torch import nn

from evoprune.core import plots
from evoprune.core.early_exit import early_exit_latency
from evoprune.core.exit_summary import summarise_exits
from evoprune.core.exits import Criterion, ExitHeadSpec, MultiExitNet, attach_exits
from evoprune.core.runtime import resolve_device
from evoprune.core.train import TrainConfig, train
from evoprune.tracking import to_mlflow_metrics

Split = dict[str, torch.Tensor]


class LatencyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: PositiveInt = 1000  # images per timed batch
    repeats: PositiveInt = 7  # median over this many timed runs


class BuildExitsParams(BaseModel):
    """conf/base/parameters_build_exits.yml"""

    model_config = ConfigDict(extra="forbid")

    # module names of the backbone (model.named_modules(), e.g. layer1); an integer k = stage k of lenet5/vgg/alexnet_small;
    # [] = no early exits: the dense network goes on as the one-exit network (an LSTM, conf/lstm)
    exit_after: list[PositiveInt | str] = Field(default_factory=lambda: [1])
    head: ExitHeadSpec = Field(default_factory=ExitHeadSpec)
    mode: Literal["heads_only", "joint"] = "heads_only"
    loss_weights: list[PositiveFloat] | None = None  # one per exit, final exit last; default 1 each
    training: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            epochs=8, optimizer="adamw", learning_rate=3e-3, weight_decay=1e-4, schedule="onecycle"
        )
    )
    criterion: Criterion = "max_softmax"
    thresholds: list[float] = Field(
        default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0],
        min_length=1,
    )
    max_accuracy_drop: float = Field(0.005, ge=0.0, lt=1.0)  # operating point: within this of the final exit
    latency: LatencyParams = Field(default_factory=LatencyParams)

    @field_validator("thresholds")
    @classmethod
    def _in_unit_interval(cls, value: list[float]) -> list[float]:
        bad = [t for t in value if not 0.0 < t <= 1.0]
        if bad:
            raise ValueError(f"thresholds must lie in (0, 1], got {bad}")
        return sorted(set(value) | {1.0})  # 1.0 (never exit early) is the reference row


def attach_exit_heads(dense_model: nn.Module, params: BuildExitsParams, seed: int) -> MultiExitNet | nn.Module:
    """A copy of the dense model with fresh early-exit heads (seeded); in ``heads_only`` mode the
    backbone is frozen. Without ``exit_after``, the copy alone (the later stages see one exit)."""
    if not params.exit_after:
        return copy.deepcopy(dense_model)
    torch.manual_seed(seed)
    model = attach_exits(copy.deepcopy(dense_model), params.exit_after, params.head)
    return model.freeze_backbone() if params.mode == "heads_only" else model


def initial_multi_exit_weights(dense_model_init: nn.Module, multi_exit_model_untrained: MultiExitNet) -> MultiExitNet:
    """θ0 of the whole multi-exit network: the backbone's initial weights (train_dense) with the exit
    heads' initial weights, for lottery-ticket rewinding of pruned multi-exit members."""
    if not isinstance(multi_exit_model_untrained, MultiExitNet):  # no early exits
        return copy.deepcopy(dense_model_init)
    model = copy.deepcopy(multi_exit_model_untrained)
    model.backbone.load_state_dict(dense_model_init.state_dict())
    return model


def train_exit_heads(
    model: MultiExitNet, train_split: Split, validation_split: Split, params: BuildExitsParams, seed: int, device: str
) -> tuple[MultiExitNet, dict[str, object]]:
    """Train the exit heads (or the whole network, ``joint``) on the weighted sum of exit losses; a
    network without early exits is returned as it is."""
    if not isinstance(model, MultiExitNet):
        return model, {}
    model = copy.deepcopy(model)
    history = train(
        model,
        train_split,
        validation_split,
        params.training,
        resolve_device(device),
        seed,
        "build_exits",
        params.loss_weights,
    )
    return model.cpu(), to_mlflow_metrics(history)


def evaluate_exits(
    model: MultiExitNet, validation_split: Split, test_split: Split, params: BuildExitsParams, device: str
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float], dict[str, object]]:
    """Per-exit accuracy and cost, the threshold sweep and the operating point (``evoprune.core.exit_summary``).

    Returns:
        exit_summary (one row per exit), early_exit_table (one row per threshold),
        operating_point (threshold and its figures) and MLflow metrics.
    """
    thresholds, criterion, max_drop = params.thresholds, params.criterion, params.max_accuracy_drop
    ev = summarise_exits(model, validation_split, test_split, thresholds, criterion, max_drop, resolve_device(device))
    return ev.summary, ev.table, ev.operating_point, to_mlflow_metrics(ev.metrics)


def measure_latency(
    model: MultiExitNet, test_split: Split, operating_point: dict[str, float], params: BuildExitsParams, device: str
) -> dict[str, object]:
    """Median wall time of the dense backbone vs real early-exit inference at the operating threshold."""
    lat = early_exit_latency(
        model,
        test_split["images"],
        operating_point["threshold"],
        params.criterion,
        resolve_device(device),
        params.latency.batch_size,
        params.latency.repeats,
    )
    return to_mlflow_metrics(
        {
            "latency.dense_ms": 1e3 * lat["dense_seconds"],
            "latency.early_exit_ms": 1e3 * lat["early_exit_seconds"],
            "latency.speedup": lat["speedup"],
        }
    )


def plot_exit_accuracy(exit_summary: pd.DataFrame) -> Figure:
    """Per-exit test accuracy vs FLOPs to reach the exit.

    Returns: the figure (one point per exit, labelled with where the exit hangs).
    """
    labels = [f"exit {e} (after {a})" for e, a in zip(exit_summary["exit"], exit_summary["after"], strict=True)]
    return plots.exit_accuracy_vs_flops(
        exit_summary["flops"].tolist(), exit_summary["test_accuracy"].tolist(), labels, "build_exits: per-exit accuracy"
    )


def plot_early_exit_tradeoff(
    early_exit_table: pd.DataFrame, exit_summary: pd.DataFrame, operating_point: dict[str, float]
) -> Figure:
    """Test accuracy vs expected FLOPs over the threshold sweep."""
    final = exit_summary.iloc[-1]
    return plots.early_exit_tradeoff(
        early_exit_table["test_expected_flops"].tolist(),
        early_exit_table["test_accuracy"].tolist(),
        early_exit_table["threshold"].tolist(),
        float(final["flops"]),
        float(final["test_accuracy"]),
        operating_point["threshold"],
        f"build_exits: early exiting ({operating_point['criterion']})",
    )
