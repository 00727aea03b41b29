"""finetune: one modular pipeline instantiated per re-init variant under a Kedro namespace.

``kedro run --pipeline=finetune`` measures the dense reference, selects one member per FLOPs budget
(``select_members``: candidates fine-tuned, best on validation data kept) and runs every variant on them;
``kedro run --pipeline=finetune --namespaces=finetune.rewind`` runs one variant alone from saved artifacts
(registered, every stage is a modular pipeline: the variants are ``finetune.<variant>``).
The namespaces are the variants of ``finetune.variants`` (conf/base + conf/local, see ``evoprune.pipeline_config``).
"""

from collections.abc import Sequence
from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from evoprune.pipeline_config import finetune_variants
from evoprune.pipelines.finetune.nodes import export_members, finetune_variant, measure_dense, select_members

# Inputs and parameters shared by every variant (not namespaced), in the order finetune_variant takes them.
SHARED_INPUTS = (
    "selected_members",
    "selection_finetunes",
    "multi_exit_model_init",
    "train_split",
    "validation_split",
    "test_split",
    "early_exit_operating_point",
    "dense_measurements",
)
SHARED_PARAMETERS = ("params:finetune", "params:seed", "params:report", "params:device")


def variant_pipeline(variant: str) -> Pipeline:
    """The template, namespaced as ``variant``: outputs ``<variant>.finetune_results`` and friends."""
    run_variant = update_wrapper(partial(finetune_variant, variant=variant), finetune_variant)
    template = Pipeline(
        [
            Node(
                run_variant,
                [*SHARED_INPUTS, *SHARED_PARAMETERS],
                ["finetune_results", "finetuned_members", "finetune_metrics", "finetune_runs"],
                name="finetune_members",
            ),
            Node(export_members, "finetuned_members", "exported_members", name="export_members"),
        ]
    )
    return Pipeline(
        template,
        namespace=variant,
        inputs=set(SHARED_INPUTS),
        parameters=set(SHARED_PARAMETERS),
    )


def create_pipeline(variants: Sequence[str] | None = None, **kwargs) -> Pipeline:
    """The reference measurement, the member selection and one namespace per variant.

    Args:
        variants: the namespaces; default ``finetune.variants`` of the project's conf/base + conf/local.
    """
    reference = Pipeline(
        [
            Node(
                measure_dense,
                ["pareto_members", "test_split", "early_exit_operating_point", "params:finetune", "params:device"],
                ["dense_measurements", "dense_metrics"],
                name="measure_dense",
            ),
            Node(
                select_members,
                [
                    "pareto_members",
                    "chosen_members",
                    "multi_exit_model_init",
                    "train_split",
                    "validation_split",
                    "params:finetune",
                    "params:seed",
                    "params:device",
                    "params:mask_search",
                    "latency_model",
                ],
                ["selected_members", "member_selection", "selection_metrics", "selection_finetunes"],
                name="select_members",
            ),
        ]
    )
    variants = finetune_variants() if variants is None else variants
    return sum((variant_pipeline(v) for v in variants), reference)
