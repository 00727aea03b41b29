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
``GroupTaylor`` / ``GroupHessian`` / ``GroupLAMP``
    Torch-Pruning's ``GroupTaylorImportance`` (|w·∂L/∂w|, Molchanov 2019), ``GroupHessianImportance`` (Optimal
    Brain Damage, w²·diag(H) with the empirical Fisher as diag(H)) and ``LAMPImportance`` (Lee 2021): the
    ``taylor``, ``hessian`` and ``lamp`` baselines. The gradient criteria read a calibration batch (the
    fine-tune loss over every exit); the model is copied, never left with gradients.

The two L1 criteria agree on the obvious case (a tiny filter) but not in general; each call site names the
one it uses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from evoprune.core.data import draw_samples
from evoprune.core.lstm import has_lstm, lstm_unit_l1
from evoprune.core.train import exits_loss
from evoprune.core.units import ChromosomeLayout, dependency_graph

UnitImportance = Callable[[nn.Module, ChromosomeLayout], np.ndarray]

BaselineCriterion = Literal["l1", "random", "taylor", "hessian", "lamp"]
BASELINE_CRITERIA: tuple[str, ...] = ("l1", "random", "taylor", "hessian", "lamp")
Calibration = tuple[torch.Tensor, torch.Tensor]  # inputs and labels the gradient criteria read
FISHER_CHUNK = 64  # samples whose per-sample gradients are held at once


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
    if has_lstm(model):
        raise ValueError(
            "torch-pruning's group criteria do not serve nn.LSTM (its LSTM pruner is broken): "
            "use the l1 or random criterion for LSTM networks"
        )
    model = model.eval()
    graph = dependency_graph(model, input_shape)
    modules = dict(model.named_modules())
    scores = np.zeros(layout.num_bits)
    for g in layout.groups:
        root = modules[g.name]
        group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, list(range(g.size)))
        scores[g.offset : g.offset + g.size] = importance(group).detach().float().cpu().numpy()
    return scores


class GroupCriterion:
    """A Torch-Pruning importance applied to each unit's pruning group. ``prepare`` gives the model the
    importance reads (a copy with gradients for the gradient criteria); ``importance`` a fresh
    ``tp.importance.Importance``. Torch-Pruning's own pruner takes the same pair
    (``evoprune.core.baselines.torch_pruning_global_mask``)."""

    input_shape: tuple[int, ...]  # one sample (C, H, W), for the dependency graph's example input

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model the importance reads: ``model`` itself, or a copy with gradients (gradient criteria)."""
        return model

    def set_gradients(self, model: nn.Module) -> None:
        """Give ``model``'s parameters (in place) the gradients the importance reads; none by default."""

    def importance(self) -> tp.importance.Importance:
        raise NotImplementedError

    def __call__(self, model: nn.Module, layout: ChromosomeLayout) -> np.ndarray:
        return group_scores(self.prepare(model), layout, self.input_shape, self.importance())


@dataclass(frozen=True)
class GroupL1(GroupCriterion):
    """L1 norm over each unit's pruning group (Torch-Pruning's ``GroupMagnitudeImportance(p=1)``)."""

    input_shape: tuple[int, ...]

    def importance(self) -> tp.importance.Importance:
        return tp.importance.GroupMagnitudeImportance(p=1)

    def __call__(self, model: nn.Module, layout: ChromosomeLayout) -> np.ndarray:
        if has_lstm(model):
            return lstm_unit_l1(model, layout, coupled=True)
        return super().__call__(model, layout)


@dataclass(frozen=True)
class GroupRandom(GroupCriterion):
    """Random scores (Torch-Pruning's ``RandomImportance``), reproducible through ``seed``."""

    input_shape: tuple[int, ...]
    seed: int

    def importance(self) -> tp.importance.Importance:
        torch.manual_seed(self.seed)  # RandomImportance draws from torch's global generator
        return tp.importance.RandomImportance()

    def __call__(self, model: nn.Module, layout: ChromosomeLayout) -> np.ndarray:
        if has_lstm(model):
            torch.manual_seed(self.seed)
            return torch.rand(layout.num_bits).numpy().astype(float)
        return super().__call__(model, layout)


@dataclass(frozen=True)
class GroupLAMP(GroupCriterion):
    """Layer-adaptive magnitude scores (Torch-Pruning's ``LAMPImportance(p=2)``)."""

    input_shape: tuple[int, ...]

    def importance(self) -> tp.importance.Importance:
        return tp.importance.LAMPImportance(p=2)


class GradientCriterion(GroupCriterion):
    """A criterion whose importance reads parameter gradients: it scores an eval-mode copy of the model given
    them by ``set_gradients``, so the model itself never holds gradients."""

    def prepare(self, model: nn.Module) -> nn.Module:
        clone = eval_copy(model)
        self.set_gradients(clone)
        return clone


@dataclass(frozen=True, eq=False)
class GroupTaylor(GradientCriterion):
    """First-order Taylor scores (Torch-Pruning's ``GroupTaylorImportance``) from the gradient of the loss of
    every exit on ``calibration``."""

    input_shape: tuple[int, ...]
    calibration: Calibration

    def set_gradients(self, model: nn.Module) -> None:
        set_loss_gradients(model, self.calibration)

    def importance(self) -> tp.importance.Importance:
        return tp.importance.GroupTaylorImportance()


@dataclass(frozen=True, eq=False)
class GroupHessian(GradientCriterion):
    """Optimal Brain Damage scores (Torch-Pruning's ``GroupHessianImportance``): w² times the mean squared
    per-sample gradient on ``calibration`` (the empirical Fisher's diagonal)."""

    input_shape: tuple[int, ...]
    calibration: Calibration

    def set_gradients(self, model: nn.Module) -> None:
        # GroupHessianImportance reads p.grad as diag(H) when nothing was accumulated. Its own accumulate_grad
        # keeps only the last sample (torch-pruning 1.6.1 tests `name in` a dict keyed by parameters), so
        # the squared per-sample gradients are averaged here (vmap).
        set_fisher_diagonal(model, self.calibration)

    def importance(self) -> tp.importance.Importance:
        return tp.importance.GroupHessianImportance()


def set_loss_gradients(model: nn.Module, calibration: Calibration) -> None:
    """Set ``model``'s parameters' ``.grad`` (in place) to the gradient of the loss of every exit
    (cross-entropy, summed over exits) on the calibration batch."""
    model.zero_grad(set_to_none=True)
    inputs, labels = _on(model, calibration)
    exits_loss(model(inputs), labels, None, 0.0).backward()


def set_fisher_diagonal(model: nn.Module, calibration: Calibration) -> None:
    """Set ``model``'s parameters' ``.grad`` (in place) to the mean over the calibration samples of the squared
    per-sample gradient of the loss of every exit (the empirical Fisher's diagonal)."""
    inputs, labels = _on(model, calibration)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def sample_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        output = torch.func.functional_call(model, (p, buffers), (x[None],))
        return exits_loss(output, y[None], None, 0.0)

    per_sample_grads = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))
    squares = {n: torch.zeros_like(p) for n, p in params.items()}
    for start in range(0, len(labels), FISHER_CHUNK):  # per-sample gradients of a chunk at a time (memory)
        chunk = per_sample_grads(params, inputs[start : start + FISHER_CHUNK], labels[start : start + FISHER_CHUNK])
        for name, grads in chunk.items():
            squares[name] += grads.pow(2).sum(0)
    for name, p in model.named_parameters():
        p.grad = squares[name] / len(labels)


def eval_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode, without gradients."""
    clone = copy.deepcopy(model).eval()
    clone.zero_grad(set_to_none=True)
    return clone


def _on(model: nn.Module, calibration: Calibration) -> Calibration:
    device = next(model.parameters()).device
    inputs, labels = calibration
    if not len(labels):
        raise ValueError("the gradient criteria (taylor, hessian) need a non-empty calibration batch")
    return inputs.to(device).float(), labels.to(device).long()


def calibration_batch(split: dict[str, torch.Tensor], samples: int, seed: int) -> Calibration:
    """``samples`` images of ``split`` (uint8, as stored) drawn with ``seed``, as float inputs and labels."""
    return draw_samples(split, samples, seed, "the gradient criteria (taylor, hessian)")


def baseline_criterion(
    name: str, input_shape: tuple[int, ...], seed: int, calibration: Calibration | None = None
) -> UnitImportance:
    """The criterion a baseline is named by in ``baselines.criteria``: ``l1`` (group L1), ``random``,
    ``taylor``, ``hessian`` (both read ``calibration``), ``lamp``."""
    shape = tuple(input_shape)
    if name in ("taylor", "hessian") and calibration is None:
        raise ValueError(f"the '{name}' criterion reads gradients: pass a calibration batch (inputs, labels)")
    criteria = {
        "l1": lambda: GroupL1(shape),
        "random": lambda: GroupRandom(shape, seed),
        "taylor": lambda: GroupTaylor(shape, calibration),
        "hessian": lambda: GroupHessian(shape, calibration),
        "lamp": lambda: GroupLAMP(shape),
    }
    if name not in criteria:
        raise ValueError(
            f"unknown baseline criterion '{name}'; choose from {list(BASELINE_CRITERIA)} "
            "(baselines.criteria in conf/base/parameters_baselines.yml)"
        )
    return criteria[name]()
