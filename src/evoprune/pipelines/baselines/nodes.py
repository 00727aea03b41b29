"""Nodes of baselines: Torch-Pruning's criteria (L1, random, Taylor, Hessian, LAMP), ranked globally by our budget
fitting or by Torch-Pruning's own global pruner, at the chosen members' FLOPs budgets, fine-tuned with the same
budget as the members."""

from __future__ import annotations

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from evoprune.core.baselines import BaselinePruner, Ranking
from evoprune.core.comparison import (
    MeasuredModel,
    criterion_metrics,
    early_exit_policy,
    finetune_within_member_budgets,
    method_table,
    prune_to_member_budgets,
    replicate_seeds,
    unpack_members,
)
from evoprune.core.exits import input_shape
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.importance import BaselineCriterion, calibration_batch
from evoprune.core.latency import LatencyModel
from evoprune.core.mask_codec import decode_masks
from evoprune.core.report_table import ReportParams
from evoprune.core.runtime import resolve_device
from evoprune.pipelines.mask_search.nodes import MaskSearchParams
from evoprune.tracking import ChildRun, measured_child_run, to_mlflow_metrics

Split = dict[str, torch.Tensor]


class BaselinesParams(BaseModel):
    """conf/base/parameters_baselines.yml"""

    model_config = ConfigDict(extra="forbid")

    # Torch-Pruning importances (evoprune.core.importance): l1 GroupMagnitudeImportance(p=1) | random
    # RandomImportance | taylor GroupTaylorImportance | hessian GroupHessianImportance | lamp LAMPImportance
    criteria: list[BaselineCriterion] = Field(default_factory=lambda: ["l1", "random"], min_length=1)
    # budget_fit: global ranking fitted to each member's FLOPs (rows named by the criterion) | torch_pruning:
    # Torch-Pruning's MetaPruner(global_pruning=True) stepped until the FLOPs fit (rows tp_<criterion>)
    rankings: list[Ranking] = Field(default_factory=lambda: ["budget_fit"], min_length=1)
    calibration_samples: PositiveInt = 256  # training images the gradient criteria (taylor, hessian) read
    # also fine-tune the roulette branch method's networks (Chan et al., mask_search's roulette_path) at the
    # members' FLOPs: report rows of kind roulette
    roulette_branch: bool = False


def prune_baselines(
    selected_members: dict[str, object],
    train_split: Split,
    validation_split: Split,
    test_split: Split,
    early_exit_operating_point: dict[str, object],
    dense_measurements: dict[str, float],
    latency_model: LatencyModel,
    finetune: FinetuneParams,
    params: BaselinesParams,
    mask_search: MaskSearchParams,
    seed: int,
    report: ReportParams,
    device: str,
) -> tuple[pd.DataFrame, dict[str, object], list[ChildRun]]:
    """For each criterion x ranking and each selected member's cost on the members' budget axis
    (``mask_search.cost_axis()``: FLOPs, or the latency model's predicted latency): prune the trained network to
    that budget, fine-tune it exactly like the members (``finetune.training``, ``report.seeds`` fine-tune seeds)
    and measure it. No layer loses more than ``search.max_pruning_ratio`` of its units, and every layer larger
    than ``search.round_to`` keeps a multiple of it: the limits the search obeyed.

    Returns: one row per (method, budget, seed), MLflow metrics (``<method>.member<id>.<metric>``) and one
    nested MLflow run per row (tags stage, criterion, member, flops_budget, [latency_budget,] seed).
    """
    trained, masks, ids = unpack_members(selected_members)
    search = mask_search.search
    shape, limits = input_shape(trained), {"max_pruning_ratio": search.max_pruning_ratio, "round_to": search.round_to}
    calibration = calibration_batch(train_split, params.calibration_samples, seed)
    pruners = [BaselinePruner(c, r, shape, calibration, **limits) for r in params.rankings for c in params.criteria]
    splits, policy = (train_split, validation_split, test_split), early_exit_policy(early_exit_operating_point)
    measured = prune_to_member_budgets(
        trained, masks, ids, pruners, splits, policy, dense_measurements, finetune, replicate_seeds(seed, report.seeds),
        resolve_device(device), mask_search.cost_axis(), latency_model,
    )  # fmt: skip
    metrics = to_mlflow_metrics(criterion_metrics(measured))
    return pd.DataFrame([m.row for m in measured]), metrics, [_run(m) for m in measured]


def finetune_roulette_branch(
    selected_members: dict[str, object],
    roulette_path: pd.DataFrame,
    train_split: Split,
    validation_split: Split,
    test_split: Split,
    early_exit_operating_point: dict[str, object],
    dense_measurements: dict[str, float],
    finetune: FinetuneParams,
    params: BaselinesParams,
    report: ReportParams,
    seed: int,
    device: str,
) -> tuple[dict[str, pd.DataFrame], dict[str, object]]:
    """With ``baselines.roulette_branch``: the roulette branch method's networks at the members' FLOPs
    (``evoprune.core.comparison.finetune_within_member_budgets``), fine-tuned like the members with the report's
    seeds. Returns ``method_results["roulette"]`` (rows of kind ``roulette``, method ``roulette_branch``; empty
    when off or when the branch did not run, so an earlier run's rows do not linger) and MLflow metrics."""
    trained, masks, ids = unpack_members(selected_members)
    measured = []
    if params.roulette_branch and len(roulette_path):
        splits, policy = (train_split, validation_split, test_split), early_exit_policy(early_exit_operating_point)
        measured = finetune_within_member_budgets(
            trained, decode_masks(roulette_path["mask"]), masks, ids, "roulette_branch", splits, policy,
            dense_measurements, finetune, replicate_seeds(seed, report.seeds), resolve_device(device),
        )  # fmt: skip
    return {"roulette": method_table(measured, "roulette")}, to_mlflow_metrics(criterion_metrics(measured))


def _run(measured: MeasuredModel) -> ChildRun:
    labels = measured.labels
    budgets = {k: f"{labels[k]:.3f}" for k in ("flops_budget", "latency_budget") if k in labels}
    tags = {"stage": "baselines", **labels, **budgets}
    return measured_child_run(f"baselines/{labels['criterion']}/{measured.key.replace('.', '/')}", tags, measured)
