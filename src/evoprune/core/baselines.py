"""Pruning baselines at a FLOPs budget: global L1-norm filter pruning and random pruning.

Unit scores come from a criterion of ``evoprune.core.importance`` (``GroupL1``: torch-pruning's
``GroupMagnitudeImportance(p=1)``, the L1 norm over each pruning group; ``GroupRandom``:
``RandomImportance``). Units are then removed globally, least important first, until the analytic
FLOPs of the mask fit the budget, never emptying a layer (or pruning more of it than
``max_pruning_ratio``). The result is a mask in the same chromosome layout as the searched members, so
baselines go through the same physical pruning and fine-tuning.
"""

from __future__ import annotations

import numpy as np

from evoprune.core.units import ChromosomeLayout


def mask_within_budget(
    layout: ChromosomeLayout,
    scores: np.ndarray,
    flops_budget: float,
    max_pruning_ratio: float = 1.0,
    round_to: int = 1,
) -> np.ndarray:
    """The mask that removes units globally in ascending ``scores`` (never a layer's last unit) until its
    FLOPs are at most ``flops_budget`` (a ratio of the dense FLOPs), then gives back the best removed
    units that still fit (one conv channel can hold a tenth of the FLOPs, so the first fitting mask can
    undershoot the budget by far). No layer loses more than ``max_pruning_ratio`` of its units. The
    sparsest mask if none fits.

    With ``round_to`` > 1 every layer larger than it keeps a multiple of ``round_to`` units or all of
    them (``ChromosomeLayout.round_units`` by the same scores): of the removal sequence rounded so, the
    mask with the most FLOPs within the budget (the sparsest if none fits), then removed units come back
    ``round_to`` at a time, the layer whose best removed unit scores highest first, while they fit.
    """
    if not 0.0 < flops_budget <= 1.0:
        raise ValueError(f"flops_budget is a ratio of the dense FLOPs in (0, 1], got {flops_budget}")
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
    ratios = layout.cost(masks)["flops"] / layout.dense_flops
    fitting = np.flatnonzero(ratios <= flops_budget + 1e-12)
    if not len(fitting):
        return masks[-1]
    if round_to > 1:
        return _give_back_rounded(layout, scores, masks[fitting[np.argmax(ratios[fitting])]], flops_budget, round_to)
    mask = masks[int(fitting[0])].copy()
    for bit in np.flatnonzero(~mask)[np.argsort(-scores[~mask], kind="stable")]:
        mask[bit] = True
        if layout.cost(mask[None])["flops"][0] / layout.dense_flops > flops_budget + 1e-12:
            mask[bit] = False
    return mask


def _give_back_rounded(
    layout: ChromosomeLayout, scores: np.ndarray, mask: np.ndarray, flops_budget: float, round_to: int
) -> np.ndarray:
    """Give removed units back in steps that keep every rounded layer's count a multiple of ``round_to``
    (or whole), best-scoring layer first, while the FLOPs stay within the budget."""
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
            if layout.cost(mask[None])["flops"][0] / layout.dense_flops <= flops_budget + 1e-12:
                break
            mask[bits] = False
        else:
            return mask
