"""Project pipelines: every stage alone, and `prune` = all stages in order.

Stages are listed explicitly rather than found with ``find_pipelines``: since Kedro 1.7 that function
only imports the folders named by ``--pipeline``, so a composite name such as ``prune`` finds nothing.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from evoprune.pipelines import baselines, build_exits, data_preparation, finetune, mask_search, report, train_dense

# Stages of `prune`, in order. `finetune` holds one namespace per variant of `finetune.variants`
# (evoprune.pipeline_config; `kedro run --pipeline=finetune --namespaces=rewind` runs one alone).
PRUNE_STAGES = {
    "data_preparation": data_preparation.create_pipeline,
    "train_dense": train_dense.create_pipeline,
    "build_exits": build_exits.create_pipeline,
    "mask_search": mask_search.create_pipeline,
    "finetune": finetune.create_pipeline,
    "baselines": baselines.create_pipeline,
    "report": report.create_pipeline,
}


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        Each stage by its folder name, ``prune`` (all stages) and ``__default__`` (= ``prune``).
    """
    pipelines = {name: create() for name, create in PRUNE_STAGES.items()}
    pipelines["prune"] = sum(pipelines.values(), Pipeline([]))
    pipelines["__default__"] = pipelines["prune"]
    return pipelines
