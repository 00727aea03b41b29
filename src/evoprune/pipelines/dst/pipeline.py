"""dst: θ0 (or the trained weights) of the multi-exit network -> dynamic sparse training, unstructured and
structured -> compared with magnitude pruning and structured L1 -> ``method_results["dst"]`` for the report;
with ``dst.seed_search``, prune's search again with the structured DST mask in its first population.

Runs after ``prune`` (it reads the multi-exit network, the dense measurements and the early-exit operating point
that prune saved); ``kedro run --pipeline=dst`` also rebuilds the report with the DST rows.
"""

from kedro.pipeline import Node, Pipeline

from evoprune.pipelines.dst.nodes import (
    compare_methods,
    plot_sparse_training,
    search_seeded_with_dst,
    train_structured,
    train_unstructured,
)

_START = ["multi_exit_model_init", "multi_exit_model", "train_split", "validation_split"]
_SETTINGS = ["params:dst", "params:seed", "params:device"]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_unstructured,
                [*_START, *_SETTINGS],
                ["dst_sparse_model", "dst_unstructured_layers", "dst_unstructured_history", "dst_unstructured_metrics"],
                name="train_unstructured",
            ),
            Node(
                train_structured,
                [*_START, *_SETTINGS],
                ["dst_structured_members", "dst_structured_layers", "dst_structured_history", "dst_structured_metrics"],
                name="train_structured",
            ),
            Node(
                compare_methods,
                [
                    "dst_sparse_model",
                    "dst_structured_members",
                    "multi_exit_model",
                    "multi_exit_model_init",
                    "train_split",
                    "validation_split",
                    "test_split",
                    "early_exit_operating_point",
                    "dense_measurements",
                    "params:dst",
                    "params:finetune",
                    "params:train_dense",
                    "params:seed",
                    "params:report",
                    "params:device",
                ],
                ["method_results", "dst_metrics"],
                name="compare_methods",
            ),
            Node(
                search_seeded_with_dst,
                [
                    "dst_structured_members",
                    "multi_exit_model",
                    "train_split",
                    "validation_split",
                    "early_exit_operating_point",
                    "latency_model",
                    "pareto_set",
                    "params:latency_profile",
                    "params:mask_search",
                    "params:dst",
                    "params:seed",
                    "params:device",
                ],
                ["dst_seeded_pareto_set", "dst_seeded_search_comparison", "dst_seeded_search_metrics"],
                name="search_seeded_with_dst",
            ),
            Node(
                plot_sparse_training,
                ["dst_unstructured_history", "dst_structured_history"],
                "dst_training_plot",
                name="plot_sparse_training",
            ),
        ]
    )
