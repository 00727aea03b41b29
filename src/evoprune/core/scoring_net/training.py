"""Staged training of the Scoring Net on a frozen network.

Setup: a frozen copy of the network (the caller's model is never modified), unit features computed once on
``feature_images`` calibration images (their budget column is replaced at every step), and one seed that drives
``torch.manual_seed`` (the net's initial weights) and a NumPy Generator (budgets, batches, calibration images).

Every step of a stage: draw a budget b ~ U(budget_range) and a batch; scores s = net(features at b); gates
g = sigmoid(s / temperature), applied to every unit's activation by forward hooks (``gates.unit_gates``);
    loss = task loss + flops_weight * relu(SoftFlops(g) - b)^2
with the task loss ``cross_entropy`` (labels) or ``distillation`` (KL to the dense network's logits at
``distillation_temperature``, times T^2), summed over exits. ``straight_through``: the forward uses the hard mask
``mask_within_budget(scores, b)`` (exactly what ``mask_at_budget`` deploys) and the backward the sigmoid's
gradient (g_hard + g - g.detach()); the FLOPs penalty stays on the soft gates.

The two stage kinds differ only by their defaults:
``gates``   soft gates, cross-entropy, FLOPs penalty (flops_weight 10): learn which units matter at a budget.
``refine``  straight-through hard masks at the budget, distillation to the dense logits, no penalty (the hard
            mask meets the budget by construction): tune the ranking for the masks actually deployed.
``stages`` is a list, so one stage or both ("single-stage vs stage-wise") are one parameter apart. After every
stage, with a validation split, the hard masks at ``eval_budgets`` are scored after adaptive BN (BatchNorm
statistics re-estimated on ``calibration_batches`` training batches, on a copy).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
)
from torch import nn

from evoprune.core.baselines import mask_within_budget
from evoprune.core.data import images_to_float
from evoprune.core.models.adapter import input_shape
from evoprune.core.scoring_net.features import FEATURE_NAMES, UNIT_FEATURE_NAMES, at_budget, unit_features
from evoprune.core.scoring_net.gates import SoftFlops, check_budget, check_gateable, hard_mask_accuracy, unit_gates
from evoprune.core.scoring_net.model import ScoringNet, masks_at_budgets
from evoprune.core.scoring_net.sources import ExtraSourcesConfig, extra_source_networks
from evoprune.core.train import TrainingDivergedError, as_exit_list
from evoprune.core.units import ChromosomeLayout, build_layout


class _StageConfig(BaseModel):
    """What every stage has; the subclasses set the defaults of one stage kind."""

    model_config = ConfigDict(extra="forbid")

    steps: PositiveInt = 200  # optimiser steps
    batch_size: PositiveInt = 64  # images per step
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: PositiveFloat = 1e-3
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd only
    budget_range: tuple[float, float] = (0.2, 0.8)  # FLOPs ratios; each step's budget ~ U(low, high)
    temperature: PositiveFloat = 1.0  # gates = sigmoid(score / temperature)
    loss: Literal["cross_entropy", "distillation"] = "cross_entropy"
    distillation_temperature: PositiveFloat = 4.0  # softens both logits in the KL (distillation only)
    flops_weight: NonNegativeFloat = 10.0  # lambda of relu(expected FLOPs ratio - budget)^2
    straight_through: bool = False  # hard mask at the budget forward, sigmoid gradient backward
    # each step, each unit feature (weight norms ... taylor) is zeroed (its layer mean) with this probability, so the
    # net cannot lean on one statistic alone (one that may not mean the same on another dataset)
    feature_dropout: float = Field(0.5, ge=0.0, lt=1.0)

    @field_validator("budget_range")
    @classmethod
    def _budgets_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"`budget_range` must satisfy 0 < low <= high <= 1 (FLOPs ratios), got {list(value)}")
        return value


class GatesStageConfig(_StageConfig):
    """Soft gates with a FLOPs penalty on the frozen network."""

    stage: Literal["gates"] = "gates"


class RefineStageConfig(_StageConfig):
    """Straight-through hard masks at the budget, distilled from the dense network."""

    stage: Literal["refine"] = "refine"
    steps: PositiveInt = 100
    loss: Literal["cross_entropy", "distillation"] = "distillation"
    flops_weight: NonNegativeFloat = 0.0
    straight_through: bool = True


StageConfig = Annotated[GatesStageConfig | RefineStageConfig, Field(discriminator="stage")]


class ScoringNetConfig(BaseModel):
    """Training of a Scoring Net; ``stages`` run in order."""

    model_config = ConfigDict(extra="forbid")

    hidden: tuple[PositiveInt, ...] = (32, 32)  # MLP widths
    l1_prior: NonNegativeFloat = 1.0  # score = MLP + l1_prior * z(group_l1) (ScoringNet); 0: the MLP alone
    # FEATURE_NAMES zeroed before the MLP; unit features that are 0 on every source network are added (bn_gamma
    # of a network without BatchNorm: its weights would never train, yet read a VGG's gammas after a transfer)
    ignored_features: list[str] = Field(default_factory=list)
    # networks of the run's architecture trained here, the steps cycling through them and the run's (sources.py)
    extra_sources: ExtraSourcesConfig = Field(default_factory=ExtraSourcesConfig)
    stages: list[StageConfig] = Field(default_factory=lambda: [GatesStageConfig(), RefineStageConfig()], min_length=1)
    feature_images: PositiveInt = 256  # calibration images for the unit features (random training images)
    max_pruning_ratio: float = Field(1.0, gt=0.0, le=1.0)  # no layer loses more of its units (hard masks)
    eval_budgets: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75])  # hard masks scored per stage
    calibration_batches: NonNegativeInt = 4  # training batches for adaptive BN before scoring a hard mask
    eval_batch_size: PositiveInt = 1000

    @field_validator("ignored_features")
    @classmethod
    def _ignored_features_exist(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(FEATURE_NAMES))
        if unknown:
            raise ValueError(
                f"`scoring_net.training.ignored_features` {unknown} are not features; allowed: {list(FEATURE_NAMES)}"
            )
        return value

    @field_validator("eval_budgets")
    @classmethod
    def _eval_budgets_in_range(cls, value: list[float]) -> list[float]:
        for b in value:
            check_budget(b, "scoring_net.eval_budgets")
        return value


@dataclass
class _Source:
    """One frozen network the net trains on: its layout, features (num_bits, F) and training images."""

    frozen: nn.Module
    layout: ChromosomeLayout
    features: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class ScoringNetResult:
    """A trained Scoring Net, the features it was trained on and the history of its stages."""

    net: ScoringNet
    features: torch.Tensor  # (num_bits, F) on the CPU; ``mask_at_budget`` sets the budget column
    layout: ChromosomeLayout
    history: dict[str, Any] = field(default_factory=dict)  # feature_seconds, stages: [per-stage dict]


def _optimizer(stage: _StageConfig, params) -> torch.optim.Optimizer:
    if stage.optimizer == "sgd":
        return torch.optim.SGD(params, lr=stage.learning_rate, momentum=stage.momentum)
    return torch.optim.Adam(params, lr=stage.learning_rate)


def task_loss(
    output: torch.Tensor | list[torch.Tensor],
    labels: torch.Tensor,
    teacher: list[torch.Tensor] | None,
    temperature: float,
) -> torch.Tensor:
    """Cross-entropy to ``labels`` (``teacher`` None) or KL(teacher || student) at ``temperature`` times T^2,
    summed over exits."""
    logits = as_exit_list(output)
    if teacher is None:
        return sum(F.cross_entropy(z, labels) for z in logits)
    t = temperature
    return sum(
        F.kl_div(F.log_softmax(z / t, -1), F.log_softmax(q / t, -1), log_target=True, reduction="batchmean") * t * t
        for z, q in zip(logits, teacher, strict=True)
    )


def _run_stage(
    stage: _StageConfig,
    net: ScoringNet,
    sources: list[_Source],
    rng: np.random.Generator,
    max_pruning_ratio: float,
) -> dict[str, Any]:
    """One stage's optimisation loop (step k trains on ``sources[k % len(sources)]``); its per-step history."""
    soft_flops = [SoftFlops(s.layout, s.features.device) for s in sources]
    optimizer = _optimizer(stage, net.parameters())
    record: dict[str, Any] = {
        "stage": stage.stage,
        "loss": [],
        "task_loss": [],
        "expected_flops_ratio": [],
        "budget": [],
    }
    net.train()
    for step in range(stage.steps):
        source, flops_of = sources[step % len(sources)], soft_flops[step % len(sources)]
        frozen, layout, images, labels = source.frozen, source.layout, source.images, source.labels
        budget = float(rng.uniform(*stage.budget_range))
        idx = torch.as_tensor(rng.choice(images.shape[0], min(stage.batch_size, images.shape[0]), replace=False))
        x, y = images_to_float(images[idx]), labels[idx]
        keep = None
        if stage.feature_dropout:
            keep = torch.as_tensor(rng.random(len(UNIT_FEATURE_NAMES)) >= stage.feature_dropout)
        scores = net(at_budget(source.features, budget), keep)  # (num_bits,)
        soft = torch.sigmoid(scores / stage.temperature)
        gates = soft
        if stage.straight_through:
            hard = mask_within_budget(layout, scores.detach().double().cpu().numpy(), budget, max_pruning_ratio)
            gates = torch.as_tensor(hard, dtype=soft.dtype, device=soft.device) + soft - soft.detach()
        teacher = None
        if stage.loss == "distillation":
            with torch.no_grad():
                teacher = as_exit_list(frozen(x))
        with unit_gates(frozen, layout, gates):
            task = task_loss(frozen(x), y, teacher, stage.distillation_temperature)
        expected = flops_of(soft)
        loss = task + stage.flops_weight * torch.relu(expected - budget).pow(2).to(task.dtype)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"Scoring Net stage '{stage.stage}': loss is {loss.item()} at step {step} "
                f"(lr {stage.learning_rate:.3g}). Lower `learning_rate` or raise `temperature`."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record["loss"].append(loss.item())
        record["task_loss"].append(task.item())
        record["expected_flops_ratio"].append(expected.item())
        record["budget"].append(budget)
    net.eval()
    return record


def _source(
    model: nn.Module,
    split: dict[str, torch.Tensor],
    layout: ChromosomeLayout | None,
    cfg: ScoringNetConfig,
    rng: np.random.Generator,
    device: torch.device,
) -> _Source:
    """A frozen copy of ``model`` on ``device`` with its features on ``cfg.feature_images`` random images."""
    layout = layout if layout is not None else build_layout(model, input_shape(model))
    check_gateable(layout)
    if not split["labels"].numel():
        raise ValueError("the training split is empty; the Scoring Net needs images to compute features and losses.")
    frozen = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    images, labels = split["images"].to(device), split["labels"].to(device)
    pick = torch.as_tensor(rng.choice(images.shape[0], min(cfg.feature_images, images.shape[0]), replace=False))
    mid_budget = float(np.mean([np.mean(s.budget_range) for s in cfg.stages]))  # replaced at every use
    features = unit_features(frozen, layout, images_to_float(images[pick]), labels[pick], mid_budget).to(device)
    return _Source(frozen, layout, features, images, labels)


def train_scoring_net(
    model: nn.Module,
    train_split: dict[str, torch.Tensor],
    cfg: ScoringNetConfig,
    seed: int,
    validation_split: dict[str, torch.Tensor] | None = None,
    layout: ChromosomeLayout | None = None,
    device: torch.device | str = "cpu",
    initial: ScoringNet | None = None,
    extra_sources: Sequence[tuple[nn.Module, dict[str, torch.Tensor]]] = (),
) -> ScoringNetResult:
    """Train a Scoring Net for ``model`` in ``cfg.stages`` order.

    Args:
        model: the trained network (not modified: a frozen copy is used).
        train_split / validation_split: ``images`` (N, H, W) or (N, C, H, W) uint8 and ``labels`` (N,) int64.
        cfg: the stages and their losses/optimisers (``ScoringNetConfig``).
        seed: drives the net's initial weights, budgets, batches and calibration images.
        layout: the model's chromosome layout (built from ``input_shape(model)`` when None).
        device: where the network, the net and the data live.
        initial: start from a copy of this trained net (adapting it to ``model``, e.g. after a transfer) instead
            of fresh weights; its widths win over ``cfg.hidden``. ``initial`` itself is not modified.
        extra_sources: more (network, training split) pairs; the steps cycle through ``model`` and these (one net
            for several networks); the validation split and the returned features are ``model``'s.

    Returns:
        The net (eval mode, on ``device``), its features and the history: ``feature_seconds`` and ``stages``, one
        dict per stage with ``stage``, ``seconds`` (wall time of its loop), per-step ``loss``, ``task_loss``,
        ``expected_flops_ratio`` and ``budget``, and with a validation split ``accuracy_at_budget``
        {budget: final-exit accuracy of the hard mask after adaptive BN}, ``eval_flops_ratio`` and
        ``eval_seconds``.

    Raises:
        ValueError: no prunable unit, an LSTM model, or an empty split.
        TrainingDivergedError: a loss became NaN/inf (names the stage, step and learning rate).
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    eval_rng = np.random.default_rng([seed, 1])  # evaluation never shifts the training draws
    start = time.perf_counter()
    sources = [_source(model, train_split, layout, cfg, rng, device)]
    sources += [_source(m, split, None, cfg, rng, device) for m, split in extra_sources]
    history: dict[str, Any] = {"feature_seconds": time.perf_counter() - start, "stages": []}
    main = sources[0]

    if initial is not None:
        net = copy.deepcopy(initial)
    else:  # a feature that is 0 on every source (bn_gamma without BatchNorm) would meet untrained weights elsewhere
        dead = [n for j, n in enumerate(UNIT_FEATURE_NAMES) if not any(s.features[:, j].any() for s in sources)]
        ignored = [*cfg.ignored_features, *(n for n in dead if n not in cfg.ignored_features)]
        net = ScoringNet(len(FEATURE_NAMES), cfg.hidden, cfg.l1_prior, ignored)
    net = net.to(device)
    for stage in cfg.stages:
        start = time.perf_counter()
        record = _run_stage(stage, net, sources, rng, cfg.max_pruning_ratio)
        record["seconds"] = time.perf_counter() - start
        if validation_split is not None and cfg.eval_budgets:
            data = (main.images, main.labels)
            record.update(
                _evaluate(net, main.frozen, main.layout, main.features, validation_split, data, cfg, eval_rng)
            )
        history["stages"].append(record)
    return ScoringNetResult(net.eval(), main.features.cpu(), main.layout, history)


def train_scoring_net_with_sources(
    model: nn.Module,
    train_split: dict[str, torch.Tensor],
    cfg: ScoringNetConfig,
    seed: int,
    validation_split: dict[str, torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> ScoringNetResult:
    """``train_scoring_net`` on ``model`` and on ``cfg.extra_sources.count`` networks of its architecture trained
    here first (``sources.extra_source_networks``, on ``train_split``); ``history["extra_sources_seconds"]`` is
    their training time. ``model`` is checked before anything is trained: a network without a prunable unit or an
    LSTM is refused at once, not after the extra networks have trained."""
    layout = build_layout(model, input_shape(model))
    check_gateable(layout)
    extras, seconds = extra_source_networks(model, train_split, cfg.extra_sources, seed, device)
    result = train_scoring_net(model, train_split, cfg, seed, validation_split, layout, device, extra_sources=extras)
    result.history["extra_sources_seconds"] = seconds
    return result


def _evaluate(
    net: ScoringNet,
    frozen: nn.Module,
    layout: ChromosomeLayout,
    features: torch.Tensor,
    split: dict[str, torch.Tensor],
    train_data: tuple[torch.Tensor, torch.Tensor],
    cfg: ScoringNetConfig,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Hard masks at ``cfg.eval_budgets``: accuracy after adaptive BN and FLOPs ratio."""
    start = time.perf_counter()
    device = features.device
    masks = masks_at_budgets(net, features, layout, cfg.eval_budgets, cfg.max_pruning_ratio)
    images = images_to_float(split["images"].to(device))
    n = train_data[0].shape[0]
    calibration = [
        images_to_float(train_data[0][torch.as_tensor(rng.choice(n, min(cfg.eval_batch_size, n), replace=False))])
        for _ in range(cfg.calibration_batches)
    ]
    accuracy = {
        str(b): hard_mask_accuracy(frozen, layout, m, images, split["labels"], calibration, cfg.eval_batch_size)
        for b, m in zip(cfg.eval_budgets, masks, strict=True)
    }
    ratios = layout.flops_ratio(masks)
    return {
        "accuracy_at_budget": accuracy,
        "eval_flops_ratio": {str(b): float(r) for b, r in zip(cfg.eval_budgets, ratios, strict=True)},
        "eval_seconds": time.perf_counter() - start,
    }


def fit_to_targets(
    net: ScoringNet, features: torch.Tensor, targets: torch.Tensor, steps: int = 300, learning_rate: float = 1e-2
) -> list[float]:
    """Supervised regression of the net's scores on ``targets`` (num_bits,) by mean squared error with Adam, on
    the whole feature matrix at every step (deterministic; e.g. to warm-start the net from a known criterion's
    ranks). Returns the loss per step."""
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    targets = targets.to(features.device, features.dtype)
    net.train()
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(net(features), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    net.eval()
    return losses
