"""Scoring Net (after S. Wang 2024; the design is ours): a learned pruning criterion.

A small MLP shared by every prunable unit maps the unit's features (``features.FEATURE_NAMES``: weight norms,
BatchNorm gamma, activation statistics, Taylor, layer depth/cost/width and the target FLOPs budget) to a keep
score; ``mask_at_budget`` turns the scores into a mask with the baselines' budget fitting. It is trained in
stages on the frozen network (``training``), with gates applied by forward hooks (``gates``).
"""

from evoprune.core.scoring_net.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    at_budget,
    group_flops_share,
    split_features,
    unit_features,
)
from evoprune.core.scoring_net.gates import SoftFlops, check_budget, hard_mask_accuracy, unit_gates
from evoprune.core.scoring_net.model import (
    ScoringNet,
    load_scoring_net,
    mask_at_budget,
    masks_at_budgets,
    scoring_net_state,
)
from evoprune.core.scoring_net.sources import ExtraSourcesConfig, extra_source_networks
from evoprune.core.scoring_net.training import (
    GatesStageConfig,
    RefineStageConfig,
    ScoringNetConfig,
    ScoringNetResult,
    fit_to_targets,
    train_scoring_net,
    train_scoring_net_with_sources,
)
from evoprune.core.scoring_net.transfer import (
    TransferConfig,
    TransferTarget,
    class_subset,
    criteria_comparison,
    digits_split,
    transfer_scoring_net,
    transfer_to_target,
)

__all__ = [
    "ExtraSourcesConfig",
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "GatesStageConfig",
    "RefineStageConfig",
    "ScoringNet",
    "ScoringNetConfig",
    "ScoringNetResult",
    "TransferConfig",
    "TransferTarget",
    "class_subset",
    "criteria_comparison",
    "digits_split",
    "extra_source_networks",
    "transfer_scoring_net",
    "transfer_to_target",
    "split_features",
    "SoftFlops",
    "at_budget",
    "check_budget",
    "fit_to_targets",
    "group_flops_share",
    "hard_mask_accuracy",
    "load_scoring_net",
    "mask_at_budget",
    "masks_at_budgets",
    "scoring_net_state",
    "train_scoring_net",
    "train_scoring_net_with_sources",
    "unit_features",
    "unit_gates",
]
