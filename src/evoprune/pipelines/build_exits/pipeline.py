"""build_exits: dense model -> multi-exit model -> per-exit metrics, early-exit table, plots, latency."""

from kedro.pipeline import Node, Pipeline

from evoprune.pipelines.build_exits.nodes import (
    attach_exit_heads,
    evaluate_exits,
    initial_multi_exit_weights,
    measure_latency,
    plot_early_exit_tradeoff,
    plot_exit_accuracy,
    train_exit_heads,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                attach_exit_heads,
                ["dense_model", "params:build_exits", "params:seed"],
                "multi_exit_model_untrained",
                name="attach_exit_heads",
            ),
            Node(
                initial_multi_exit_weights,
                ["dense_model_init", "multi_exit_model_untrained"],
                "multi_exit_model_init",
                name="initial_multi_exit_weights",
            ),
            Node(
                train_exit_heads,
                [
                    "multi_exit_model_untrained",
                    "train_split",
                    "validation_split",
                    "params:build_exits",
                    "params:seed",
                    "params:device",
                ],
                ["multi_exit_model", "build_exits_history"],
                name="train_exit_heads",
            ),
            Node(
                evaluate_exits,
                ["multi_exit_model", "validation_split", "test_split", "params:build_exits", "params:device"],
                ["exit_summary", "early_exit_table", "early_exit_operating_point", "build_exits_metrics"],
                name="evaluate_exits",
            ),
            Node(
                measure_latency,
                ["multi_exit_model", "test_split", "early_exit_operating_point", "params:build_exits", "params:device"],
                "build_exits_latency",
                name="measure_early_exit_latency",
            ),
            Node(plot_exit_accuracy, "exit_summary", "exit_accuracy_plot", name="plot_exit_accuracy"),
            Node(
                plot_early_exit_tradeoff,
                ["early_exit_table", "exit_summary", "early_exit_operating_point"],
                "early_exit_tradeoff_plot",
                name="plot_early_exit_tradeoff",
            ),
        ]
    )
