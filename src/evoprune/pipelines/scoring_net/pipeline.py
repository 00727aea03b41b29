"""scoring_net: the trained network of a prune run -> Scoring Net trained in stages -> its masks at the selected
members' FLOPs, fine-tuned and measured -> ``method_results["scoring_net"]`` for the report; and the same Scoring
Net applied to the ``transfer.targets`` (other models, datasets, class splits) -> ``scoring_net_transfer``.

Runs after ``prune`` (it reads the multi-exit network, the selected members and the dense measurements);
``kedro run --pipeline=scoring_net`` also rebuilds the report with its rows.
"""

from kedro.pipeline import Node, Pipeline

from evoprune.pipelines.scoring_net.nodes import prune_with_scoring_net, train_criterion, transfer_criterion


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_criterion,
                [
                    "multi_exit_model",
                    "train_split",
                    "validation_split",
                    "params:scoring_net",
                    "params:seed",
                    "params:device",
                ],
                ["scoring_net", "scoring_net_history", "scoring_net_training_metrics"],
                name="train_scoring_net",
            ),
            Node(
                prune_with_scoring_net,
                [
                    "scoring_net",
                    "selected_members",
                    "train_split",
                    "validation_split",
                    "test_split",
                    "early_exit_operating_point",
                    "dense_measurements",
                    "params:finetune",
                    "params:scoring_net",
                    "params:mask_search.search.max_pruning_ratio",
                    "params:mask_search.search.round_to",
                    "params:seed",
                    "params:report",
                    "params:device",
                ],
                ["method_results", "scoring_net_metrics"],
                name="prune_with_scoring_net",
            ),
            Node(
                transfer_criterion,
                [
                    "scoring_net",
                    "train_split",
                    "test_split",
                    "params:scoring_net",
                    "params:finetune",
                    "params:seed",
                    "params:device",
                ],
                ["scoring_net_transfer", "scoring_net_transfer_plot", "scoring_net_transfer_metrics"],
                name="transfer_scoring_net",
            ),
        ]
    )
