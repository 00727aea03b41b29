"""Nodes of finetune: chosen Pareto members -> re-init variant -> physical pruning -> fine-tuning -> measurements.

The same nodes run once per re-init variant under a Kedro namespace (``keep.finetune_results``, ...).
"""

from __future__ import annotations

import logging

import pandas as pd
import torch
from torch import nn

from evoprune.core.comparison import (
    MeasuredModel,
    early_exit_policy,
    finetune_with_variant,
    replicate_seeds,
    unpack_members,
)
from evoprune.core.finetune import ReusableFinetunes, measure
from evoprune.core.finetune_config import FinetuneParams, MeasurementParams
from evoprune.core.latency import LatencyModel
from evoprune.core.report_table import ReportParams
from evoprune.core.runtime import resolve_device
from evoprune.core.selection import RefitLimits, select_by_finetuning
from evoprune.pipelines.mask_search.nodes import MaskSearchParams
from evoprune.tracking import ChildRun, measured_child_run, to_mlflow_metrics

__all__ = ["FinetuneParams", "MeasurementParams", "export_members", "finetune_variant", "measure_dense"]

Split = dict[str, torch.Tensor]
logger = logging.getLogger(__name__)


def measure_dense(
    pareto_members: dict[str, object],
    test_split: Split,
    early_exit_operating_point: dict[str, object],
    params: FinetuneParams,
    device: str,
) -> tuple[dict[str, float], dict[str, object]]:
    """The unpruned multi-exit network measured exactly like the pruned members.

    Returns: the measurements (the reference row of the report) and the same figures as MLflow metrics.
    """
    m = params.measurement
    policy, dev = early_exit_policy(early_exit_operating_point), resolve_device(device)
    batches, repeats = tuple(m.latency_batch_sizes), m.latency_repeats
    measured = measure(
        pareto_members["model"],
        test_split,
        policy,
        dev,
        batches,
        repeats,
        memory_format=m.memory_format,
        threads=m.threads,
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
    mask_search: MaskSearchParams | None = None,
    latency_model: LatencyModel | None = None,
) -> tuple[dict[str, object], pd.DataFrame, dict[str, object], dict[str, object]]:
    """Fine-tune-aware choice of one member per FLOPs budget (``evoprune.core.selection``): every candidate
    of a budget (``mask_search.candidates_per_budget``) is fine-tuned as ``finetune.training`` says with the
    weights of ``params.selection_variant``; the best final-exit *validation* accuracy is kept. With
    ``params.selection_refit`` each winner then meets its refit (Linear units by group L1 within its cost on
    ``mask_search``'s budget axis, under the search's per-layer limits).

    Returns: the selected members (``pareto_members`` format), the selection table (every candidate, its
    validation accuracy before and after fine-tuning, ``refit_of``, ``selected``), MLflow metrics and the selected
    members' fine-tunes (``finetuned_members`` format with histories and settings: the selection variant reuses
    them).
    """
    trained, masks, ids = unpack_members(pareto_members)
    splits, dev, search = (train_split, validation_split), resolve_device(device), mask_search or MaskSearchParams()
    limits = RefitLimits(search.cost_axis(), latency_model, search.search.max_pruning_ratio, search.search.round_to)
    selection = select_by_finetuning(
        trained, multi_exit_model_init, masks, ids, chosen_members, splits, params, seed, dev, limits
    )
    kept, masks, ids = selection.kept, selection.masks, selection.member_ids
    selected = {"model": trained, "masks": masks[kept], "member_ids": [ids[i] for i in kept]}
    finetunes = selection.finetuned.as_members(trained, masks, ids)
    return selected, selection.table, to_mlflow_metrics(selection.metrics), finetunes


def finetune_variant(
    pareto_members: dict[str, object],
    selection_finetunes: dict[str, object],
    multi_exit_model_init: nn.Module,
    train_split: Split,
    validation_split: Split,
    test_split: Split,
    early_exit_operating_point: dict[str, object],
    dense_measurements: dict[str, float],
    params: FinetuneParams,
    seed: int,
    report: ReportParams,
    device: str,
    variant: str,
) -> tuple[pd.DataFrame, dict[str, object], dict[str, object], list[ChildRun]]:
    """Fine-tune every chosen member with the weights of ``variant`` with ``report.seeds`` fine-tune
    seeds (``seed``, ``seed + 1``, ...) and measure it against the dense model. A fine-tune that
    select_members made with the same settings (``selection_finetunes``) is taken, not repeated.

    Returns:
        One row per member and seed, the fine-tuned pruned members of the first seed (for the catalog), MLflow
        metrics (``member<id>.<metric>``, ``member<id>.seed<seed>.<metric>`` for further seeds) and one nested
        MLflow run per row (tags stage, variant, member, seed). A variant that an environment or ``--params``
        left out of ``params.variants`` is skipped (empty outputs).
    """
    trained, masks, ids = unpack_members(pareto_members)
    if variant not in params.variants:
        logger.info("finetune: variant '%s' is not in finetune.variants %s; skipped", variant, params.variants)
        masks, ids = masks[:0], []
    dev = resolve_device(device)
    splits, policy = (train_split, validation_split, test_split), early_exit_policy(early_exit_operating_point)
    fine_tune_seeds = replicate_seeds(seed, report.seeds)
    measured = finetune_with_variant(
        trained, multi_exit_model_init, masks, ids, variant, splits, policy, dense_measurements, params,
        fine_tune_seeds, dev, ReusableFinetunes.from_members(selection_finetunes),
    )  # fmt: skip
    pruned = [m.model for m in measured if not m.replicate]
    finetuned = {"model": trained, "masks": masks, "member_ids": ids, "pruned": pruned}
    metrics = {f"{m.key}.{k}": v for m in measured for k, v in m.scalars.items()}
    return _table(measured), finetuned, to_mlflow_metrics(metrics), [_run(variant, m) for m in measured]


def _table(measured: list[MeasuredModel]) -> pd.DataFrame:
    return pd.DataFrame([m.row for m in measured]) if measured else pd.DataFrame(columns=["variant", "member"])


def _run(variant: str, measured: MeasuredModel) -> ChildRun:
    name = f"finetune/{variant}/{measured.key.replace('.', '/')}"
    return measured_child_run(name, {"stage": "finetune", **measured.labels}, measured)


def export_members(finetuned_members: dict[str, object]) -> dict[str, nn.Module]:
    """The fine-tuned pruned members by name, for ONNX / TorchScript export.

    Returns: ``{"member<id>": pruned nn.Module}``.
    """
    return {f"member{i}": m for i, m in zip(finetuned_members["member_ids"], finetuned_members["pruned"], strict=True)}
