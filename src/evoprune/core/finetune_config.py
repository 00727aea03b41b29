"""How pruned networks are fine-tuned and measured (conf/base/parameters_finetune.yml, key ``finetune``).

One budget for every re-init variant, for the fine-tune-aware member selection and for the baselines, so
that their accuracies compare. Defaults equal conf/base (``tests/test_params_defaults.py`` checks it).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator

from evoprune.core.finetune import MemoryFormat
from evoprune.core.reinit import VARIANTS, Variant
from evoprune.core.train import TrainConfig


class MeasurementParams(BaseModel):
    """How a pruned model and its dense reference are timed."""

    model_config = ConfigDict(extra="forbid")

    latency_batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 1000], min_length=1)
    latency_repeats: PositiveInt = 21  # median over this many timed runs (dense and member in turn)
    # layout of inputs and conv weights while timed, the dense reference's too (channels_last: NHWC, fastest on CPU)
    memory_format: MemoryFormat = "channels_last"


class FinetuneParams(BaseModel):
    """conf/base/parameters_finetune.yml"""

    model_config = ConfigDict(extra="forbid")

    # one Kedro namespace each (read when the pipelines are registered); a variant listed here only by an
    # environment or --params must be one of them
    variants: list[Variant] = Field(default_factory=lambda: list(VARIANTS), min_length=1)
    training: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=5))
    loss_weights: list[PositiveFloat] | None = None  # per exit, final exit last (null: 1 each)
    # select_members fine-tunes every candidate of a FLOPs budget with this variant and keeps the one with the
    # best final-exit validation accuracy (the test split is never used to choose)
    selection_variant: Variant = "keep"
    measurement: MeasurementParams = Field(default_factory=MeasurementParams)

    @field_validator("variants")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"variants are listed more than once: {value}")
        return value
