"""Nodes of scoring_net: train the Scoring Net on the trained network (``evoprune.core.scoring_net``), then prune
to the selected members' FLOPs with its masks, fine-tune and measure them exactly like the baselines; and apply it
to other models and datasets (transfer)."""

from __future__ import annotations

import pandas as pd
import torch
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from evoprune.core.comparison import criterion_metrics, early_exit_policy, replicate_seeds, unpack_members
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.plots import criteria_on_targets
from evoprune.core.report_table import ReportParams
from evoprune.core.runtime import resolve_device
from evoprune.core.scoring_net import (
    ScoringNet,
    ScoringNetConfig,
    TransferConfig,
    train_scoring_net_with_sources,
    transfer_scoring_net,
)
from evoprune.core.scoring_net.compare import prune_to_member_budgets_by_scoring_net
from evoprune.tracking import to_mlflow_metrics

Split = dict[str, torch.Tensor]


class ScoringNetParams(BaseModel):
    """conf/base/parameters_scoring_net.yml"""

    model_config = ConfigDict(extra="forbid")

    training: ScoringNetConfig = Field(default_factory=ScoringNetConfig)  # stages, losses, optimisers, features
    transfer: TransferConfig = Field(default_factory=TransferConfig)  # other models and datasets (transfer node)


def train_criterion(
    multi_exit_model: nn.Module,
    train_split: Split,
    validation_split: Split,
    params: ScoringNetParams,
    seed: int,
    device: str,
) -> tuple[ScoringNet, dict[str, object], dict[str, object]]:
    """The trained Scoring Net (saved as weights + feature spec), its history (seconds of the extra source networks
    and of the features; per stage: wall time, losses, hard-mask accuracy at the evaluation budgets) and MLflow
    metrics. With ``training.extra_sources.count`` > 0 it also trains on that many networks of the run's
    architecture trained here first."""
    result = train_scoring_net_with_sources(
        multi_exit_model, train_split, params.training, seed, validation_split, resolve_device(device)
    )
    metrics: dict[str, object] = {f"train.{k}": result.history[k] for k in ("extra_sources_seconds", "feature_seconds")}
    for k, stage in enumerate(result.history["stages"]):
        prefix = f"train.stage{k + 1}_{stage['stage']}"
        metrics[f"{prefix}.seconds"] = stage["seconds"]
        metrics[f"{prefix}.loss"] = stage["loss"]
        for budget, accuracy in stage.get("accuracy_at_budget", {}).items():
            metrics[f"{prefix}.accuracy_at_{round(100 * float(budget))}pct"] = accuracy
    return result.net.cpu(), result.history, to_mlflow_metrics(metrics)


def prune_with_scoring_net(
    scoring_net: ScoringNet,
    selected_members: dict[str, object],
    train_split: Split,
    validation_split: Split,
    test_split: Split,
    early_exit_operating_point: dict[str, object],
    dense_measurements: dict[str, float],
    finetune: FinetuneParams,
    params: ScoringNetParams,
    max_pruning_ratio: float,
    round_to: int,
    seed: int,
    report: ReportParams,
    device: str,
) -> tuple[dict[str, pd.DataFrame], dict[str, object]]:
    """``method_results["scoring_net"]``: per selected member, the trained network pruned to the member's FLOPs
    by the Scoring Net's mask (``mask_seconds``: features + scoring + budget fitting), fine-tuned like the
    members and baselines (``report.seeds`` fine-tune seeds) and measured; and its metrics
    (``member<id>[.seed<seed>].<metric>``)."""
    trained, masks, ids = unpack_members(selected_members)
    splits, policy = (train_split, validation_split, test_split), early_exit_policy(early_exit_operating_point)
    limits, images, dev = (max_pruning_ratio, round_to), params.training.feature_images, resolve_device(device)
    measured, mask_seconds = prune_to_member_budgets_by_scoring_net(
        scoring_net, trained, masks, ids, splits, policy, dense_measurements, finetune, limits, images, seed, dev,
        replicate_seeds(seed, report.seeds),
    )  # fmt: skip
    rows = [{**m.row, "kind": "scoring_net", "method": "scoring_net", "mask_seconds": mask_seconds} for m in measured]
    metrics = {k.removeprefix("scoring_net."): v for k, v in criterion_metrics(measured).items()}
    metrics["mask_seconds"] = mask_seconds
    return {"scoring_net": pd.DataFrame(rows).drop(columns=["criterion"], errors="ignore")}, to_mlflow_metrics(metrics)


# metric kind -> its column in the transfer rows (the finetuned ones only with ``transfer.finetune``)
TRANSFER_METRICS = {
    "accuracy": "test_accuracy",
    "margin_vs_l1": "margin_vs_l1_pt",
    "finetuned_accuracy": "finetuned_accuracy",
    "finetuned_margin_vs_l1": "finetuned_margin_vs_l1_pt",
}


def transfer_criterion(
    scoring_net: ScoringNet,
    train_split: Split,
    test_split: Split,
    params: ScoringNetParams,
    finetune: FinetuneParams,
    seed: int,
    device: str,
) -> tuple[pd.DataFrame, Figure, dict[str, object]]:
    """The trained Scoring Net on each ``transfer.targets`` model/dataset, zero-shot, adapted and beside a net
    trained there and group L1, all at equal FLOPs without fine-tuning (and, with ``transfer.finetune``, after it,
    ``finetune.parallel`` at once): the table, its plot and metrics (``transfer.<target>.<method>.<kind>_at_<budget
    %>pct``, kind = accuracy, margin_vs_l1, finetuned_accuracy, finetuned_margin_vs_l1)."""
    rows = transfer_scoring_net(
        scoring_net, params.training, (train_split, test_split), params.transfer, seed, resolve_device(device),
        finetune.parallel,
    )  # fmt: skip
    table = pd.DataFrame(rows)
    metrics = {
        f"transfer.{row['target']}.{row['method']}.{kind}_at_{round(100 * row['budget'])}pct": row[column]
        for row in rows
        for kind, column in TRANSFER_METRICS.items()
        if column in row and (row["method"] != "l1" or "margin" not in kind)
    }
    return table, criteria_on_targets(rows, "Scoring Net transfer vs L1 (equal FLOPs)"), to_mlflow_metrics(metrics)
