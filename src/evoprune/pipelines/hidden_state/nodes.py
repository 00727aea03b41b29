"""Nodes of hidden_state: hidden-state pruning of the dense LSTM at several sparsities, with and without
fine-tuning (``evoprune.core.hidden_state``), as rows of the report."""

from __future__ import annotations

import pandas as pd
import torch
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator
from torch import nn

from evoprune.core import plots
from evoprune.core.exits import final_exit_key
from evoprune.core.hidden_state import hidden_state_sweep, report_rows
from evoprune.core.lstm import has_lstm
from evoprune.core.runtime import resolve_device
from evoprune.core.train import TrainConfig
from evoprune.tracking import to_mlflow_metrics

Split = dict[str, torch.Tensor]


class HiddenStateParams(BaseModel):
    """conf/base/parameters_hidden_state.yml"""

    model_config = ConfigDict(extra="forbid")

    sparsities: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7], min_length=1)  # target shares zeroed
    group: PositiveInt = 4  # consecutive hidden units zeroed together (the paper's 4)
    finetune: bool = True  # also fine-tune a copy with the pruning in its forward
    activity_l1: float = Field(0.0, ge=0.0)  # fine-tune penalty on the mean |h| kept (ours); 0: none
    training: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=3, optimizer="adamw", learning_rate=1e-3, weight_decay=1e-4)
    )

    @field_validator("sparsities")
    @classmethod
    def _open_unit_interval(cls, value: list[float]) -> list[float]:
        bad = [s for s in value if not 0.0 < s < 1.0]
        if bad:
            raise ValueError(f"sparsities must lie in (0, 1) (shares of hidden-state elements zeroed), got {bad}")
        return value


def prune_hidden_states(
    dense_model: nn.Module,
    train_split: Split,
    validation_split: Split,
    test_split: Split,
    dense_measurements: dict[str, float],
    params: HiddenStateParams,
    seed: int,
    device: str,
) -> tuple[dict[str, pd.DataFrame], dict[str, object]]:
    """The report's ``hidden_state`` rows (``method_results["hidden_state"]``) and their metrics."""
    if not has_lstm(dense_model):
        raise ValueError(
            "hidden_state prunes the hidden state of an LSTM; the dense model has none "
            "(train_dense.model.name: lstm_seq, e.g. kedro run --pipeline=prune --env=lstm first)"
        )
    cfg = params.training if params.finetune else None
    splits = (train_split, validation_split, test_split)
    rows = hidden_state_sweep(
        dense_model, splits, params.sparsities, params.group, cfg, resolve_device(device), seed, params.activity_l1
    )
    accuracy = dense_measurements[final_exit_key(dense_measurements, ".test_accuracy")]
    table = pd.DataFrame(report_rows(rows, dense_measurements["flops"], accuracy)).assign(kind="hidden_state")
    metrics = {
        f"sparsity{round(100 * r['target_sparsity'])}.{'finetuned' if r['finetuned'] else 'as_trained'}.{k}": r[k]
        for r in rows
        for k in ("test_accuracy", "hidden_sparsity", "skipped_macs_per_sequence")
    }
    return {"hidden_state": table}, to_mlflow_metrics(metrics)


def plot_hidden_state(method_results: dict[str, pd.DataFrame], dense_measurements: dict[str, float]) -> Figure:
    """Test accuracy against measured hidden-state sparsity, with and without fine-tuning."""
    table = method_results["hidden_state"]
    series = {"fine-tuned": table[table["finetuned"]], "as trained": table[~table["finetuned"]]}
    series = {k: v for k, v in series.items() if len(v)}
    return plots.hidden_state_sparsity(
        {k: v["hidden_sparsity"].tolist() for k, v in series.items()},
        {k: v["test_accuracy"].tolist() for k, v in series.items()},
        dense_measurements[final_exit_key(dense_measurements, ".test_accuracy")],
        "hidden-state pruning of the LSTM",
    )
