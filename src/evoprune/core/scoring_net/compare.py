"""The report's ``scoring_net`` rows: the trained network pruned to each member's FLOPs by a Scoring Net's masks,
fine-tuned and measured exactly like the baselines (``comparison.finetune_criterion_masks``)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from evoprune.core.comparison import MeasuredModel, finetune_criterion_masks
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.models.adapter import input_shape
from evoprune.core.scoring_net.features import split_features
from evoprune.core.scoring_net.model import ScoringNet, mask_at_budget
from evoprune.core.units import build_layout

Split = dict[str, torch.Tensor]


def prune_to_member_budgets_by_scoring_net(
    net: ScoringNet,
    trained: nn.Module,
    masks: np.ndarray,
    member_ids: Sequence[int],
    splits: tuple[Split, Split, Split],
    policy: tuple[float, str],
    dense_measurements: dict[str, float],
    params: FinetuneParams,
    unit_limits: tuple[float, int],
    feature_images: int,
    seed: int,
    device: torch.device,
    finetune_seeds: Sequence[int] | None = None,
) -> tuple[list[MeasuredModel], float]:
    """Per member (``masks[k]`` of ``trained``): the Scoring Net's mask at the member's FLOPs (features on
    ``feature_images`` training images, ``unit_limits`` = (max_pruning_ratio, round_to) as the search obeyed),
    then pruned, fine-tuned (once per ``finetune_seeds``; default ``[seed]``) and measured, labelled
    ``criterion = scoring_net``.

    Returns:
        The measured models and the seconds per mask (features + scoring + budget fitting, amortised).
    """
    layout = build_layout(trained, input_shape(trained))
    budgets = layout.flops_ratio(np.asarray(masks, dtype=bool))
    start = time.perf_counter()
    features = split_features(trained, layout, splits[0], feature_images, seed)
    fitted = np.stack([mask_at_budget(net, features, layout, float(b), *unit_limits) for b in budgets])
    mask_seconds = (time.perf_counter() - start) / len(budgets)
    measured = finetune_criterion_masks(
        trained,
        layout,
        fitted,
        member_ids,
        budgets,
        "scoring_net",
        splits,
        policy,
        dense_measurements,
        params,
        list(finetune_seeds) if finetune_seeds is not None else [seed],
        device,
    )
    return measured, mask_seconds
