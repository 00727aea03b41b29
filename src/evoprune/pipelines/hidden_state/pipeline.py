"""hidden_state: the dense LSTM -> hidden-state pruning at each target sparsity (thresholds on validation),
as trained and fine-tuned with the pruning in its forward -> ``method_results["hidden_state"]`` for the report.

Runs after ``prune`` on an LSTM (``--env=lstm``): it reads the dense model and its measurements;
``kedro run --pipeline=hidden_state --env=lstm`` also rebuilds the report with the new rows.
"""

from kedro.pipeline import Node, Pipeline

from evoprune.pipelines.hidden_state.nodes import plot_hidden_state, prune_hidden_states


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                prune_hidden_states,
                [
                    "dense_model",
                    "train_split",
                    "validation_split",
                    "test_split",
                    "dense_measurements",
                    "params:hidden_state",
                    "params:seed",
                    "params:device",
                ],
                ["method_results", "hidden_state_metrics"],
                name="prune_hidden_states",
            ),
            Node(
                plot_hidden_state,
                ["method_results", "dense_measurements"],
                "hidden_state_plot",
                name="plot_hidden_state",
            ),
        ]
    )
