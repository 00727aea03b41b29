"""Nodes of train_dense."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict
from torch import nn

from evoprune.core.cost import count_flops, count_params
from evoprune.core.models import ModelSpec, build_model
from evoprune.core.models.adapter import input_shape, load_weights, read_state_dict
from evoprune.core.plots import training_curves
from evoprune.core.runtime import resolve_device, seed_everything
from evoprune.core.train import TrainConfig, evaluate, train
from evoprune.tracking import metric_series, to_mlflow_metrics

Split = dict[str, torch.Tensor]


class DenseCheckpoint(BaseModel):
    """Weights trained elsewhere that train_dense starts from."""

    model_config = ConfigDict(extra="forbid")

    path: str  # a torch.save'd state_dict of train_dense.model (weights_only load), or an evoprune checkpoint
    then: Literal["finetune", "skip"] = "finetune"  # finetune: train_dense.training from these weights; skip: use them


class TrainDenseParams(BaseModel):
    """conf/base/parameters_train_dense.yml"""

    model_config = ConfigDict(extra="forbid")

    model: ModelSpec
    training: TrainConfig
    checkpoint: DenseCheckpoint | None = None


def initialise_model(params: TrainDenseParams, seed: int) -> nn.Module:
    """The untrained model: its weights are θ0, kept for rewinding (lottery tickets)."""
    seed_everything(seed)
    return build_model(params.model)


def train_dense_model(
    initial_model: nn.Module,
    train_split: Split,
    validation_split: Split,
    params: TrainDenseParams,
    seed: int,
    device: str,
) -> tuple[nn.Module, dict[str, object]]:
    """Train a copy of the initial model, or of the weights in ``train_dense.checkpoint`` (with
    ``then: skip`` those weights are the dense model, untrained further).

    Returns:
        The trained model (on CPU) and its per-epoch history as MLflow metrics.
    """
    model = copy.deepcopy(initial_model)
    if params.checkpoint is not None:
        load_weights(
            model, read_state_dict(params.checkpoint.path), f"train_dense.checkpoint.path = {params.checkpoint.path}"
        )
        if params.checkpoint.then == "skip":
            return model.cpu(), {}
    history = train(model, train_split, validation_split, params.training, resolve_device(device), seed, "train_dense")
    return model.cpu(), to_mlflow_metrics(history)


def evaluate_dense_model(
    model: nn.Module, validation_split: Split, test_split: Split, device: str
) -> dict[str, object]:
    """Validation and test accuracy, FLOPs and parameter count of the trained model."""
    dev = resolve_device(device)
    metrics = {
        "val_accuracy_final": evaluate(model, validation_split, dev),
        "test_accuracy": evaluate(model, test_split, dev),
        "flops": count_flops(model, input_shape(model)),
        "params": count_params(model),
    }
    model.cpu()
    return to_mlflow_metrics(metrics)


def plot_training_history(history: dict[str, object], params: TrainDenseParams) -> Figure:
    """Loss and validation accuracy per epoch."""
    return training_curves(
        metric_series(history, "train_loss"),
        metric_series(history, "val_accuracy"),
        f"train_dense: {params.model.name}",
    )
