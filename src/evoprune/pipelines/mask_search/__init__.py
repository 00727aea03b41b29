"""Evolutionary search over filter masks of the multi-exit network; Pareto set and chosen members."""

from evoprune.pipelines.mask_search.pipeline import create_pipeline

__all__ = ["create_pipeline"]
