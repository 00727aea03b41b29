"""Recovery fitness: a candidate scored after a few steps of the fine-tune, not as the mask leaves it.

The search's fitness, accuracy right after masking, ranks LeNet-5's masks of equal FLOPs poorly by their accuracy
after the 5-epoch fine-tune (``benchmarks/finetune_proxies.py``: Spearman +0.60 at 25% of the FLOPs; masks with
10-20 points less before fine-tuning ended up as good or better). A few SGD steps of the fine-tune's own
optimiser and schedule let every mask recover what plain training quickly restores, so what is left to rank is
what the fine-tune cannot restore (+0.72 with 25 steps). It costs one short training per candidate, so it scores
only the last ``generations`` generations; the population is scored again when it switches, so old and new
candidates compete on one scale.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt
from torch import nn
from tqdm.auto import tqdm

from evoprune.core.exits import input_shape
from evoprune.core.masking import prune_physically
from evoprune.core.train import TrainConfig, TrainingExtras, accuracy_per_exit, train
from evoprune.core.units import ChromosomeLayout


class RecoveryConfig(BaseModel):
    """``mask_search.search.recovery``: score the last generations after a few fine-tune steps."""

    model_config = ConfigDict(extra="forbid")

    generations: NonNegativeInt = 0  # the last this many generations are scored so; 0 = off
    steps: PositiveInt = 25  # SGD steps per candidate, on the first steps * batch_size training images
    # the fine-tune's optimiser and schedule, squeezed into `steps` (epochs and train_subset are set from steps)
    training: TrainConfig = Field(default_factory=lambda: TrainConfig(memory_format="channels_last"))

    def train_config(self) -> TrainConfig:
        """One epoch over the first ``steps * batch_size`` training images."""
        return self.training.model_copy(update={"epochs": 1, "train_subset": self.steps * self.training.batch_size})

    def images_needed(self) -> int:
        """Training images a recovery reads (the rest of the split is never touched)."""
        return self.steps * self.training.batch_size


def recovered_accuracy(
    model: nn.Module,
    layout: ChromosomeLayout,
    X: np.ndarray,
    train_split: dict[str, torch.Tensor],
    validation_split: dict[str, torch.Tensor],
    cfg: RecoveryConfig,
    device: torch.device,
    seed: int,
) -> np.ndarray:
    """(K, E) accuracy of every exit of each mask in ``X`` (K, num_bits) on ``validation_split``, after
    ``cfg.steps`` fine-tune steps of its physically pruned copy with the trained weights (every exit's loss,
    as the fine-tune's default objective). Every candidate sees the same images in the same order (``seed``), so
    equal masks get equal scores."""
    out = []
    train_cfg = cfg.train_config()
    for mask in tqdm(np.asarray(X, dtype=bool), desc="recovery fitness", unit="mask", leave=False):
        pruned = prune_physically(model, layout, mask, input_shape(model))
        train(
            pruned, train_split, None, train_cfg, device, seed, "recovery steps", extras=TrainingExtras(progress=False)
        )
        out.append(accuracy_per_exit(pruned, validation_split, device))
    return np.asarray(out, dtype=float).reshape(len(out), -1)
