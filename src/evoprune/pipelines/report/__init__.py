"""The comparison report: dense model, fine-tuned members per variant, baselines."""

from evoprune.pipelines.report.pipeline import create_pipeline

__all__ = ["create_pipeline"]
