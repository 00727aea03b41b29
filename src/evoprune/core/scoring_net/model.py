"""The Scoring Net: one small MLP shared by every unit, features -> keep score; masks at a FLOPs budget.

A mask comes from the scores through ``baselines.mask_within_budget`` (the baselines' budget fitting): units
are removed globally in ascending score (never a layer's last unit) until the FLOPs fit, then the best removed
units that still fit come back. Tie-breaking: the removal order is a stable argsort, so equal scores go in bit
order (lowest bit first). With all-zero weights every score is 0 and the mask equals
``mask_within_budget(layout, zeros, budget)``.

A saved Scoring Net is a plain dict (tensors, str, int, lists) that ``torch.load(weights_only=True)`` reads;
it carries ``FEATURE_NAMES`` and ``FEATURE_VERSION``, and loading refuses a net trained on other features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from evoprune.core.baselines import mask_within_budget
from evoprune.core.scoring_net.features import FEATURE_NAMES, FEATURE_VERSION, at_budget
from evoprune.core.scoring_net.gates import check_budget
from evoprune.core.units import ChromosomeLayout

STATE_FORMAT = "evoprune.scoring_net/1"

Features = torch.Tensor | Callable[[float], torch.Tensor]  # (num_bits, F), or budget -> (num_bits, F)


class ScoringNet(nn.Module):
    """MLP ``F -> hidden... -> 1`` (ReLU) applied to every unit's feature row: (N, F) -> (N,) keep scores."""

    def __init__(self, num_features: int = len(FEATURE_NAMES), hidden: Sequence[int] = (32, 32)) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.hidden = tuple(int(h) for h in hidden)
        widths = [self.num_features, *self.hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (N, F) -> (N,)
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(
                f"features have shape {tuple(features.shape)}, the Scoring Net expects (num_bits, {self.num_features}) "
                "(scoring_net.unit_features)"
            )
        return self.mlp(features).squeeze(-1)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(num_bits,) keep scores (higher = kept first), without gradients."""
        with torch.no_grad():
            return self(features.to(next(self.parameters()).device))


def _features_at(features: Features, budget: float) -> torch.Tensor:
    return features(budget) if callable(features) else at_budget(features, budget)


def mask_at_budget(
    net: ScoringNet,
    features: Features,
    layout: ChromosomeLayout,
    budget: float,
    max_pruning_ratio: float = 1.0,
    round_to: int = 1,
) -> np.ndarray:
    """The (num_bits,) bool mask the Scoring Net picks at ``budget`` (a ratio of the dense FLOPs in (0, 1]).

    Args:
        features: (num_bits, F) from ``unit_features`` (its budget column is set to ``budget``), or a function
            budget -> features.
        max_pruning_ratio, round_to: as in ``baselines.mask_within_budget``.
    """
    budget = check_budget(budget)
    scores = net.scores(_features_at(features, budget)).double().cpu().numpy()
    if scores.shape != (layout.num_bits,):
        raise ValueError(f"{scores.shape[0]} scores for a layout of {layout.num_bits} bits; features of another model?")
    return mask_within_budget(layout, scores, budget, max_pruning_ratio, round_to)


def masks_at_budgets(
    net: ScoringNet,
    features: Features,
    layout: ChromosomeLayout,
    budgets: Sequence[float],
    max_pruning_ratio: float = 1.0,
) -> np.ndarray:
    """(len(budgets), num_bits) bool masks, one per budget (``mask_at_budget``)."""
    return np.stack([mask_at_budget(net, features, layout, b, max_pruning_ratio) for b in budgets])


def scoring_net_state(net: ScoringNet) -> dict[str, Any]:
    """A checkpoint of ``net`` made only of tensors, str, int and lists (``torch.load(weights_only=True)``)."""
    return {
        "format": STATE_FORMAT,
        "feature_names": list(FEATURE_NAMES),
        "feature_version": FEATURE_VERSION,
        "num_features": net.num_features,
        "hidden": list(net.hidden),
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
    }


def load_scoring_net(state: dict[str, Any]) -> ScoringNet:
    """The Scoring Net saved by ``scoring_net_state`` (on the CPU, eval mode).

    Raises:
        ValueError: not a Scoring Net checkpoint, or its feature spec differs from this version's.
    """
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"not a Scoring Net checkpoint (format {found!r}, expected {STATE_FORMAT!r}).")
    names, version = tuple(state.get("feature_names", ())), state.get("feature_version")
    if names != FEATURE_NAMES or version != FEATURE_VERSION:
        raise ValueError(
            f"the checkpoint's feature spec ({version!r}, {list(names)}) does not match this version's "
            f"({FEATURE_VERSION!r}, {list(FEATURE_NAMES)}); retrain the Scoring Net (scoring_net pipeline)."
        )
    net = ScoringNet(int(state["num_features"]), [int(h) for h in state["hidden"]])
    net.load_state_dict(state["state_dict"])
    return net.eval()
