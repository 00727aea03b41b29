"""Dynamic sparse training (Liu et al., ICLR 2020): trainable thresholds, the long-tailed estimator, the
regulariser and reset rule, a sparsity controller (ours), a structured form in the chromosome layout, and
the magnitude-pruning baseline it is compared with."""

from evoprune.core.sparse.dst import (
    ControllerConfig,
    SparseTrainingConfig,
    SparseTrainingResult,
    SparsityController,
    nonzero_flops,
    train_sparse,
    weight_sparsity,
)
from evoprune.core.sparse.estimator import LongTailedStep, long_tailed_derivative, step
from evoprune.core.sparse.thresholds import StructuredThresholds, UnstructuredThresholds

__all__ = [
    "ControllerConfig",
    "LongTailedStep",
    "SparseTrainingConfig",
    "SparseTrainingResult",
    "SparsityController",
    "StructuredThresholds",
    "UnstructuredThresholds",
    "long_tailed_derivative",
    "nonzero_flops",
    "step",
    "train_sparse",
    "weight_sparsity",
]
