"""Pruning baselines at a FLOPs budget: global L1-norm filter pruning and random pruning.

Unit scores come from torch-pruning's importance criteria (``GroupMagnitudeImportance(p=1)``: the L1
norm over each pruning group, i.e. the unit's own filter and every coupled slice such as its BatchNorm
and its consumers' input weights, normalised per group as torch-pruning's global pruner does;
``RandomImportance``). Units are then removed globally, least important first, until the analytic
FLOPs of the mask fit the budget, never emptying a layer (or pruning more of it than
``max_pruning_ratio``). The result is a mask in the same chromosome layout as the searched members, so
baselines go through the same physical pruning and fine-tuning.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from evoprune.core.units import ChromosomeLayout, dependency_graph

Criterion = Literal["l1", "random"]
CRITERIA: tuple[str, ...] = ("l1", "random")


def _importance(criterion: str) -> tp.importance.Importance:
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "random":
        return tp.importance.RandomImportance()
    raise ValueError(f"unknown baseline criterion '{criterion}'; choose from {list(CRITERIA)}")


def unit_scores(
    model: nn.Module, layout: ChromosomeLayout, input_shape: tuple[int, ...], criterion: str, seed: int
) -> np.ndarray:
    """One score per bit of ``layout`` from torch-pruning's ``criterion`` importance (higher = keep)."""
    importance = _importance(criterion)
    torch.manual_seed(seed)  # RandomImportance draws from torch's global generator
    model = model.eval()
    graph = dependency_graph(model, input_shape)
    modules = dict(model.named_modules())
    scores = np.zeros(layout.num_bits)
    for g in layout.groups:
        root = modules[g.name]
        group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, list(range(g.size)))
        scores[g.offset : g.offset + g.size] = importance(group).detach().float().cpu().numpy()
    return scores


def mask_within_budget(
    layout: ChromosomeLayout, scores: np.ndarray, flops_budget: float, max_pruning_ratio: float = 1.0
) -> np.ndarray:
    """The mask that removes units globally in ascending ``scores`` (never a layer's last unit) until its
    FLOPs are at most ``flops_budget`` (a ratio of the dense FLOPs), then gives back the best removed
    units that still fit (one conv channel can hold a tenth of the FLOPs, so the first fitting mask can
    undershoot the budget by far). No layer loses more than ``max_pruning_ratio`` of its units. The
    sparsest mask if none fits."""
    if not 0.0 < flops_budget <= 1.0:
        raise ValueError(f"flops_budget is a ratio of the dense FLOPs in (0, 1], got {flops_budget}")
    mask = np.ones(layout.num_bits, dtype=bool)
    left = {g.name: g.size for g in layout.groups}
    floor = dict(zip(left, layout.min_units(max_pruning_ratio), strict=True))
    group_of = np.empty(layout.num_bits, dtype=object)
    for g in layout.groups:
        group_of[g.offset : g.offset + g.size] = g.name
    sequence = [mask.copy()]
    for bit in np.argsort(scores, kind="stable"):
        if left[group_of[bit]] > floor[group_of[bit]]:
            left[group_of[bit]] -= 1
            mask[bit] = False
            sequence.append(mask.copy())
    ratios = layout.cost(np.stack(sequence))["flops"] / layout.dense_flops
    fitting = np.flatnonzero(ratios <= flops_budget + 1e-12)
    if not len(fitting):
        return sequence[-1]
    mask = sequence[int(fitting[0])].copy()
    for bit in np.flatnonzero(~mask)[np.argsort(-scores[~mask], kind="stable")]:
        mask[bit] = True
        if layout.cost(mask[None])["flops"][0] / layout.dense_flops > flops_budget + 1e-12:
            mask[bit] = False
    return mask
