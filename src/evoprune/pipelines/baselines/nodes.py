"""Nodes of baselines: global L1-norm and random filter pruning at the chosen members' FLOPs budgets,
fine-tuned with the same budget as the members."""

from __future__ import annotations

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from evoprune.core.baselines import Criterion, mask_within_budget, unit_scores
from evoprune.core.exits import input_shape
from evoprune.core.finetune import measure
from evoprune.core.masking import prune_physically
from evoprune.core.runtime import resolve_device
from evoprune.core.train import train
from evoprune.core.units import build_layout
from evoprune.pipelines.finetune.nodes import FinetuneParams, member_row
from evoprune.tracking import log_child_run, to_mlflow_metrics

Split = dict[str, torch.Tensor]


class BaselinesParams(BaseModel):
    """conf/base/parameters_baselines.yml"""

    model_config = ConfigDict(extra="forbid")

    criteria: list[Criterion] = Field(default_factory=lambda: ["l1", "random"])


def prune_baselines(
    pareto_members: dict[str, object],
    chosen_members: pd.DataFrame,
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
    """For each criterion and each chosen member's FLOPs ratio: prune the trained network to that budget,
    fine-tune it exactly like the members (``finetune.training``) and measure it. No layer loses more
    than ``max_pruning_ratio`` of its units, the limit the search obeyed.

    Returns: one row per (criterion, budget) and MLflow metrics (``<criterion>.member<id>.<metric>``);
    each row also gets a nested MLflow run tagged with stage, criterion and member.
    """
    trained: nn.Module = pareto_members["model"]
    dev = resolve_device(device)
    shape = input_shape(trained)
    layout = build_layout(trained, shape)
    policy = (float(early_exit_operating_point["threshold"]), str(early_exit_operating_point["criterion"]))
    m = finetune.measurement
    rows, metrics = [], {}
    for criterion in params.criteria:
        scores = unit_scores(trained, layout, shape, criterion, seed)
        for member, budget in zip(chosen_members["member"], chosen_members["flops_ratio"], strict=True):
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
            measured = measure(
                model.eval(), test_split, policy, dev, tuple(m.latency_batch_sizes), m.latency_repeats, trained
            )
            row = {
                "criterion": criterion,
                "member": int(member),
                "flops_budget": float(budget),
                **member_row(measured, dense_measurements, mask, layout),
                "train_seconds": history["train_seconds"],
            }
            rows.append(row)
            scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "member"}
            metrics.update({f"{criterion}.member{member}.{k}": v for k, v in scalars.items()})
            log_child_run(
                f"baselines/{criterion}/member{member}",
                {"stage": "baselines", "criterion": criterion, "member": int(member), "flops_budget": f"{budget:.3f}"},
                {**scalars, "val_accuracy": history["val_accuracy"], "train_loss": history["train_loss"]},
            )
    return pd.DataFrame(rows), to_mlflow_metrics(metrics)
