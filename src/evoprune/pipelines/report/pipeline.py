"""report: every variant's results + baselines + dense reference -> table, summary metrics, plots."""

import warnings

from kedro.pipeline import Node, Pipeline

from evoprune.core.reinit import VARIANTS
from evoprune.pipelines.report.nodes import build_report, plot_accuracy_vs_flops, plot_variant_comparison


def create_pipeline(**kwargs) -> Pipeline:
    with warnings.catch_warnings():
        # `<variant>.finetune_results` are names Kedro's namespacing gave the finetune outputs; reading
        # them from outside the namespace is intended, so Kedro's advice against dotted names does not apply.
        warnings.filterwarnings("ignore", message="One or more dataset names contain")
        return _report()


def _report() -> Pipeline:
    return Pipeline(
        [
            Node(
                build_report,
                [
                    "dense_measurements",
                    "baseline_results",
                    "chosen_members",
                    *(f"{v}.finetune_results" for v in VARIANTS),
                ],
                ["report_table", "report_metrics"],
                name="build_report",
            ),
            Node(
                plot_accuracy_vs_flops, ["report_table", "pareto_set"], "accuracy_vs_flops_plot", name="plot_accuracy"
            ),
            Node(plot_variant_comparison, "report_table", "variant_comparison_plot", name="plot_variant_comparison"),
        ]
    )
