"""Nodes of finetune: chosen Pareto members -> re-init variant -> physical pruning -> fine-tuning -> measurements.

The same nodes run once per re-init variant under a Kedro namespace (``keep.finetune_results``, ...).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator
from torch import nn

from evoprune.core.exits import final_exit_key, input_shape
from evoprune.core.finetune import MemoryFormat, finetune_member, measure
from evoprune.core.reinit import VARIANTS, Variant
from evoprune.core.runtime import resolve_device
from evoprune.core.train import TrainConfig
from evoprune.core.units import ChromosomeLayout, build_layout
from evoprune.tracking import log_child_run, to_mlflow_metrics

Split = dict[str, torch.Tensor]
logger = logging.getLogger(__name__)


class MeasurementParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency_batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 1000], min_length=1)
    latency_repeats: PositiveInt = 21  # median over this many timed runs (dense and member in turn)
    # layout of inputs and conv weights while timed, the dense reference's too (channels_last: NHWC, fastest on CPU)
    memory_format: MemoryFormat = "channels_last"


class FinetuneParams(BaseModel):
    """conf/base/parameters_finetune.yml"""

    model_config = ConfigDict(extra="forbid")

    variants: list[Variant] = Field(default_factory=lambda: list(VARIANTS), min_length=1)
    training: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=5))
    loss_weights: list[PositiveFloat] | None = None  # per exit, final exit last (null: 1 each)
    # select_members fine-tunes every candidate of a FLOPs budget with this variant and keeps the one with the
    # best final-exit validation accuracy (the test split is never used to choose)
    selection_variant: Variant = "keep"
    measurement: MeasurementParams = Field(default_factory=MeasurementParams)

    @field_validator("variants")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"variants are listed more than once: {value}")
        return value


def _policy(operating_point: dict[str, object]) -> tuple[float, str]:
    return float(operating_point["threshold"]), str(operating_point["criterion"])


def measure_dense(
    pareto_members: dict[str, object],
    test_split: Split,
    early_exit_operating_point: dict[str, object],
    params: FinetuneParams,
    device: str,
) -> tuple[dict[str, float], dict[str, object]]:
    """The unpruned multi-exit network measured exactly like the pruned members (the reference row),
    and the same figures as MLflow metrics."""
    model: nn.Module = pareto_members["model"]
    m = params.measurement
    measured = measure(
        model,
        test_split,
        _policy(early_exit_operating_point),
        resolve_device(device),
        tuple(m.latency_batch_sizes),
        m.latency_repeats,
        memory_format=m.memory_format,
    )
    return measured, to_mlflow_metrics(measured)


def select_members(
    pareto_members: dict[str, object],
    chosen_members: pd.DataFrame,
    multi_exit_model_init: nn.Module,
    train_split: Split,
    validation_split: Split,
    params: FinetuneParams,
    seed: int,
    device: str,
) -> tuple[dict[str, object], pd.DataFrame, dict[str, object]]:
    """Fine-tune-aware choice of one member per FLOPs budget.

    Accuracy before fine-tuning (the search's fitness) ranks members poorly after it, on networks without
    BatchNorm especially. So every candidate of a budget (``chosen_members.budget``, from
    ``mask_search.candidates_per_budget``) is fine-tuned exactly as ``finetune.training`` says, with the
    weights of ``params.selection_variant``, and the one with the best final-exit *validation* accuracy is
    kept (ties: fewer FLOPs). A budget with one candidate, or a member without a budget, is kept untried.

    Returns: the selected members (``pareto_members`` format), the selection table (every candidate, its
    validation accuracy before and after fine-tuning, ``selected``) and MLflow metrics.
    """
    trained: nn.Module = pareto_members["model"]
    masks = np.asarray(pareto_members["masks"], dtype=bool)
    ids = [int(i) for i in pareto_members["member_ids"]]
    chosen = chosen_members.set_index("member").loc[ids]
    if "budget" not in chosen.columns:
        chosen = chosen.assign(budget=np.nan)
    final = final_exit_key(chosen.columns, "_accuracy")
    table = pd.DataFrame(
        {
            "member": ids,
            "budget": chosen["budget"].to_numpy(dtype=float),
            "flops_ratio": chosen["flops_ratio"].to_numpy(dtype=float),
            "val_accuracy_before_finetune": chosen[final].to_numpy(dtype=float),
            "val_accuracy_after_finetune": np.nan,
        }
    )
    table["group"] = [
        f"budget{b}" if np.isfinite(b) else f"member{m}" for m, b in zip(table["member"], table["budget"], strict=True)
    ]
    dev = resolve_device(device)
    layout = build_layout(trained, input_shape(trained))
    contested = table["group"].map(table["group"].value_counts()) > 1
    for i in np.flatnonzero(contested.to_numpy()):
        _, history = finetune_member(
            trained,
            multi_exit_model_init,
            layout,
            masks[i],
            params.selection_variant,
            train_split,
            validation_split,
            params.training,
            dev,
            seed,
            params.loss_weights,
            f"select_members[{params.selection_variant}] member {ids[i]} (budget {table.at[i, 'budget']:.2f})",
        )
        table.at[i, "val_accuracy_after_finetune"] = history["val_accuracy"][-1]
    score = table["val_accuracy_after_finetune"].fillna(table["val_accuracy_before_finetune"])
    order = table.assign(score=-score).sort_values(["score", "flops_ratio"], kind="stable")
    winners = set(order.groupby("group", sort=False).head(1).index)
    table["selected"] = table.index.isin(winners)
    keep = sorted(winners)  # the table's rows are the members in pareto_members order
    for _, row in table[contested].iterrows():
        logger.info(
            "select_members: member %d (budget %.2f, %.1f%% FLOPs): validation accuracy %.4f after fine-tuning%s",
            row["member"],
            row["budget"],
            100 * row["flops_ratio"],
            row["val_accuracy_after_finetune"],
            " <- selected" if row["selected"] else "",
        )
    selected = {"model": trained, "masks": masks[keep], "member_ids": [ids[i] for i in keep]}
    metrics = {
        f"member{r.member}.val_accuracy_after_finetune": r.val_accuracy_after_finetune
        for r in table[contested].itertuples()
    }
    metrics["candidates_finetuned"] = int(contested.sum())
    return selected, table.drop(columns="group"), to_mlflow_metrics(metrics)


def member_row(
    metrics: dict[str, float], dense: dict[str, float], mask: np.ndarray, layout: ChromosomeLayout
) -> dict[str, float]:
    """Measurements of a pruned model plus ratios against the dense model (the speed-ups come from
    ``measure(..., reference=dense model)``, measured, not derived from FLOPs)."""
    row = dict(metrics)
    row["flops_ratio"] = metrics["flops"] / dense["flops"]
    row["params_ratio"] = metrics["params"] / dense["params"]
    row["units_kept"] = int(mask.sum())
    row["units_ratio"] = float(mask.mean())
    for g in layout.groups:
        row[f"kept.{g.name}"] = int(mask[g.offset : g.offset + g.size].sum())
    final = final_exit_key(metrics, ".test_accuracy")
    row["test_accuracy"] = metrics[final]
    row["accuracy_drop_pt"] = 100.0 * (dense[final] - metrics[final])
    for key in [k for k in metrics if k.startswith("speedup_batch")]:  # dense timed alternately with the member
        # 1.0 = the wall time falls exactly as the FLOPs do
        row[key.replace("speedup", "speedup_per_flops_reduction")] = metrics[key] * row["flops_ratio"]
    return row


def track_model(
    model: nn.Module,
    history: dict[str, object],
    trained: nn.Module,
    mask: np.ndarray,
    layout: ChromosomeLayout,
    test_split: Split,
    early_exit_operating_point: dict[str, object],
    measurement: MeasurementParams,
    dense_measurements: dict[str, float],
    device: torch.device,
    labels: dict[str, object],
    run_name: str,
    tags: dict[str, object],
) -> tuple[dict[str, object], dict[str, float]]:
    """Measure a fine-tuned pruned model against the dense ``trained`` one (timed alternately) and log it
    as a nested MLflow run tagged with ``tags`` and its FLOPs ratio.

    Returns: its report row (``labels`` first) and its scalar metrics (for ``<prefix>.<metric>`` keys).
    """
    measured = measure(
        model.eval(),
        test_split,
        _policy(early_exit_operating_point),
        device,
        tuple(measurement.latency_batch_sizes),
        measurement.latency_repeats,
        memory_format=measurement.memory_format,
        reference=trained,
    )
    row = {
        **labels,
        **member_row(measured, dense_measurements, mask, layout),
        "train_seconds": history["train_seconds"],
    }
    scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "member"}
    log_child_run(
        run_name,
        {**tags, "flops_ratio": f"{row['flops_ratio']:.3f}"},
        {**scalars, "val_accuracy": history["val_accuracy"], "train_loss": history["train_loss"]},
    )
    return row, scalars


def finetune_variant(
    pareto_members: dict[str, object],
    multi_exit_model_init: nn.Module,
    train_split: Split,
    validation_split: Split,
    test_split: Split,
    early_exit_operating_point: dict[str, object],
    dense_measurements: dict[str, float],
    params: FinetuneParams,
    seed: int,
    device: str,
    variant: str,
) -> tuple[pd.DataFrame, dict[str, object], dict[str, object]]:
    """Fine-tune every chosen member with the weights of ``variant`` and measure it.

    Returns:
        One row per member, the fine-tuned pruned members (for the catalog) and MLflow metrics
        (``member<id>.<metric>``). A variant not listed in ``params.variants`` is skipped (empty outputs),
        so that the set of variants is a parameter while Kedro-Viz always shows every namespace.
        Each member also gets a nested MLflow run tagged with stage, variant and member.
    """
    trained: nn.Module = pareto_members["model"]
    masks = np.asarray(pareto_members["masks"], dtype=bool)
    ids = list(pareto_members["member_ids"])
    if variant not in params.variants:
        logger.info("finetune: variant '%s' is not in finetune.variants %s; skipped", variant, params.variants)
        empty = {"model": trained, "masks": masks[:0], "member_ids": [], "pruned": []}
        return pd.DataFrame(columns=["variant", "member"]), empty, {}
    dev = resolve_device(device)
    layout = build_layout(trained, input_shape(trained))
    rows, pruned, metrics = [], [], {}
    for member, mask in zip(ids, masks, strict=True):
        model, history = finetune_member(
            trained,
            multi_exit_model_init,
            layout,
            mask,
            variant,
            train_split,
            validation_split,
            params.training,
            dev,
            seed,
            params.loss_weights,
            f"finetune[{variant}] member {member}",
        )
        row, scalars = track_model(
            model,
            history,
            trained,
            mask,
            layout,
            test_split,
            early_exit_operating_point,
            params.measurement,
            dense_measurements,
            dev,
            {"variant": variant, "member": member},
            f"finetune/{variant}/member{member}",
            {"stage": "finetune", "variant": variant, "member": member},
        )
        rows.append(row)
        pruned.append(model)
        metrics.update({f"member{member}.{k}": v for k, v in scalars.items()})
    finetuned = {"model": trained, "masks": masks, "member_ids": ids, "pruned": pruned}
    return pd.DataFrame(rows), finetuned, to_mlflow_metrics(metrics)


def export_members(finetuned_members: dict[str, object]) -> dict[str, nn.Module]:
    """The fine-tuned pruned members by name (``member<id>``), for ONNX / TorchScript export."""
    return {f"member{i}": m for i, m in zip(finetuned_members["member_ids"], finetuned_members["pruned"], strict=True)}
