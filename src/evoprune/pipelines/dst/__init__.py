"""dst: dynamic sparse training, beside prune (``kedro run --pipeline=dst``)."""

from evoprune.pipelines.dst.pipeline import create_pipeline

__all__ = ["create_pipeline"]
