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
from evoprune.core.scoring_net.features import FEATURE_NAMES, FEATURE_VERSION, UNIT_FEATURE_NAMES, at_budget
from evoprune.core.scoring_net.gates import check_budget
from evoprune.core.units import ChromosomeLayout

STATE_FORMAT = "evoprune.scoring_net/1"

Features = torch.Tensor | Callable[[float], torch.Tensor]  # (num_bits, F), or budget -> (num_bits, F)


GROUP_L1_COLUMN = FEATURE_NAMES.index("group_l1")


class ScoringNet(nn.Module):
    """MLP ``F -> hidden... -> 1`` (ReLU) applied to every unit's feature row: (N, F) -> (N,) keep scores.

    ``l1_prior`` > 0 adds ``l1_prior * group_l1`` (the per-layer z-scored group L1 column) to the MLP's output, so
    within a layer the net adjusts L1's order instead of replacing it (zero-mean per layer: the layer allocation
    stays the MLP's). ``ignored_features`` are zeroed before the MLP (e.g. activation statistics that do not
    mean the same on another dataset).
    """

    def __init__(
        self,
        num_features: int = len(FEATURE_NAMES),
        hidden: Sequence[int] = (32, 32),
        l1_prior: float = 0.0,
        ignored_features: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.hidden = tuple(int(h) for h in hidden)
        self.l1_prior = float(l1_prior)
        self.ignored_features = tuple(ignored_features)
        unknown = sorted(set(self.ignored_features) - set(FEATURE_NAMES))
        if unknown:
            raise ValueError(f"ignored_features {unknown} are not features; allowed: {list(FEATURE_NAMES)}")
        keep = torch.tensor([name not in self.ignored_features for name in FEATURE_NAMES], dtype=torch.float32)
        self.register_buffer("feature_keep", keep[: self.num_features], persistent=False)
        widths = [self.num_features, *self.hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, unit_keep: torch.Tensor | None = None) -> torch.Tensor:  # (N, F) -> (N,)
        """``unit_keep``: (len(UNIT_FEATURE_NAMES),) 0/1 feature dropout of the MLP's input (training only; the
        L1 prior always reads the whole group_l1 column)."""
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(
                f"features have shape {tuple(features.shape)}, the Scoring Net expects (num_bits, {self.num_features}) "
                "(scoring_net.unit_features)"
            )
        x = features * self.feature_keep.to(features.dtype)
        if unit_keep is not None:
            x = torch.cat(
                [x[:, : len(UNIT_FEATURE_NAMES)] * unit_keep.to(x.device, x.dtype), x[:, len(UNIT_FEATURE_NAMES) :]], 1
            )
        out = self.mlp(x).squeeze(-1)
        return out + self.l1_prior * features[:, GROUP_L1_COLUMN] if self.l1_prior else out

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
        "l1_prior": net.l1_prior,
        "ignored_features": list(net.ignored_features),
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
    net = ScoringNet(
        int(state["num_features"]),
        [int(h) for h in state["hidden"]],
        float(state.get("l1_prior", 0.0)),  # absent from checkpoints saved before the prior existed
        [str(n) for n in state.get("ignored_features", [])],
    )
    net.load_state_dict(state["state_dict"])
    return net.eval()
