"""data_preparation: raw images -> train / validation / test splits."""

from kedro.pipeline import Node, Pipeline

from evoprune.pipelines.data_preparation.nodes import split_dataset, summarise_splits


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                split_dataset,
                inputs=["raw_images", "params:data_preparation", "params:seed"],
                outputs=["train_split", "validation_split", "test_split"],
                name="split_dataset",
            ),
            Node(
                summarise_splits,
                inputs=["train_split", "validation_split", "test_split"],
                outputs="data_preparation_metrics",
                name="summarise_splits",
            ),
        ]
    )
