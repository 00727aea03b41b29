"""Pruning baselines at a budget: global L1-norm filter pruning, random pruning and Torch-Pruning's other criteria.

Unit scores come from a criterion of ``evoprune.core.importance`` (``GroupL1``: torch-pruning's
``GroupMagnitudeImportance(p=1)``, the L1 norm over each pruning group; ``GroupRandom``:
``RandomImportance``). Units are then removed globally, least important first, until the analytic
FLOPs of the mask fit the budget, never emptying a layer (or pruning more of it than
``max_pruning_ratio``). The result is a mask in the same chromosome layout as the searched members, so
baselines go through the same physical pruning and fine-tuning.

The budget is a ratio of the dense network's cost on a ``CostRatio`` axis: FLOPs by default
(``flops_ratio_of``), or the latency model's predicted latency (``budget_cost(layout, "latency_ratio", model)``)
when the members were chosen on it, so both sides of the comparison fit the same axis.

``torch_pruning_global_mask`` ranks the same criteria with Torch-Pruning's own global pruner instead, as a
user would call it (``MetaPruner(global_pruning=True)``, stepped until the FLOPs fit); the channels it removes
from a copy of the network become a mask in the same layout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from evoprune.core.importance import Calibration, GroupCriterion, baseline_criterion, eval_copy
from evoprune.core.latency import LatencyModel
from evoprune.core.lstm import has_lstm
from evoprune.core.models.adapter import logit_layers
from evoprune.core.units import ChromosomeLayout, sum_of_exit_outputs

PROGRESSIVE_STEPS = 200  # torch_pruning_global_mask: each step removes up to 0.5% of the channels
Ranking = Literal["budget_fit", "torch_pruning"]
RANKINGS: tuple[str, ...] = ("budget_fit", "torch_pruning")
BudgetAxis = Literal["flops_ratio", "latency_ratio"]
CostRatio = Callable[[np.ndarray], np.ndarray]  # (K, num_bits) masks -> (K,) cost ratios of the dense network

logger = logging.getLogger(__name__)


def flops_ratio_of(layout: ChromosomeLayout) -> CostRatio:
    """The analytic FLOPs of masks of ``layout`` as ratios of the dense network's."""
    return lambda masks: layout.flops_ratio(np.asarray(masks, dtype=bool))


def budget_cost(layout: ChromosomeLayout, axis: BudgetAxis, latency_model: LatencyModel | None = None) -> CostRatio:
    """The cost ratio budgets are fitted on: ``flops_ratio`` (analytic) or ``latency_ratio`` (``latency_model``'s
    prediction for this network, relative to the dense network's)."""
    if axis == "flops_ratio":
        return flops_ratio_of(layout)
    if axis != "latency_ratio":
        raise ValueError(f"budget axis {axis!r}: expected flops_ratio or latency_ratio")
    if latency_model is None or not latency_model.available:
        why = latency_model.unavailable if latency_model is not None else "no latency model given"
        raise ValueError(
            f"budgets on latency_ratio need the latency model of this network ({why}); run the latency_profile "
            "pipeline, or set mask_search.budget_axis: flops_ratio"
        )
    return partial(latency_model.ratio, layout)


@dataclass(frozen=True, eq=False)
class BaselinePruner:
    """One baseline: a criterion (``evoprune.core.importance.baseline_criterion``) ranked by ``ranking``:
    ``budget_fit`` (``mask_within_budget``: global ranking, FLOPs fitted with give-back, the search's
    per-layer cap and rounding) or ``torch_pruning`` (``torch_pruning_global_mask``: Torch-Pruning's global
    pruner as a user calls it, given the same cap and rounding as its own arguments)."""

    criterion: str
    ranking: Ranking
    input_shape: tuple[int, ...]
    calibration: Calibration | None = None  # what the gradient criteria read
    max_pruning_ratio: float = 1.0
    round_to: int = 1

    @property
    def name(self) -> str:
        """The method's name in the report: the criterion (``l1``), ``tp_<criterion>`` for Torch-Pruning's pruner."""
        return self.criterion if self.ranking == "budget_fit" else f"tp_{self.criterion}"

    @property
    def seeded(self) -> bool:
        """Whether its masks depend on the seed (the random criterion)."""
        return self.criterion == "random"

    def masks(
        self,
        model: nn.Module,
        layout: ChromosomeLayout,
        budgets: np.ndarray,
        seed: int,
        cost_ratio: CostRatio | None = None,
    ) -> np.ndarray:
        """(K, num_bits) masks of ``model`` at the K ``budgets``: ratios of the dense network's cost on
        ``cost_ratio``'s axis (default: FLOPs)."""
        criterion = baseline_criterion(self.criterion, self.input_shape, seed, self.calibration)
        limits = (self.max_pruning_ratio, self.round_to, cost_ratio)
        if self.ranking == "torch_pruning":
            return np.stack([torch_pruning_global_mask(model, layout, criterion, float(b), *limits) for b in budgets])
        scores = criterion(model, layout)
        return np.stack([mask_within_budget(layout, scores, float(b), *limits) for b in budgets])


def mask_within_budget(
    layout: ChromosomeLayout,
    scores: np.ndarray,
    budget: float,
    max_pruning_ratio: float = 1.0,
    round_to: int = 1,
    cost_ratio: CostRatio | None = None,
) -> np.ndarray:
    """The mask that removes units globally in ascending ``scores`` (never a layer's last unit) until its
    cost is at most ``budget`` (a ratio of the dense network's cost on ``cost_ratio``'s axis; default the
    analytic FLOPs), then gives back the best removed units that still fit (one conv channel can hold a tenth
    of the FLOPs, so the first fitting mask can undershoot the budget by far). No layer loses more than
    ``max_pruning_ratio`` of its units. The sparsest mask if none fits.

    With ``round_to`` > 1 every layer larger than it keeps a multiple of ``round_to`` units or all of
    them (``ChromosomeLayout.round_units`` by the same scores): of the removal sequence rounded so, the
    mask with the most FLOPs within the budget (the sparsest if none fits), then removed units come back
    ``round_to`` at a time, the layer whose best removed unit scores highest first, while they fit.
    """
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget is a ratio of the dense network's cost (FLOPs, latency) in (0, 1], got {budget}")
    ratio_of = cost_ratio or flops_ratio_of(layout)
    mask = np.ones(layout.num_bits, dtype=bool)
    left = {g.name: g.size for g in layout.groups}
    min_units = layout.min_units(max_pruning_ratio)
    floor = dict(zip(left, min_units, strict=True))
    group_of = np.empty(layout.num_bits, dtype=object)
    for g in layout.groups:
        group_of[g.offset : g.offset + g.size] = g.name
    sequence = [mask.copy()]
    for bit in np.argsort(scores, kind="stable"):
        if left[group_of[bit]] > floor[group_of[bit]]:
            left[group_of[bit]] -= 1
            mask[bit] = False
            sequence.append(mask.copy())
    masks = np.stack(sequence)
    if round_to > 1:
        masks = layout.round_units(masks, round_to, scores, min_units)
    ratios = ratio_of(masks)
    fitting = np.flatnonzero(ratios <= budget + 1e-12)
    if not len(fitting):
        logger.warning(
            "no mask within the budget %.4f: with every layer at its floor (max_pruning_ratio %.2f) the network "
            "still costs %.4f; the baseline keeps that sparsest mask, over the budget.",
            budget,
            max_pruning_ratio,
            ratios[-1],
        )
        return masks[-1]
    if round_to > 1:
        densest = masks[fitting[np.argmax(ratios[fitting])]]
        return _give_back_rounded(layout, scores, densest, budget, round_to, ratio_of)
    mask = masks[int(fitting[0])].copy()
    for bit in np.flatnonzero(~mask)[np.argsort(-scores[~mask], kind="stable")]:
        mask[bit] = True
        if ratio_of(mask[None])[0] > budget + 1e-12:
            mask[bit] = False
    return mask


def random_allocations(
    layout: ChromosomeLayout,
    scores: np.ndarray,
    budget: float,
    count: int,
    rng: np.random.Generator,
    max_pruning_ratio: float = 1.0,
    round_to: int = 1,
) -> np.ndarray:
    """(``count``, num_bits) masks within ``budget`` of the FLOPs whose unit counts per layer are drawn as the
    random baseline draws them (``mask_within_budget`` on random scores, under the same limits) and whose units
    are the ``scores``' best within each layer: allocations that differ, units chosen by the criterion. EagleEye
    (Li et al. 2020) samples its candidates so; the pool holds allocations a global ranking never reaches."""
    masks = []
    for _ in range(count):
        drawn = mask_within_budget(layout, rng.random(layout.num_bits), budget, max_pruning_ratio, round_to)
        masks.append(layout.mask_with_counts(layout.units_kept(drawn), scores))
    return np.stack(masks) if masks else np.zeros((0, layout.num_bits), dtype=bool)


def refit_within_budget(
    layout: ChromosomeLayout,
    mask: np.ndarray,
    scores: np.ndarray,
    refit: np.ndarray,
    budget: float,
    max_pruning_ratio: float = 1.0,
    round_to: int = 1,
    cost_ratio: CostRatio | None = None,
) -> np.ndarray:
    """``mask`` with the units of the bits in ``refit`` chosen again by ``scores`` (``mask_within_budget`` over
    those bits alone) so that the whole mask costs at most ``budget`` (on ``cost_ratio``'s axis, default the analytic FLOPs); every
    other bit stays as in ``mask``.

    The other bits are pinned through their scores (kept ones last to go, dropped ones first). The result fits
    the budget whenever ``mask`` with its refit groups at their floor (``max_pruning_ratio``) does; a pinned group
    that ``mask`` cut below its floor leaves it under the budget.
    """
    refit = np.asarray(refit, dtype=bool)
    pinned = np.where(refit, scores, np.where(mask, np.inf, -np.inf))
    fitted = mask_within_budget(layout, pinned, budget, max_pruning_ratio, round_to, cost_ratio)
    return np.where(refit, fitted, np.asarray(mask, dtype=bool))


def _give_back_rounded(
    layout: ChromosomeLayout,
    scores: np.ndarray,
    mask: np.ndarray,
    budget: float,
    round_to: int,
    ratio_of: CostRatio,
) -> np.ndarray:
    """Give removed units back in steps that keep every rounded layer's count a multiple of ``round_to``
    (or whole), best-scoring layer first, while the cost stays within the budget."""
    mask = mask.copy()
    while True:
        steps = []
        for g in layout.groups:
            dropped = np.flatnonzero(~mask[g.offset : g.offset + g.size]) + g.offset
            if not len(dropped):
                continue
            best_first = dropped[np.argsort(-scores[dropped], kind="stable")]
            steps.append(best_first[: 1 if g.size <= round_to else min(round_to, len(dropped))])
        for bits in sorted(steps, key=lambda b: -scores[b[0]]):
            mask[bits] = True
            if ratio_of(mask[None])[0] <= budget + 1e-12:
                break
            mask[bits] = False
        else:
            return mask


def torch_pruning_global_mask(
    model: nn.Module,
    layout: ChromosomeLayout,
    criterion: GroupCriterion,
    budget: float,
    max_pruning_ratio: float = 1.0,
    round_to: int = 1,
    cost_ratio: CostRatio | None = None,
    steps: int = PROGRESSIVE_STEPS,
) -> np.ndarray:
    """The mask Torch-Pruning's global pruner removes with ``criterion``'s importance when it is stepped, as
    Torch-Pruning's own FLOPs-target recipes do, until the cost fits ``budget`` (a ratio of the dense network's
    cost on ``cost_ratio``'s axis; default the analytic FLOPs): ``MetaPruner(
    global_pruning=True, pruning_ratio=1.0, iterative_steps=steps)``, the logit layers ignored, gradients
    recomputed before each step for the gradient criteria (Taylor, Hessian). The last step may overshoot the
    budget by what one step removes. ``max_pruning_ratio`` and ``round_to`` go to the pruner as its own
    arguments. A copy of ``model`` is pruned in place; the removed channels map back to ``layout``'s bits."""
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget is a ratio of the dense network's cost (FLOPs, latency) in (0, 1], got {budget}")
    if has_lstm(model):
        raise ValueError("Torch-Pruning's pruner is broken for nn.LSTM: rank LSTM baselines with budget_fit")
    work = eval_copy(model)
    example = torch.zeros(1, *criterion.input_shape, device=next(work.parameters()).device)
    pruner = tp.pruner.MetaPruner(
        work,
        example,
        criterion.importance(),
        global_pruning=True,
        pruning_ratio=1.0,
        iterative_steps=steps,
        max_pruning_ratio=max_pruning_ratio,
        ignored_layers=logit_layers(work),
        round_to=round_to if round_to > 1 else None,
        root_module_types=[nn.Conv2d, nn.Linear],
        forward_fn=sum_of_exit_outputs,
    )
    names = {m: n for n, m in work.named_modules()}
    alive = {g.name: np.arange(g.offset, g.offset + g.size) for g in layout.groups}  # bits of current channels
    ratio_of = cost_ratio or flops_ratio_of(layout)
    mask = np.ones(layout.num_bits, dtype=bool)
    for _ in range(steps):
        if ratio_of(mask[None])[0] <= budget + 1e-12:
            break
        criterion.set_gradients(work)
        for group in pruner.step(interactive=True):
            for item in group:
                name = names.get(item.dep.target.module)
                if name in alive and pruner.DG.is_out_channel_pruning_fn(item.dep.handler):
                    idxs = np.asarray(item.idxs, dtype=np.int64)
                    mask[alive[name][idxs]] = False
                    alive[name] = np.delete(alive[name], idxs)
            group.prune()
    return mask
