"""Project pipelines: every stage alone, and `prune` = all stages in order.

Stages are listed explicitly rather than found with ``find_pipelines``: since Kedro 1.7 that function
only imports the folders named by ``--pipeline``, so a composite name such as ``prune`` finds nothing.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from evoprune.pipelines import (
    baselines,
    build_exits,
    data_preparation,
    dst,
    exit_search,
    finetune,
    hidden_state,
    latency_profile,
    mask_search,
    report,
    scoring_net,
    train_dense,
)

# Stages of `prune`, in order. Each stage is a Kedro modular pipeline under its own namespace (Kedro-Viz
# draws one box per stage; `kedro run --namespaces=mask_search` runs one stage); `finetune` holds one
# namespace per variant of `finetune.variants` (evoprune.pipeline_config; `--namespaces=finetune.rewind`
# runs one variant alone).
PRUNE_STAGES = {
    "data_preparation": data_preparation.create_pipeline,
    "train_dense": train_dense.create_pipeline,
    "build_exits": build_exits.create_pipeline,
    "latency_profile": latency_profile.create_pipeline,
    "mask_search": mask_search.create_pipeline,
    "finetune": finetune.create_pipeline,
    "baselines": baselines.create_pipeline,
    "report": report.create_pipeline,
}


def as_stage(name: str, pipeline: Pipeline) -> Pipeline:
    """``pipeline`` as a modular pipeline: its nodes under namespace ``name``, its datasets and parameters
    keeping their names (the catalog, MLflow keys and the other stages see no change)."""
    parameters = {d for d in pipeline.inputs() if d.startswith("params:")}
    return Pipeline(
        pipeline,
        namespace=name,
        inputs=pipeline.inputs() - parameters,
        outputs=pipeline.all_outputs(),
        parameters=parameters,
    )


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        Each stage by its folder name, ``prune`` (all stages) and ``__default__`` (= ``prune``); beside them
        ``dst`` (dynamic sparse training after a prune run, then the report again with its rows) and
        ``hidden_state`` (hidden-state pruning of an LSTM after a prune run, then the report again),
        ``scoring_net`` (a learned criterion's masks at the members' budgets after a prune run, then the report) and
        ``exit_search`` (the search judged on every exit, its networks at the members' budgets, then the report).
    """
    pipelines = {name: as_stage(name, create()) for name, create in PRUNE_STAGES.items()}
    pipelines["prune"] = sum(pipelines.values(), Pipeline([]))
    pipelines["__default__"] = pipelines["prune"]
    pipelines["dst"] = as_stage("dst", dst.create_pipeline()) + pipelines["report"]
    pipelines["hidden_state"] = as_stage("hidden_state", hidden_state.create_pipeline()) + pipelines["report"]
    pipelines["scoring_net"] = as_stage("scoring_net", scoring_net.create_pipeline()) + pipelines["report"]
    pipelines["exit_search"] = as_stage("exit_search", exit_search.create_pipeline()) + pipelines["report"]
    return pipelines
