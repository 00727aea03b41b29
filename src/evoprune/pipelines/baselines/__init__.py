"""Pruning baselines (global L1-norm, random) at the chosen members' FLOPs budgets."""

from evoprune.pipelines.baselines.pipeline import create_pipeline

__all__ = ["create_pipeline"]
