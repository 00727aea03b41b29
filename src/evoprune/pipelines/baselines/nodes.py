"""Nodes of baselines: global L1-norm and random filter pruning at the chosen members' FLOPs budgets,
fine-tuned with the same budget as the members."""

from __future__ import annotations

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from evoprune.core.comparison import MeasuredModel, early_exit_policy, prune_to_member_budgets, unpack_members
from evoprune.core.exits import input_shape
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.importance import BaselineCriterion, baseline_criterion
from evoprune.core.runtime import resolve_device
from evoprune.tracking import ChildRun, measured_child_run, to_mlflow_metrics

Split = dict[str, torch.Tensor]


class BaselinesParams(BaseModel):
    """conf/base/parameters_baselines.yml"""

    model_config = ConfigDict(extra="forbid")

    # l1: Torch-Pruning's GroupMagnitudeImportance(p=1) | random: RandomImportance (evoprune.core.importance)
    criteria: list[BaselineCriterion] = Field(default_factory=lambda: ["l1", "random"])


def prune_baselines(
    selected_members: dict[str, object],
    train_split: Split,
    validation_split: Split,
    test_split: Split,
    early_exit_operating_point: dict[str, object],
    dense_measurements: dict[str, float],
    finetune: FinetuneParams,
    params: BaselinesParams,
    max_pruning_ratio: float,
    round_to: int,
    seed: int,
    device: str,
) -> tuple[pd.DataFrame, dict[str, object], list[ChildRun]]:
    """For each criterion and each selected member's FLOPs ratio: prune the trained network to that budget,
    fine-tune it exactly like the members (``finetune.training``) and measure it. No layer loses more
    than ``max_pruning_ratio`` of its units, and every layer larger than ``round_to`` keeps a multiple of
    it: the limits the search obeyed.

    Returns: one row per (criterion, budget), MLflow metrics (``<criterion>.member<id>.<metric>``) and one
    nested MLflow run per row (tags stage, criterion, member, flops_budget).
    """
    trained, masks, ids = unpack_members(selected_members)
    criteria = {name: baseline_criterion(name, input_shape(trained), seed) for name in params.criteria}
    splits, policy = (train_split, validation_split, test_split), early_exit_policy(early_exit_operating_point)
    dense, dev = dense_measurements, resolve_device(device)
    measured = prune_to_member_budgets(
        trained, masks, ids, criteria, splits, policy, dense, finetune, (max_pruning_ratio, round_to), seed, dev
    )
    metrics = {f"{m.labels['criterion']}.member{m.member}.{k}": v for m in measured for k, v in m.scalars.items()}
    return pd.DataFrame([m.row for m in measured]), to_mlflow_metrics(metrics), [_run(m) for m in measured]


def _run(measured: MeasuredModel) -> ChildRun:
    labels = measured.labels
    tags = {"stage": "baselines", **labels, "flops_budget": f"{labels['flops_budget']:.3f}"}
    return measured_child_run(f"baselines/{labels['criterion']}/member{measured.member}", tags, measured)
