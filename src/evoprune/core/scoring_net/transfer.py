"""Transfer of a trained Scoring Net, unchanged, to another model or dataset, against L1 at equal FLOPs.

``zero_shot_comparison`` computes the new model's unit features on its own data, lets the Scoring Net and
Torch-Pruning's group L1 each pick a mask at every budget (the same budget fitting), and scores both masks
right after pruning (hard masks, adaptive BN on a copy: no training), so the ranking alone is compared.

``digits_split`` is the second dataset: scikit-learn's bundled handwritten digits (1,797 8x8 images, 16 grey
levels, shipped inside the package, no download), upsampled to 28x28 uint8 like Fashion-MNIST.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from evoprune.core.baselines import mask_within_budget
from evoprune.core.data import images_to_float
from evoprune.core.importance import GroupL1
from evoprune.core.models.adapter import input_shape
from evoprune.core.scoring_net.features import split_features
from evoprune.core.scoring_net.gates import check_budget, hard_mask_accuracy
from evoprune.core.scoring_net.model import ScoringNet, mask_at_budget
from evoprune.core.units import build_layout

Split = dict[str, torch.Tensor]


def digits_split(size: int = 28, test_share: float = 0.25, seed: int = 0) -> tuple[Split, Split]:
    """scikit-learn's handwritten digits as (train, test) splits of uint8 (N, size, size) images and int64
    labels, upsampled bilinearly from 8x8 (grey levels 0..16 scaled to 0..255); a seeded stratified-free split."""
    from sklearn.datasets import load_digits

    if not 0.0 < test_share < 1.0:
        raise ValueError(f"test_share must lie in (0, 1), got {test_share}")
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] * (255.0 / 16.0)
    images = nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8)[:, 0]
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(labels)))
    cut = int(round(len(labels) * (1.0 - test_share)))
    train, test = order[:cut], order[cut:]
    return {"images": images[train], "labels": labels[train]}, {"images": images[test], "labels": labels[test]}


def zero_shot_comparison(
    net: ScoringNet,
    model: nn.Module,
    calibration_split: Split,
    test_split: Split,
    budgets: Sequence[float],
    seed: int,
    feature_images: int = 256,
    max_pruning_ratio: float = 1.0,
) -> list[dict[str, float]]:
    """Per budget: the Scoring Net's and group L1's masks on ``model`` and their test accuracy without any
    training (adaptive BN on ``calibration_split`` images when the model has BatchNorm).

    Returns:
        Rows with budget, method (scoring_net | l1), flops_ratio (analytic, of the mask), units_kept, test_accuracy.
    """
    budgets = [check_budget(b) for b in budgets]
    layout = build_layout(model, input_shape(model))
    if not layout.groups:
        raise ValueError(f"{type(model).__name__} has no prunable unit; nothing to transfer a Scoring Net to.")
    device = next(model.parameters()).device
    features = split_features(model, layout, calibration_split, feature_images, seed)
    l1_scores = GroupL1(input_shape(model))(model, layout)
    images = images_to_float(test_split["images"].to(device))
    labels = test_split["labels"].to(device)
    calibration = [images_to_float(calibration_split["images"][:512].to(device))]
    rows = []
    for budget in budgets:
        masks = {
            "scoring_net": mask_at_budget(net, features, layout, budget, max_pruning_ratio),
            "l1": mask_within_budget(layout, l1_scores, budget, max_pruning_ratio),
        }
        for method, mask in masks.items():
            rows.append(
                {
                    "budget": budget,
                    "method": method,
                    "flops_ratio": float(layout.cost(mask[None])["flops"][0] / layout.dense_flops),
                    "units_kept": int(mask.sum()),
                    "test_accuracy": hard_mask_accuracy(model, layout, mask, images, labels, calibration),
                }
            )
    return rows
