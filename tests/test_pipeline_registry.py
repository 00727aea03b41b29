"""Registered pipelines: every stage a Kedro modular pipeline (one box per stage in Kedro-Viz) whose datasets
and parameters keep their names."""

from kedro.pipeline import Pipeline

from evoprune.pipeline_config import finetune_variants
from evoprune.pipeline_registry import PRUNE_STAGES, register_pipelines


def test_each_stage_is_one_namespace_with_the_variants_inside_finetune():
    pipelines = register_pipelines()
    prune = pipelines["prune"]
    top_level = {n.namespace.split(".")[0] for n in prune.nodes}
    assert top_level == set(PRUNE_STAGES)  # one box per stage, no node outside them
    inside_finetune = {n.namespace for n in prune.nodes if n.namespace.startswith("finetune.")}
    assert inside_finetune == {f"finetune.{v}" for v in finetune_variants()}
    assert prune.only_nodes_with_namespaces(["finetune.rewind"]).all_outputs() == {
        "rewind.finetune_results",
        "rewind.finetuned_members",
        "rewind.finetune_metrics",
        "rewind.finetune_runs",
        "rewind.exported_members",
    }


def test_namespacing_keeps_every_dataset_and_parameter_name():
    raw = sum((create() for create in PRUNE_STAGES.values()), Pipeline([]))
    prune = register_pipelines()["prune"]
    assert prune.inputs() == raw.inputs() and prune.all_outputs() == raw.all_outputs()
    assert len(prune.nodes) == len(raw.nodes)
