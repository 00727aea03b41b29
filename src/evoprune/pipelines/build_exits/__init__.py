"""Attach early-exit heads to the dense backbone, train them, and measure early-exit inference."""

from evoprune.pipelines.build_exits.pipeline import create_pipeline

__all__ = ["create_pipeline"]
