"""Nodes of exit_search: prune's search again, its objectives judging every exit (``exit_search.objectives``), then
its front's networks at the selected members' FLOPs, fine-tuned and measured like the members."""

from __future__ import annotations

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from evoprune.core.comparison import (
    criterion_metrics,
    early_exit_policy,
    finetune_within_member_budgets,
    method_table,
    replicate_seeds,
    unpack_members,
)
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.mask_codec import decode_masks
from evoprune.core.report_table import ReportParams
from evoprune.core.runtime import resolve_device
from evoprune.core.search.api import search_pruning_masks
from evoprune.core.search.problem import Objective
from evoprune.core.search.run import SearchConfig
from evoprune.pipelines.mask_search.nodes import MaskSearchParams, search_data, tabulate_search
from evoprune.tracking import to_mlflow_metrics

Split = dict[str, torch.Tensor]


class ExitSearchParams(BaseModel):
    """conf/base/parameters_exit_search.yml"""

    model_config = ConfigDict(extra="forbid")

    # replace mask_search.search.objectives; everything else of mask_search.search is kept, so the two searches
    # differ in what they judge alone. mean_error: every exit's error (Chen 2022) | policy_error: the early-exit
    # policy's; the cost objective (flops_ratio) gives the front its budgets
    objectives: list[Objective] = Field(default_factory=lambda: ["mean_error", "flops_ratio"], min_length=2)

    @property
    def method(self) -> str:
        """The rows' method name, after the objective that judges the exits."""
        return f"search_{self.objectives[0]}"


def search_all_exits(
    multi_exit_model: nn.Module,
    train_split: Split,
    validation_split: Split,
    early_exit_operating_point: dict[str, object],
    params: ExitSearchParams,
    mask_search: MaskSearchParams,
    seed: int,
    device: str,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """mask_search's search with ``params.objectives`` on the same data, seed and limits (checkpointed beside it).

    Returns: its front (mask_search's ``pareto_set`` columns) and the search's summary as MLflow metrics."""
    cfg = SearchConfig.model_validate({**mask_search.search.model_dump(), "objectives": params.objectives})
    subset, calibration, policy = search_data(train_split, validation_split, early_exit_operating_point, mask_search)
    outcome = search_pruning_masks(
        multi_exit_model, subset, calibration, cfg, seed, resolve_device(device), policy=policy,
        checkpoint_dir=mask_search.checkpoint_dir, checkpoints_kept=mask_search.checkpoints_kept,
        on_bad_checkpoint=mask_search.on_bad_checkpoint, distributed=mask_search.distributed, train_split=train_split,
    )  # fmt: skip
    front, _, _, _, summary = tabulate_search(outcome)
    return front, summary


def finetune_front_at_member_budgets(
    exit_search_front: pd.DataFrame,
    selected_members: dict[str, object],
    train_split: Split,
    validation_split: Split,
    test_split: Split,
    early_exit_operating_point: dict[str, object],
    dense_measurements: dict[str, float],
    finetune: FinetuneParams,
    params: ExitSearchParams,
    report: ReportParams,
    seed: int,
    device: str,
) -> tuple[dict[str, pd.DataFrame], dict[str, object]]:
    """Per selected member, the front's network with the most FLOPs within the member's (its best on the exits),
    fine-tuned like the members with the report's seeds and measured. Returns ``method_results["exit_search"]``
    (rows of kind ``exit_search``, method ``search_<objective>``) and MLflow metrics."""
    trained, masks, ids = unpack_members(selected_members)
    splits, policy = (train_split, validation_split, test_split), early_exit_policy(early_exit_operating_point)
    measured = finetune_within_member_budgets(
        trained, decode_masks(exit_search_front["mask"]), masks, ids, params.method, splits, policy,
        dense_measurements, finetune, replicate_seeds(seed, report.seeds), resolve_device(device),
    )  # fmt: skip
    return {"exit_search": method_table(measured, "exit_search")}, to_mlflow_metrics(criterion_metrics(measured))
