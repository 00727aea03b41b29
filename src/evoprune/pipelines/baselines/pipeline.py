"""baselines: trained network + the selected members' FLOPs (or predicted latency) -> Torch-Pruning's criteria pruned
to them, fine-tuned, measured."""

from kedro.pipeline import Node, Pipeline

from evoprune.pipelines.baselines.nodes import finetune_roulette_branch, prune_baselines


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                prune_baselines,
                [
                    "selected_members",
                    "train_split",
                    "validation_split",
                    "test_split",
                    "early_exit_operating_point",
                    "dense_measurements",
                    "latency_model",
                    "params:finetune",
                    "params:baselines",
                    "params:mask_search",
                    "params:seed",
                    "params:report",
                    "params:device",
                ],
                ["baseline_results", "baseline_metrics", "baseline_runs"],
                name="prune_baselines",
            ),
            Node(
                finetune_roulette_branch,
                [
                    "selected_members",
                    "roulette_path",
                    "train_split",
                    "validation_split",
                    "test_split",
                    "early_exit_operating_point",
                    "dense_measurements",
                    "params:finetune",
                    "params:baselines",
                    "params:report",
                    "params:seed",
                    "params:device",
                ],
                ["method_results", "roulette_metrics"],
                name="finetune_roulette_branch",
            ),
        ]
    )
