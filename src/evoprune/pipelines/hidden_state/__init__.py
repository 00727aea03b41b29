"""hidden_state: hidden-state pruning of an LSTM at run time (kedro run --pipeline=hidden_state --env=lstm)."""

from evoprune.pipelines.hidden_state.pipeline import create_pipeline

__all__ = ["create_pipeline"]
