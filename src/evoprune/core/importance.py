"""Unit importance: one score per chromosome bit (higher = more important, kept first).

Every criterion is a callable ``(model, layout) -> (num_bits,) float array`` that the caller passes in,
as Torch-Pruning passes its ``Importance`` to a pruner:

``own_filter_l1``
    L1 norm of each unit's own outgoing weights (its row of the root layer, nothing else). Ranked within
    layers, it drives the mask search's roulette-wheel sampling and mutation and the repair.
``GroupL1``
    Torch-Pruning's ``GroupMagnitudeImportance(p=1)``: the L1 norm over the unit's whole pruning group (its
    filter and every coupled slice, such as its BatchNorm and its consumers' input weights), normalised per
    group as Torch-Pruning's global pruner does. The ``l1`` baseline and the search's seed masks.
``GroupRandom``
    Torch-Pruning's ``RandomImportance``, drawn from torch's global generator seeded with ``seed``. The
    ``random`` baseline.

The two L1 criteria agree on the obvious case (a tiny filter) but not in general; each call site names the
one it uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from evoprune.core.lstm import has_lstm, lstm_unit_l1
from evoprune.core.units import ChromosomeLayout, dependency_graph

UnitImportance = Callable[[nn.Module, ChromosomeLayout], np.ndarray]

BaselineCriterion = Literal["l1", "random"]
BASELINE_CRITERIA: tuple[str, ...] = ("l1", "random")


def own_filter_l1(model: nn.Module, layout: ChromosomeLayout) -> np.ndarray:
    """L1 norm of each unit's outgoing weights (its row of the root layer), per bit."""
    if has_lstm(model):
        return lstm_unit_l1(model, layout, coupled=False)
    modules = dict(model.named_modules())
    out = np.zeros(layout.num_bits)
    for g in layout.groups:
        weight = modules[g.name].weight.detach().float().cpu()
        out[g.offset : g.offset + g.size] = weight.abs().reshape(g.size, -1).sum(1).numpy()
    return out


def group_scores(
    model: nn.Module, layout: ChromosomeLayout, input_shape: tuple[int, ...], importance: tp.importance.Importance
) -> np.ndarray:
    """One score per bit from a Torch-Pruning ``importance`` applied to each layout group's pruning group
    (one dependency-graph build; ``model`` is put in eval mode)."""
    model = model.eval()
    graph = dependency_graph(model, input_shape)
    modules = dict(model.named_modules())
    scores = np.zeros(layout.num_bits)
    for g in layout.groups:
        root = modules[g.name]
        group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, list(range(g.size)))
        scores[g.offset : g.offset + g.size] = importance(group).detach().float().cpu().numpy()
    return scores


@dataclass(frozen=True)
class GroupL1:
    """L1 norm over each unit's pruning group (Torch-Pruning's ``GroupMagnitudeImportance(p=1)``)."""

    input_shape: tuple[int, ...]  # one sample (C, H, W), for the dependency graph's example input

    def __call__(self, model: nn.Module, layout: ChromosomeLayout) -> np.ndarray:
        if has_lstm(model):
            return lstm_unit_l1(model, layout, coupled=True)
        return group_scores(model, layout, self.input_shape, tp.importance.GroupMagnitudeImportance(p=1))


@dataclass(frozen=True)
class GroupRandom:
    """Random scores (Torch-Pruning's ``RandomImportance``), reproducible through ``seed``."""

    input_shape: tuple[int, ...]
    seed: int

    def __call__(self, model: nn.Module, layout: ChromosomeLayout) -> np.ndarray:
        torch.manual_seed(self.seed)  # RandomImportance draws from torch's global generator
        if has_lstm(model):
            return torch.rand(layout.num_bits).numpy().astype(float)
        return group_scores(model, layout, self.input_shape, tp.importance.RandomImportance())


def baseline_criterion(name: str, input_shape: tuple[int, ...], seed: int) -> UnitImportance:
    """The criterion a baseline is named by in ``baselines.criteria`` (``l1``: group L1, ``random``)."""
    if name == "l1":
        return GroupL1(tuple(input_shape))
    if name == "random":
        return GroupRandom(tuple(input_shape), seed)
    raise ValueError(
        f"unknown baseline criterion '{name}'; choose from {list(BASELINE_CRITERIA)} "
        "(baselines.criteria in conf/base/parameters_baselines.yml)"
    )
