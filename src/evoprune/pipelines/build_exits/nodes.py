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
from evoprune.core.early_exit import choose_operating_point, early_exit_latency, exit_costs, sweep_thresholds
from evoprune.core.exits import Criterion, ExitHeadSpec, MultiExitNet, attach_exits
from evoprune.core.runtime import resolve_device
from evoprune.core.train import TrainConfig, predict_exit_logits, train
from evoprune.tracking import to_mlflow_metrics

Split = dict[str, torch.Tensor]


class LatencyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: PositiveInt = 1000  # images per timed batch
    repeats: PositiveInt = 7  # median over this many timed runs


class BuildExitsParams(BaseModel):
    """conf/base/parameters_build_exits.yml"""

    model_config = ConfigDict(extra="forbid")

    # module names of the backbone (model.named_modules(), e.g. layer1); an integer k = stage k of lenet5/vgg/alexnet_small
    exit_after: list[PositiveInt | str] = Field(default_factory=lambda: [1], min_length=1)
    head: ExitHeadSpec = Field(default_factory=ExitHeadSpec)
    mode: Literal["heads_only", "joint"] = "heads_only"
    loss_weights: list[PositiveFloat] | None = None  # one per exit, final exit last; default 1 each
    training: TrainConfig = Field(default_factory=TrainConfig)
    criterion: Criterion = "max_softmax"
    thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.7, 0.9, 0.95, 0.99, 1.0], min_length=1)
    max_accuracy_drop: float = Field(0.005, ge=0.0, lt=1.0)  # operating point: within this of the final exit
    latency: LatencyParams = Field(default_factory=LatencyParams)

    @field_validator("thresholds")
    @classmethod
    def _in_unit_interval(cls, value: list[float]) -> list[float]:
        bad = [t for t in value if not 0.0 < t <= 1.0]
        if bad:
            raise ValueError(f"thresholds must lie in (0, 1], got {bad}")
        return sorted(set(value) | {1.0})  # 1.0 (never exit early) is the reference row


def attach_exit_heads(dense_model: nn.Module, params: BuildExitsParams, seed: int) -> MultiExitNet:
    """A copy of the dense model with fresh early-exit heads (seeded); in ``heads_only`` mode the
    backbone is frozen."""
    torch.manual_seed(seed)
    model = attach_exits(copy.deepcopy(dense_model), params.exit_after, params.head)
    return model.freeze_backbone() if params.mode == "heads_only" else model


def initial_multi_exit_weights(dense_model_init: nn.Module, multi_exit_model_untrained: MultiExitNet) -> MultiExitNet:
    """θ0 of the whole multi-exit network: the backbone's initial weights (train_dense) with the exit
    heads' initial weights, for lottery-ticket rewinding of pruned multi-exit members."""
    model = copy.deepcopy(multi_exit_model_untrained)
    model.backbone.load_state_dict(dense_model_init.state_dict())
    return model


def train_exit_heads(
    model: MultiExitNet, train_split: Split, validation_split: Split, params: BuildExitsParams, seed: int, device: str
) -> tuple[MultiExitNet, dict[str, object]]:
    """Train the exit heads (or the whole network, ``joint``) on the weighted sum of exit losses."""
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
    """Per-exit accuracy and cost, the threshold sweep and the operating point.

    Returns:
        exit_summary (one row per exit), early_exit_table (one row per threshold),
        operating_point (threshold and its figures) and MLflow metrics.
    """
    dev = resolve_device(device)
    costs = exit_costs(model)
    policy_flops = [c["flops_policy"] for c in costs]
    logits = {
        name: predict_exit_logits(model, s["images"], dev)
        for name, s in (("val", validation_split), ("test", test_split))
    }
    labels = {"val": validation_split["labels"], "test": test_split["labels"]}
    acc = {n: (logits[n].argmax(-1).cpu() == labels[n]).double().mean(1).tolist() for n in logits}
    summary = pd.DataFrame(
        [
            {
                "exit": e + 1,
                "after": model.exit_points[e],
                "val_accuracy": acc["val"][e],
                "test_accuracy": acc["test"][e],
                **costs[e],
            }
            for e in range(model.num_exits)
        ]
    )
    sweep = {
        n: sweep_thresholds(logits[n], labels[n], params.thresholds, params.criterion, policy_flops) for n in logits
    }
    table = pd.DataFrame(
        [
            {
                "threshold": v["threshold"],
                "val_accuracy": v["accuracy"],
                "test_accuracy": t["accuracy"],
                "val_expected_flops": v["expected_flops"],
                "test_expected_flops": t["expected_flops"],
                "test_flops_saving": 1.0 - t["expected_flops"] / costs[-1]["flops"],
                **{k.replace("share", "test_share"): t[k] for k in t if k.startswith("share")},
            }
            for v, t in zip(sweep["val"], sweep["test"], strict=True)
        ]
    )
    chosen = choose_operating_point(sweep["val"], acc["val"][-1], params.max_accuracy_drop)
    row = table.loc[table["threshold"] == chosen["threshold"]].iloc[0]
    operating = {
        "threshold": float(row["threshold"]),
        "test_accuracy": float(row["test_accuracy"]),
        "test_expected_flops": float(row["test_expected_flops"]),
        "test_flops_saving": float(row["test_flops_saving"]),
        "test_accuracy_drop": acc["test"][-1] - float(row["test_accuracy"]),
        "criterion": params.criterion,
    }
    metrics = {
        f"exit{e + 1}.{k}": summary.iloc[e][k]
        for e in range(model.num_exits)
        for k in ("val_accuracy", "test_accuracy", "flops", "flops_policy", "params")
    }
    metrics.update({f"operating.{k}": v for k, v in operating.items() if k != "criterion"})
    return summary, table, operating, to_mlflow_metrics(metrics)


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
    model.cpu()
    return to_mlflow_metrics(
        {
            "latency.dense_ms": 1e3 * lat["dense_seconds"],
            "latency.early_exit_ms": 1e3 * lat["early_exit_seconds"],
            "latency.speedup": lat["speedup"],
        }
    )


def plot_exit_accuracy(exit_summary: pd.DataFrame) -> Figure:
    """Per-exit test accuracy vs FLOPs to reach the exit."""
    labels = [f"exit {e} (after {s})" for e, s in zip(exit_summary["exit"], exit_summary["after"], strict=True)]
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
