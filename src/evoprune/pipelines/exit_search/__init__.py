"""exit_search: the search judged on every exit of the multi-exit network (Chen 2022's GA on the whole network)
against prune's members, searched for the final exit, on the early-exit policy after fine-tuning
(kedro run --pipeline=exit_search after prune)."""

from evoprune.pipelines.exit_search.pipeline import create_pipeline

__all__ = ["create_pipeline"]
