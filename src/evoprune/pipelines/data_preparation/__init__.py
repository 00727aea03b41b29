"""Raw IDX files -> seeded train / validation / test tensors."""

from evoprune.pipelines.data_preparation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
