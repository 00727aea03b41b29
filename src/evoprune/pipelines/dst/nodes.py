"""Nodes of dst: dynamic sparse training of the multi-exit network, unstructured (the paper) and structured
(unit masks in the chromosome layout), compared with magnitude pruning and structured L1 (``evoprune.core.sparse``)."""

from __future__ import annotations

import copy
import logging
from typing import Literal

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import nn

from evoprune.core import plots
from evoprune.core.comparison import early_exit_policy, replicate_seeds
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.latency import LatencyModel
from evoprune.core.report_table import ReportParams
from evoprune.core.runtime import resolve_device
from evoprune.core.sparse import ControllerConfig, SparseTrainingConfig, SparseTrainingResult, train_sparse
from evoprune.core.sparse.compare import (
    SEEDED_COMPARISON_COLUMNS,
    compare_dst,
    method_metrics,
    seeded_search_comparison,
)
from evoprune.core.train import TrainConfig
from evoprune.pipelines.latency_profile.nodes import LatencyProfileParams
from evoprune.pipelines.mask_search.nodes import MaskSearchParams, search_masks, tabulate_search
from evoprune.pipelines.train_dense.nodes import TrainDenseParams
from evoprune.tracking import to_mlflow_metrics

Split = dict[str, torch.Tensor]
logger = logging.getLogger(__name__)


class DSTParams(BaseModel):
    """conf/base/parameters_dst.yml"""

    model_config = ConfigDict(extra="forbid")

    start_from: Literal["init", "trained"] = "init"  # θ0 of the multi-exit network (the paper) | its trained weights
    unstructured: SparseTrainingConfig = Field(default_factory=SparseTrainingConfig)
    structured: SparseTrainingConfig = Field(
        default_factory=lambda: SparseTrainingConfig(
            mode="structured", controller=ControllerConfig(target_kept=0.25, ramp=0.5)
        )
    )
    # magnitude baseline's fine-tune epochs; null: equal total epochs (from init: DST's epochs minus train_dense's,
    # at least 1; from the trained weights: DST's epochs)
    magnitude_finetune_epochs: PositiveInt | None = None
    # run mask_search again with the structured DST mask in NSGA-II's first population, and compare its front
    # with prune's at the member budgets
    seed_search: bool = False

    @model_validator(mode="after")
    def _modes(self) -> DSTParams:
        if self.unstructured.mode != "unstructured" or self.structured.mode != "structured":
            raise ValueError("dst.unstructured.mode must be 'unstructured' and dst.structured.mode 'structured'")
        return self

    def magnitude_training(self, finetune: TrainConfig, dense_epochs: int) -> TrainConfig:
        """The magnitude baseline's fine-tune: ``finetune`` for ``magnitude_finetune_epochs``, by default as many
        epochs as make its total equal DST's (DST from θ0: DST's minus the dense network's, at least 1; DST from
        the trained weights: DST's)."""
        already = dense_epochs if self.start_from == "init" else 0
        epochs = self.magnitude_finetune_epochs or max(1, self.unstructured.training.epochs - already)
        return finetune.model_copy(update={"epochs": epochs})


def _train(
    cfg: SparseTrainingConfig, params: DSTParams, initial: nn.Module, trained: nn.Module, splits, seed, device
) -> SparseTrainingResult:
    """Dynamic sparse training of a copy of θ0 or of the trained network (``dst.start_from``)."""
    model = copy.deepcopy(initial if params.start_from == "init" else trained)
    return train_sparse(model, *splits, cfg, resolve_device(device), seed)


def _outputs(result: SparseTrainingResult) -> tuple[pd.DataFrame, dict[str, object], dict[str, object]]:
    """The per-layer table, the history and its MLflow metrics."""
    scalars = {k: v for k, v in result.history.items() if isinstance(v, (int, float, list))}
    return pd.DataFrame(result.per_layer), result.history, to_mlflow_metrics(scalars)


def train_unstructured(
    multi_exit_model_init: nn.Module,
    multi_exit_model: nn.Module,
    train_split: Split,
    validation_split: Split,
    params: DSTParams,
    seed: int,
    device: str,
) -> tuple[dict[str, object], pd.DataFrame, dict[str, object], dict[str, object]]:
    """Paper DST: per-weight masks, thresholds per output unit. Returns the sparse model (zeros + masks), the
    per-layer table, the history (per epoch: accuracy, kept share overall and per layer) and MLflow metrics."""
    splits = (train_split, validation_split)
    result = _train(params.unstructured, params, multi_exit_model_init, multi_exit_model, splits, seed, device)
    return {"model": result.model, "weight_masks": result.weight_masks}, *_outputs(result)


def train_structured(
    multi_exit_model_init: nn.Module,
    multi_exit_model: nn.Module,
    train_split: Split,
    validation_split: Split,
    params: DSTParams,
    seed: int,
    device: str,
) -> tuple[dict[str, object], pd.DataFrame, dict[str, object], dict[str, object]]:
    """Structured DST: one threshold per unit; returns the network and its unit mask as a members file (member
    id -1), the per-group table, the history and MLflow metrics."""
    splits = (train_split, validation_split)
    result = _train(params.structured, params, multi_exit_model_init, multi_exit_model, splits, seed, device)
    return {"model": result.model, "masks": result.unit_mask[None], "member_ids": [-1]}, *_outputs(result)


def compare_methods(
    dst_sparse_model: dict[str, object],
    dst_structured_members: dict[str, object],
    multi_exit_model: nn.Module,
    multi_exit_model_init: nn.Module,
    train_split: Split,
    validation_split: Split,
    test_split: Split,
    early_exit_operating_point: dict[str, object],
    dense_measurements: dict[str, float],
    params: DSTParams,
    finetune: FinetuneParams,
    train_dense: TrainDenseParams,
    seed: int,
    report: ReportParams,
    device: str,
) -> tuple[dict[str, pd.DataFrame], dict[str, object]]:
    """DST's rows for the report (``evoprune.core.sparse.compare``) under ``method_results["dst"]``, and metrics;
    the structured rows are fine-tuned with ``report.seeds`` seeds, like the members and baselines."""
    magnitude = params.magnitude_training(finetune.training, train_dense.training.epochs)
    table = compare_dst(
        dst_sparse_model["model"],
        dst_structured_members["model"],
        dst_structured_members["masks"][0],
        multi_exit_model,
        multi_exit_model_init,
        (train_split, validation_split, test_split),
        early_exit_policy(early_exit_operating_point),
        dense_measurements,
        finetune,
        magnitude,
        seed,
        resolve_device(device),
        replicate_seeds(seed, report.seeds),
    )
    return {"dst": table}, to_mlflow_metrics(method_metrics(table, seed))


def search_seeded_with_dst(
    dst_structured_members: dict[str, object],
    multi_exit_model: nn.Module,
    train_split: Split,
    validation_split: Split,
    early_exit_operating_point: dict[str, object],
    latency_model: LatencyModel,
    pareto_set: pd.DataFrame,
    latency_params: LatencyProfileParams,
    mask_search: MaskSearchParams,
    params: DSTParams,
    seed: int,
    device: str,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, object]]:
    """With ``dst.seed_search``: prune's search again, the structured DST mask in its first population; its Pareto
    set, and per member budget the best final-exit validation accuracy on it and on prune's front (gain in
    points; the DST mask's own cost when no budgets are set). Off: empty tables and no metrics."""
    if not params.seed_search:
        logger.info("dst.seed_search is off: no search seeded with the DST mask (set it to true to run one)")
        return pd.DataFrame(columns=["member"]), pd.DataFrame(columns=SEEDED_COMPARISON_COLUMNS), {}
    outcome = search_masks(
        multi_exit_model, train_split, validation_split, early_exit_operating_point, latency_model, latency_params,
        mask_search, seed, device, seed_masks=dst_structured_members["masks"],
    )  # fmt: skip
    seeded = tabulate_search(outcome)[0]
    axis = mask_search.cost_axis()
    dst_masks = np.asarray(dst_structured_members["masks"], dtype=bool)
    budgets = mask_search.member_budgets or outcome.cost_ratio(dst_masks, axis).tolist()
    comparison = seeded_search_comparison(seeded, pareto_set, budgets, axis)
    gains = zip(comparison["budget"], comparison["gain_pt"], strict=True)
    metrics = {f"gain_pt_at_{100 * b:.0f}pct": g for b, g in gains if np.isfinite(g)}  # NaN: a front has none
    return seeded, comparison, to_mlflow_metrics({**metrics, "front_size": len(seeded)})


def plot_sparse_training(dst_unstructured_history: dict, dst_structured_history: dict) -> Figure:
    """Accuracy and kept share per epoch, overall and per layer, of both modes."""
    histories = {"unstructured": dst_unstructured_history, "structured": dst_structured_history}
    return plots.sparse_training(histories, "dst: dynamic sparse training")
