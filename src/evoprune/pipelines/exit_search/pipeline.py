"""exit_search: the trained multi-exit network of a prune run -> the search again, judged on every exit ->
its front's networks at the selected members' FLOPs, fine-tuned and measured -> ``method_results["exit_search"]``.

Runs after ``prune`` (it reads the multi-exit network, the selected members and the dense measurements);
``kedro run --pipeline=exit_search`` also rebuilds the report, whose verdicts then compare the early-exit policy
of both searches' networks after fine-tuning.
"""

from kedro.pipeline import Node, Pipeline

from evoprune.pipelines.exit_search.nodes import finetune_front_at_member_budgets, search_all_exits


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                search_all_exits,
                [
                    "multi_exit_model",
                    "train_split",
                    "validation_split",
                    "early_exit_operating_point",
                    "params:exit_search",
                    "params:mask_search",
                    "params:seed",
                    "params:device",
                ],
                ["exit_search_front", "exit_search_metrics"],
                name="search_all_exits",
            ),
            Node(
                finetune_front_at_member_budgets,
                [
                    "exit_search_front",
                    "selected_members",
                    "train_split",
                    "validation_split",
                    "test_split",
                    "early_exit_operating_point",
                    "dense_measurements",
                    "params:finetune",
                    "params:exit_search",
                    "params:report",
                    "params:seed",
                    "params:device",
                ],
                ["method_results", "exit_search_finetune_metrics"],
                name="finetune_front_at_member_budgets",
            ),
        ]
    )
