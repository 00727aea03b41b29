"""The unstructured baseline of dynamic sparse training: global magnitude pruning (``torch.nn.utils.prune``)
of the trained network to the same share of weights, then fine-tuning with the pruned weights held at zero."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune

from evoprune.core.sparse.thresholds import sparse_weights
from evoprune.core.train import TrainConfig, train


def global_magnitude_prune(model: nn.Module, kept_share: float) -> nn.Module:
    """A copy of ``model`` whose conv/linear weights and LSTM gate matrices keep the ``kept_share`` largest |w| over the whole network
    (``prune.global_unstructured`` with ``L1Unstructured``); the pruning stays attached (``weight_orig`` x
    ``weight_mask``), so training the copy keeps the pruned weights at zero. ``bake`` makes it plain again."""
    if not 0.0 < kept_share <= 1.0:
        raise ValueError(f"kept_share must lie in (0, 1], got {kept_share}")
    pruned = copy.deepcopy(model)
    targets = list(sparse_weights(pruned).values())
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=1.0 - kept_share)
    return pruned


def bake(model: nn.Module) -> nn.Module:
    """Make the pruning of ``global_magnitude_prune`` permanent (plain ``weight`` tensors with zeros)."""
    for module, attribute in sparse_weights(model).values():
        if hasattr(module, f"{attribute}_orig"):
            prune.remove(module, attribute)
    return model


def magnitude_baseline(
    trained: nn.Module,
    kept_share: float,
    train_split: dict[str, torch.Tensor],
    validation_split: dict[str, torch.Tensor] | None,
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    loss_weights: list[float] | None = None,
) -> tuple[nn.Module, dict[str, list[float] | float]]:
    """Prune ``trained`` to ``kept_share`` of its weights by global magnitude, fine-tune it as ``cfg`` says
    (the zeros stay zeros); returns the baked model (CPU) and the fine-tune's history."""
    model = global_magnitude_prune(trained, kept_share)
    history = train(model, train_split, validation_split, cfg, device, seed, "magnitude baseline", loss_weights)
    return bake(model).cpu().eval(), history
