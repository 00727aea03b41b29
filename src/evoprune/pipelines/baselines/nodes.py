"""Nodes of baselines: global L1-norm and random filter pruning at the chosen members' FLOPs budgets,
fine-tuned with the same budget as the members."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from evoprune.core.baselines import mask_within_budget
from evoprune.core.exits import input_shape
from evoprune.core.importance import BaselineCriterion, baseline_criterion
from evoprune.core.masking import prune_physically
from evoprune.core.runtime import resolve_device
from evoprune.core.train import train
from evoprune.core.units import build_layout
from evoprune.pipelines.finetune.nodes import FinetuneParams, track_model
from evoprune.tracking import to_mlflow_metrics

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
    seed: int,
    device: str,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """For each criterion and each selected member's FLOPs ratio: prune the trained network to that budget,
    fine-tune it exactly like the members (``finetune.training``) and measure it. No layer loses more
    than ``max_pruning_ratio`` of its units, the limit the search obeyed.

    Returns: one row per (criterion, budget) and MLflow metrics (``<criterion>.member<id>.<metric>``);
    each row also gets a nested MLflow run tagged with stage, criterion and member.
    """
    trained: nn.Module = selected_members["model"]
    dev = resolve_device(device)
    shape = input_shape(trained)
    layout = build_layout(trained, shape)
    members = [int(i) for i in selected_members["member_ids"]]
    budgets = layout.cost(np.asarray(selected_members["masks"], dtype=bool))["flops"] / layout.dense_flops
    rows, metrics = [], {}
    for criterion in params.criteria:
        scores = baseline_criterion(criterion, shape, seed)(trained, layout)
        for member, budget in zip(members, budgets, strict=True):
            mask = mask_within_budget(layout, scores, float(budget), max_pruning_ratio)
            model = prune_physically(trained, layout, mask, shape)
            history = train(
                model,
                train_split,
                validation_split,
                finetune.training,
                dev,
                seed,
                f"baseline[{criterion}] budget of member {member}",
                finetune.loss_weights,
            )
            row, scalars = track_model(
                model,
                history,
                trained,
                mask,
                layout,
                test_split,
                early_exit_operating_point,
                finetune.measurement,
                dense_measurements,
                dev,
                {"criterion": criterion, "member": int(member), "flops_budget": float(budget)},
                f"baselines/{criterion}/member{member}",
                {"stage": "baselines", "criterion": criterion, "member": int(member), "flops_budget": f"{budget:.3f}"},
            )
            rows.append(row)
            metrics.update({f"{criterion}.member{member}.{k}": v for k, v in scalars.items()})
    return pd.DataFrame(rows), to_mlflow_metrics(metrics)
