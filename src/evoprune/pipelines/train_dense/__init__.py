"""Train the dense backbone; keep its initial weights for lottery-ticket rewinding."""

from evoprune.pipelines.train_dense.pipeline import create_pipeline

__all__ = ["create_pipeline"]
