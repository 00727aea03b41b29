"""latency_profile: multi-exit model -> latency tables of the target (cached by key)."""

from kedro.pipeline import Node, Pipeline

from evoprune.pipelines.latency_profile.nodes import profile_latency_tables


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                profile_latency_tables,
                [
                    "multi_exit_model",
                    "latency_table_cache",
                    "params:latency_profile",
                    "params:mask_search.search.round_to",
                    "params:device",
                ],
                ["latency_model", "latency_profile_metrics"],
                name="profile_latency_tables",
            )
        ]
    )
