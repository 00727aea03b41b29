"""Fine-tuning of the chosen Pareto members, one namespaced pipeline per re-init variant."""

from evoprune.pipelines.finetune.pipeline import create_pipeline

__all__ = ["create_pipeline"]
