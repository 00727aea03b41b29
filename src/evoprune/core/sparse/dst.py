"""Dynamic sparse training: train weights and their thresholds at once (Liu et al., ICLR 2020).

loss = task loss + alpha * sum(exp(-t)) over every threshold; masks follow the weights as they move, so a
pruned weight (or unit) that becomes useful again comes back. A layer keeping at most ``reset_below`` of its
weights has its thresholds reset to 0 (the paper's rule against layer collapse).

The optional ``SparsityController`` (ours) steers the share kept to a target, since the paper's fixed alpha
gives whatever sparsity the data leads to: alpha follows the error (kept - target), changing sign below the
target. Off (no target) reproduces the paper.

``unstructured``: per-weight masks, thresholds per output unit (the paper). ``structured``: per-unit masks in the
project's chromosome layout (``StructuredThresholds``), which physically prune like a Pareto member.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt
from torch import nn

from evoprune.core.lstm import lstm_modules, lstm_steps
from evoprune.core.models.adapter import input_shape
from evoprune.core.sparse.thresholds import StructuredThresholds, UnstructuredThresholds, sparse_weights
from evoprune.core.train import TrainConfig, TrainingExtras, train
from evoprune.core.units import build_layout, flops_per_layer


class ControllerConfig(BaseModel):
    """Steers the share kept (weights; FLOPs in structured mode) to ``target_kept``: see ``SparsityController``."""

    model_config = ConfigDict(extra="forbid")

    target_kept: float = Field(gt=0.0, lt=1.0)  # e.g. 0.05: keep 5% of the weights
    max_alpha: PositiveFloat = 5e-3  # regulariser weight when the share kept is off by `band` or more
    band: float = Field(0.02, gt=0.0, le=1.0)  # error (kept - target) at which the full weight applies
    every: PositiveInt = 10  # optimiser steps between updates
    # share of the training steps over which the target falls from 1 (all kept) to target_kept along Zhu & Gupta's
    # cubic schedule (gradual pruning, 2017); 0: target_kept from the first step
    ramp: float = Field(0.0, ge=0.0, lt=1.0)


class SparseTrainingConfig(BaseModel):
    """Dynamic sparse training; ``training`` is the usual loop's configuration (the paper's MNIST settings:
    SGD with momentum 0.9, learning rate 0.01, batch 64)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["unstructured", "structured"] = "unstructured"
    alpha: PositiveFloat = 5e-4  # weight of sum(exp(-t)); the starting value when a controller adapts it
    reset_below: float = Field(0.01, ge=0.0, lt=1.0)  # a layer keeping at most this share gets thresholds 0
    controller: ControllerConfig | None = None
    training: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            epochs=20, batch_size=64, learning_rate=0.01, schedule="constant", nesterov=False, weight_decay=0.0
        )
    )


class SparsityController:
    """A proportional controller on the regulariser: alpha = max_alpha x clip((kept - target) / band, -1, 1).

    Above the target the regulariser raises the thresholds (the paper's direction); below it the sign turns and
    it lowers them, so weights come back; the closer to the target, the gentler. Thresholds are kept >= 0.
    With ``ramp`` > 0 the target itself moves: ``target(p) = t + (1 - t) (1 - p / ramp)^3`` at training progress
    ``p`` (Zhu & Gupta's gradual schedule), then stays at ``t``, so the masks are not fixed while the weights are
    still those of the first steps."""

    def __init__(self, cfg: ControllerConfig) -> None:
        self.cfg = cfg
        self.alpha = cfg.max_alpha

    def target(self, progress: float) -> float:
        """The share to keep at ``progress`` (0 at the first step, 1 at the last) of the training."""
        final = self.cfg.target_kept
        if self.cfg.ramp <= 0.0 or progress >= self.cfg.ramp:
            return final
        return final + (1.0 - final) * (1.0 - progress / self.cfg.ramp) ** 3

    def update(self, kept: float, progress: float = 1.0) -> None:
        error = (kept - self.target(progress)) / self.cfg.band
        self.alpha = self.cfg.max_alpha * max(-1.0, min(1.0, error))


@dataclass
class SparseTrainingResult:
    """What dynamic sparse training made."""

    model: nn.Module  # unstructured: pruned weights are zeros; structured: the dense weights (mask in unit_mask)
    history: dict[str, list[float] | float]  # per epoch: val_accuracy, train_loss, kept_share, alpha, per layer
    per_layer: list[dict[str, object]]  # final: layer, kept, total, kept_share, mean_threshold
    weight_masks: dict[str, torch.Tensor] = field(default_factory=dict)  # unstructured: layer -> bool (weight shape)
    unit_mask: np.ndarray | None = None  # structured: chromosome (num_bits,), repaired (>= 1 unit per group)
    resets: int = 0  # threshold resets (layers found at or below reset_below)


def train_sparse(
    model: nn.Module,
    train_split: dict[str, torch.Tensor],
    validation_split: dict[str, torch.Tensor] | None,
    cfg: SparseTrainingConfig,
    device: torch.device,
    seed: int,
    loss_weights: list[float] | None = None,
) -> SparseTrainingResult:
    """Dynamic sparse training of ``model`` (modified in place; any network the adapter serves, exits included).

    Raises:
        TrainingDivergedError: the loss became NaN/inf (the training loop's clear error).
    """
    model.to(device)
    if cfg.mode == "structured":
        layout = build_layout(model, input_shape(model))
        thresholds: UnstructuredThresholds | StructuredThresholds = StructuredThresholds(model, layout)
    else:
        thresholds = UnstructuredThresholds(model)
    controller = SparsityController(cfg.controller) if cfg.controller else None
    resets = []

    def alpha() -> float:
        return controller.alpha if controller else cfg.alpha

    def after_step(step: int, total_steps: int) -> None:
        resets.extend(thresholds.reset(cfg.reset_below))
        if controller is not None:
            with torch.no_grad():
                for t in thresholds.thresholds():
                    t.clamp_(min=0.0)
            if step % controller.cfg.every == 0:
                controller.update(thresholds.kept_share(), step / total_steps)

    def after_epoch(_epoch: int) -> dict[str, float]:
        values = {"kept_share": thresholds.kept_share(), "alpha": alpha()}
        for name, (kept, total) in thresholds.kept().items():
            values[f"kept.{name}"] = kept / total
        for name, t in zip(thresholds.kept(), thresholds.thresholds(), strict=True):
            values[f"threshold.{name}"] = float(t.detach().mean())
        return values

    extras = TrainingExtras(
        penalty=lambda: alpha() * thresholds.penalty(),
        after_step=after_step,
        after_epoch=after_epoch,
        no_weight_decay=tuple(thresholds.thresholds()),
        parameters=tuple(thresholds.thresholds()),  # structured thresholds are not the model's parameters
    )
    history = train(
        model, train_split, validation_split, cfg.training, device, seed, f"dst[{cfg.mode}]", loss_weights, extras
    )
    per_layer = [
        {
            "layer": name,
            "kept": kept,
            "total": total,
            "kept_share": kept / total,
            "mean_threshold": float(t.detach().mean()),
        }
        for (name, (kept, total)), t in zip(thresholds.kept().items(), thresholds.thresholds(), strict=True)
    ]
    result = SparseTrainingResult(model, history, per_layer, resets=len(resets))
    if isinstance(thresholds, StructuredThresholds):
        result.unit_mask = thresholds.layout.repair(thresholds.chromosome()[None])[0]
    else:
        result.weight_masks = thresholds.binary_masks()
    thresholds.remove()  # before the move: an LSTM re-reads its parametrized weights while its tensors move
    result.model = model.cpu().eval()
    return result


@torch.no_grad()
def nonzero_flops(model: nn.Module) -> dict[str, float]:
    """FLOPs of one sample as a sparse kernel would count them (only non-zero weights multiply), per weight
    matrix (``sparse_weights``' names) and in ``total``. A conv/linear layer counts what torch's FLOP counter
    counts, times its share of non-zero weights; an LSTM gate matrix 2 FLOPs per non-zero weight per step (the
    layout's analytic count; the gates' element-wise work is left out, as there)."""
    names = {m: n for n, m in model.named_modules()}
    shape = input_shape(model)
    was_training = model.training
    model.eval()
    per_layer = flops_per_layer(model, torch.zeros(1, *shape, device=next(model.parameters()).device))
    model.train(was_training)
    out = {names[m]: flops * float((m.weight != 0).float().mean()) for m, flops in per_layer.items()}
    for name, lstm in lstm_modules(model):
        steps = lstm_steps(model, name, shape)
        for attribute in lstm._flat_weights_names:
            if attribute.startswith("weight_"):
                out[f"{name}.{attribute}"] = 2.0 * steps * int((getattr(lstm, attribute) != 0).sum())
    out["total"] = sum(out.values())
    return out


def weight_sparsity(model: nn.Module) -> dict[str, float]:
    """Share of zero weights per masked weight matrix (``sparse_weights``: conv/linear weights, LSTM gate
    matrices) and over all of them (``total``)."""
    weights = {n: getattr(m, a) for n, (m, a) in sparse_weights(model).items()}
    zeros = {n: int((w == 0).sum()) for n, w in weights.items()}
    out = {n: zeros[n] / weights[n].numel() for n in weights}
    out["total"] = sum(zeros.values()) / sum(w.numel() for w in weights.values())
    return out
