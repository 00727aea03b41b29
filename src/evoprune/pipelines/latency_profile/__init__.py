"""latency_profile: per-layer latency tables of the target device for the multi-exit network
(``evoprune.core.latency``), cached by key; the search's ``latency_ratio`` objective and the front's predicted
latency read them (part of ``prune``; ``kedro run --pipeline=latency_profile`` alone)."""

from evoprune.pipelines.latency_profile.pipeline import create_pipeline

__all__ = ["create_pipeline"]
