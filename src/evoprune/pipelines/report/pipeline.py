"""report: every variant's results + baselines + dense reference -> table, summary metrics, plots."""

import warnings
from collections.abc import Sequence

from kedro.pipeline import Node, Pipeline

from evoprune.pipeline_config import finetune_variants
from evoprune.pipelines.report.nodes import build_report, plot_accuracy_vs_flops, plot_variant_comparison


def create_pipeline(variants: Sequence[str] | None = None, **kwargs) -> Pipeline:
    """Table, summary and plots over the results of every finetune namespace.

    Args:
        variants: the finetune namespaces read; default ``finetune.variants`` (see ``evoprune.pipeline_config``).
    """
    with warnings.catch_warnings():
        # `<variant>.finetune_results` are names Kedro's namespacing gave the finetune outputs; reading
        # them from outside the namespace is intended, so Kedro's advice against dotted names does not apply.
        warnings.filterwarnings("ignore", message="One or more dataset names contain")
        return _report(finetune_variants() if variants is None else variants)


def _report(variants: Sequence[str]) -> Pipeline:
    return Pipeline(
        [
            Node(
                build_report,
                [
                    "dense_measurements",
                    "baseline_results",
                    "chosen_members",
                    "method_results",
                    *(f"{v}.finetune_results" for v in variants),
                ],
                ["report_table", "report_verdicts", "report_metrics"],
                name="build_report",
            ),
            Node(
                plot_accuracy_vs_flops, ["report_table", "pareto_set"], "accuracy_vs_flops_plot", name="plot_accuracy"
            ),
            Node(plot_variant_comparison, "report_table", "variant_comparison_plot", name="plot_variant_comparison"),
        ]
    )
