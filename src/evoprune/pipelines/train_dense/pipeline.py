"""train_dense: initial weights θ0 -> trained dense model -> metrics and curves."""

from kedro.pipeline import Node, Pipeline

from evoprune.pipelines.train_dense.nodes import (
    evaluate_dense_model,
    initialise_model,
    plot_training_history,
    train_dense_model,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                initialise_model,
                inputs=["params:train_dense", "params:seed"],
                outputs="dense_model_init",
                name="initialise_model",
            ),
            Node(
                train_dense_model,
                inputs=[
                    "dense_model_init",
                    "train_split",
                    "validation_split",
                    "params:train_dense",
                    "params:seed",
                    "params:device",
                ],
                outputs=["dense_model", "train_dense_history"],
                name="train_dense_model",
            ),
            Node(
                evaluate_dense_model,
                inputs=["dense_model", "validation_split", "test_split", "params:device"],
                outputs="train_dense_metrics",
                name="evaluate_dense_model",
            ),
            Node(
                plot_training_history,
                inputs=["train_dense_history", "params:train_dense"],
                outputs="dense_training_curves",
                name="plot_training_history",
            ),
        ]
    )
