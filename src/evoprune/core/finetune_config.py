"""How pruned networks are fine-tuned and measured (conf/base/parameters_finetune.yml, key ``finetune``).

One budget for every re-init variant, for the fine-tune-aware member selection and for the baselines, so
that their accuracies compare. Defaults equal conf/base (``tests/test_params_defaults.py`` checks it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator, model_validator
from torch import nn

from evoprune.core.finetune import MemoryFormat
from evoprune.core.finetune_pool import ParallelParams
from evoprune.core.reinit import VARIANTS, Variant
from evoprune.core.train import TrainConfig


class MeasurementParams(BaseModel):
    """How a pruned model and its dense reference are timed."""

    model_config = ConfigDict(extra="forbid")

    latency_batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 1000], min_length=1)
    latency_repeats: PositiveInt = 21  # median over this many timed runs (dense and member in turn)
    # layout of inputs and conv weights while timed, the dense reference's too (channels_last: NHWC, fastest on CPU)
    memory_format: MemoryFormat = "channels_last"
    # torch threads while timing (the target's inference threads, as latency_profile.threads); null: the process's
    threads: PositiveInt | None = None


class FinetuneParams(BaseModel):
    """conf/base/parameters_finetune.yml"""

    model_config = ConfigDict(extra="forbid")

    # one Kedro namespace each (read when the pipelines are registered); a variant listed here only by an
    # environment or --params must be one of them
    variants: list[Variant] = Field(default_factory=lambda: list(VARIANTS), min_length=1)
    # channels_last: 1.43x faster LeNet-5 fine-tune epochs on CPU (TrainConfig's default stays contiguous)
    training: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=5, memory_format="channels_last"))
    # all_exits: the loss sums every exit's (weighted by loss_weights), the multi-exit network is tuned for its
    # early-exit policy | final: the final exit's loss alone (what a single-exit user deploys; the exit heads
    # are not trained and the early-exit metrics of such a row describe stale heads)
    objective: Literal["all_exits", "final"] = "all_exits"
    loss_weights: list[PositiveFloat] | None = None  # per exit, final exit last (null: 1 each; all_exits only)
    # select_members fine-tunes every candidate of a FLOPs budget with this variant and keeps the one with the
    # best final-exit validation accuracy (the test split is never used to choose)
    selection_variant: Variant = "keep"
    # none | linear_l1: select_members also fine-tunes each budget's winner with its Linear layers' units chosen
    # again by group L1 within its cost (conv units kept) and keeps the better on validation (core/selection.py)
    selection_refit: Literal["none", "linear_l1"] = "none"
    # fine-tune seeds per candidate of select_members (the run's seed, then the next ones); the mean validation accuracy
    # over them decides. 1: one fine-tune each; each more seed costs one more fine-tune per candidate
    selection_seeds: PositiveInt = 1
    measurement: MeasurementParams = Field(default_factory=MeasurementParams)
    # fine-tunes side by side in worker processes, one torch thread each (core/finetune_pool.py)
    parallel: ParallelParams = Field(default_factory=ParallelParams)

    def exit_loss_weights(self, model: nn.Module) -> list[float] | None:
        """The per-exit loss weights ``train`` takes for ``model``: ``loss_weights`` (null: 1 each) under
        ``all_exits``, 1 for the final exit and 0 for the others under ``final``."""
        if self.objective == "all_exits":
            return self.loss_weights
        return [0.0] * (getattr(model, "num_exits", 1) - 1) + [1.0]

    @model_validator(mode="after")
    def _weights_need_every_exit(self) -> FinetuneParams:
        if self.objective == "final" and self.loss_weights is not None:
            raise ValueError(
                f"loss_weights {self.loss_weights} weigh the exits of objective all_exits; objective final trains "
                "the final exit alone. Remove loss_weights or set objective: all_exits."
            )
        return self

    @field_validator("variants")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"variants are listed more than once: {value}")
        return value
