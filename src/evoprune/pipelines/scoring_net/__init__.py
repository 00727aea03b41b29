"""scoring_net: a learned pruning criterion (after S. Wang 2024; our design) trained on the network of a prune run,
its masks at the members' budgets fine-tuned and reported (kedro run --pipeline=scoring_net)."""

from evoprune.pipelines.scoring_net.pipeline import create_pipeline

__all__ = ["create_pipeline"]
