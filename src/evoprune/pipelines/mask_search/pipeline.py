"""mask_search: multi-exit model -> Pareto set, history, chosen members, front plot."""

from kedro.pipeline import Node, Pipeline

from evoprune.pipelines.mask_search.nodes import (
    choose_members,
    export_members,
    plot_pareto_front,
    search_masks,
    tabulate_roulette_path,
    tabulate_search,
    time_front_candidates,
    validate_latency_model,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                search_masks,
                [
                    "multi_exit_model",
                    "train_split",
                    "validation_split",
                    "early_exit_operating_point",
                    "latency_model",
                    "params:latency_profile",
                    "params:mask_search",
                    "params:seed",
                    "params:device",
                ],
                "mask_search_outcome",
                name="search_masks",
            ),
            Node(
                tabulate_search,
                "mask_search_outcome",
                ["pareto_set", "mask_search_history", "random_masks", "mask_search_generations", "mask_search_metrics"],
                name="tabulate_search",
            ),
            Node(tabulate_roulette_path, "mask_search_outcome", "roulette_path", name="tabulate_roulette_path"),
            Node(
                time_front_candidates,
                ["pareto_set", "multi_exit_model", "params:latency_profile", "params:mask_search", "params:device"],
                "timed_pareto_set",
                name="time_front_candidates",
            ),
            Node(
                choose_members,
                ["timed_pareto_set", "params:mask_search", "multi_exit_model"],
                "chosen_members",
                name="choose_members",
            ),
            Node(export_members, ["multi_exit_model", "chosen_members"], "pareto_members", name="export_members"),
            Node(
                plot_pareto_front,
                [
                    "pareto_set",
                    "mask_search_history",
                    "random_masks",
                    "chosen_members",
                    "mask_search_outcome",
                    "params:mask_search",
                ],
                "pareto_front_plot",
                name="plot_pareto_front",
            ),
            Node(
                validate_latency_model,
                [
                    "multi_exit_model",
                    "latency_model",
                    "chosen_members",
                    "params:latency_profile",
                    "params:mask_search",
                    "params:device",
                ],
                ["latency_validation", "latency_validation_plot", "latency_validation_metrics"],
                name="validate_latency_model",
            ),
        ]
    )
