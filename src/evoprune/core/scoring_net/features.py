"""Per-unit features the Scoring Net reads: one row per chromosome bit, ``FEATURE_NAMES`` columns.

Unit-level (z-scored within the unit's group, so every layer's units are on one scale; std 0 -> 0):
    weight_l1, weight_l2   norms of the unit's row of its root layer (``modules[group.name].weight``)
    group_l1               Torch-Pruning's group L1 (``importance.GroupL1``): the unit's filter and every coupled
                           slice, its consumers' input weights included (how much the next layers use it)
    bn_gamma               mean |gamma| over the BatchNorms among the group's mask modules (0 without one)
    mean_activation        mean of relu(a) over the calibration batch (and positions), a = the output of
                           the group's mask modules (averaged over them: a residual group has several)
    apoz                   share of a <= 0 (Average Percentage of Zeros after ReLU)
    taylor                 first-order Taylor |a * dL/da| (Molchanov et al. 2017): per sample, |mean over
                           positions of a * dL/da| summed over the mask modules, averaged over samples; L is
                           the cross-entropy summed over every exit (a multi-exit model returns a list)
Layer-level (the same for all units of a group, not z-scored):
    depth                  group index / (number of groups - 1) (0 for a single group)
    flops_share            share of the dense FLOPs that depend on the group: 1 - FLOPs(mask without the
                           group) / dense FLOPs, from ``layout.cost`` (its layer's outputs and its consumers' inputs)
    log_width              log(units in the group)
    budget                 the target FLOPs ratio (``at_budget`` replaces it without recomputing the rest)

Change ``FEATURE_VERSION`` whenever a feature's definition changes: saved Scoring Nets then refuse to load.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evoprune.core.data import draw_samples
from evoprune.core.importance import GroupL1
from evoprune.core.models.adapter import input_shape
from evoprune.core.scoring_net.gates import check_budget, check_gateable
from evoprune.core.train import as_exit_list
from evoprune.core.units import ChromosomeLayout

UNIT_FEATURE_NAMES: tuple[str, ...] = (
    "weight_l1",
    "weight_l2",
    "group_l1",
    "bn_gamma",
    "mean_activation",
    "apoz",
    "taylor",
)
LAYER_FEATURE_NAMES: tuple[str, ...] = ("depth", "flops_share", "log_width", "budget")
FEATURE_NAMES: tuple[str, ...] = UNIT_FEATURE_NAMES + LAYER_FEATURE_NAMES
FEATURE_VERSION = "evoprune.scoring_net.features/2"  # /2: group_l1 added
BUDGET_COLUMN = FEATURE_NAMES.index("budget")

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def at_budget(features: torch.Tensor, budget: float) -> torch.Tensor:
    """A copy of ``features`` (num_bits, F) whose budget column is ``budget``."""
    out = features.clone()
    out[:, BUDGET_COLUMN] = check_budget(budget)
    return out


def group_flops_share(layout: ChromosomeLayout) -> np.ndarray:
    """(num_groups,) share of the dense FLOPs that removing each whole group would save (every layer whose
    outputs or inputs it controls)."""
    masks = np.ones((len(layout.groups), layout.num_bits), dtype=bool)
    for i, g in enumerate(layout.groups):
        masks[i, g.offset : g.offset + g.size] = False
    return 1.0 - layout.flops_ratio(masks)


def _zscore(x: torch.Tensor) -> torch.Tensor:
    """Columns of (size, k) standardised (population std); a constant column becomes 0."""
    std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.zeros(x.shape[1], dtype=x.dtype)
    centred = x - x.mean(0)
    return torch.where(std > 1e-12, centred / std.clamp_min(1e-12), torch.zeros_like(centred))


def _activation_statistics(
    model: nn.Module, layout: ChromosomeLayout, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """(num_bits, 3) mean relu activation, APoZ and Taylor of every unit on the calibration batch (float64)."""
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        for g in layout.groups
        for name in g.mask_modules
    ]
    stats = torch.zeros(layout.num_bits, 3, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for first in range(0, images.shape[0], batch_size):
                x = images[first : first + batch_size].to(device).requires_grad_(True)  # a graph even if frozen
                y = labels[first : first + batch_size].to(device)
                outputs.clear()
                loss = sum(F.cross_entropy(z, y, reduction="sum") for z in as_exit_list(model(x)))
                names = list(outputs)
                found = torch.autograd.grad(loss, [outputs[n] for n in names], allow_unused=True)
                grads = {n: torch.zeros_like(outputs[n]) if d is None else d for n, d in zip(names, found, strict=True)}
                for g in layout.groups:
                    stats[g.offset : g.offset + g.size] += _group_statistics(g.name, g.mask_modules, outputs, grads)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return stats / images.shape[0]


def _group_statistics(
    group: str, names: tuple[str, ...], outputs: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]
) -> torch.Tensor:
    """(size, 3) sums over one batch's samples of mean relu activation, share of a <= 0, and Taylor."""
    activation, zeros, taylor = 0.0, 0.0, 0.0
    for name in names:
        a, da = outputs[name].detach(), grads[name]
        a, da = a.reshape(a.shape[0], a.shape[1], -1), da.reshape(a.shape[0], a.shape[1], -1)  # (B, C, positions)
        activation = activation + a.relu().mean(2).sum(0) / len(names)
        zeros = zeros + (a <= 0).double().mean(2).sum(0) / len(names)
        taylor = taylor + (a * da).mean(2)  # (B, C): summed over the mask modules, per sample
    if not isinstance(taylor, torch.Tensor):
        raise AssertionError(f"group '{group}' has no mask module (check_gateable lets none through)")
    return torch.stack([activation.double(), zeros.double(), taylor.abs().sum(0).double()], 1).cpu()


def _weight_statistics(model: nn.Module, layout: ChromosomeLayout) -> torch.Tensor:
    """(num_bits, 4) L1 and L2 norms of each unit's root-layer row, its group L1 and mean |gamma| of its
    BatchNorms."""
    modules = dict(model.named_modules())
    stats = torch.zeros(layout.num_bits, 4, dtype=torch.float64)
    traceable = copy.deepcopy(model).requires_grad_(True)  # torch-pruning traces autograd (a frozen copy has none)
    stats[:, 2] = torch.as_tensor(GroupL1(input_shape(model))(traceable, layout), dtype=torch.float64)
    for g in layout.groups:
        rows = modules[g.name].weight.detach().double().cpu().reshape(g.size, -1)
        norms = [modules[n] for n in g.mask_modules if isinstance(modules[n], _NORMS) and modules[n].affine]
        gamma = sum(m.weight.detach().double().cpu().abs() for m in norms) / len(norms) if norms else 0.0
        stats[g.offset : g.offset + g.size, 0] = rows.abs().sum(1)
        stats[g.offset : g.offset + g.size, 1] = rows.pow(2).sum(1).sqrt()
        stats[g.offset : g.offset + g.size, 3] = gamma
    return stats


def unit_features(
    model: nn.Module,
    layout: ChromosomeLayout,
    calibration_images: torch.Tensor,
    labels: torch.Tensor,
    budget: float,
    batch_size: int = 256,
) -> torch.Tensor:
    """The features of every unit of ``model`` (module docstring), ``FEATURE_NAMES`` order.

    Args:
        model: the trained network (not modified: eval mode during the pass, its mode restored, no .grad set).
        layout: its chromosome layout (``units.build_layout``); LSTM layouts are refused.
        calibration_images: (N, C, H, W) float images (``data.images_to_float``); labels: (N,) int64.
        budget: the target FLOPs ratio in (0, 1].
        batch_size: images per forward/backward pass.

    Returns:
        (num_bits, len(FEATURE_NAMES)) float32 tensor on the CPU, finite.
    """
    check_gateable(layout)
    budget = check_budget(budget)
    if calibration_images.dim() != 4 or calibration_images.shape[0] != labels.shape[0] or not len(labels):
        raise ValueError(
            "calibration_images must be float (N, C, H, W) with one label each (N >= 1), got images "
            f"{tuple(calibration_images.shape)} and labels {tuple(labels.shape)}; convert uint8 images with "
            "evoprune.core.data.images_to_float."
        )
    raw = torch.cat(
        [
            _weight_statistics(model, layout),
            _activation_statistics(model, layout, calibration_images, labels, batch_size),
        ],
        1,
    )  # (num_bits, 7) in UNIT_FEATURE_NAMES order
    shares = group_flops_share(layout)
    last = max(len(layout.groups) - 1, 1)
    out = torch.zeros(layout.num_bits, len(FEATURE_NAMES), dtype=torch.float64)
    for i, g in enumerate(layout.groups):
        rows = slice(g.offset, g.offset + g.size)
        out[rows, : len(UNIT_FEATURE_NAMES)] = _zscore(raw[rows])
        out[rows, len(UNIT_FEATURE_NAMES) :] = torch.tensor([i / last, shares[i], math.log(g.size), budget])
    bad = [FEATURE_NAMES[j] for j in range(out.shape[1]) if not torch.isfinite(out[:, j]).all()]
    if bad:
        raise ValueError(f"features {bad} are not finite; check the model's weights and the calibration images.")
    return out.float()


def split_features(
    model: nn.Module, layout: ChromosomeLayout, split: dict[str, torch.Tensor], images: int, seed: int
) -> torch.Tensor:
    """``unit_features`` of ``model`` on ``images`` images drawn from ``split`` with ``seed`` (uint8 images as the
    pipelines hold them; budget column 0.5, replaced by ``at_budget`` / ``mask_at_budget``)."""
    x, labels = draw_samples(split, images, seed, "the Scoring Net's features")
    device = next(model.parameters()).device
    return unit_features(model, layout, x.to(device), labels.to(device), 0.5)
