"""Nodes of report: one table (dense, every member x variant, baselines), summary metrics and plots."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from evoprune.core import plots
from evoprune.core.exits import final_exit_key
from evoprune.core.report_table import budget_verdicts, comparison_table, summary_metrics
from evoprune.tracking import to_mlflow_metrics


def build_report(
    dense_measurements: dict[str, float],
    baseline_results: pd.DataFrame,
    chosen_members: pd.DataFrame,
    method_results: dict[str, pd.DataFrame],
    *variant_results: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, object]]:
    """The comparison table, the verdict per budget and the summary (``evoprune.core.report_table``).

    Returns: one row per model and fine-tune seed (dense, every member x variant, baselines, the rows of the
    methods that ran in their own pipelines, e.g. ``dst``) with mean, std and paired margin over the seeds; one
    verdict per member budget (best member vs best baseline, winner, margin beyond its std); summary metrics:
    per member, the best variant's accuracy drop, its margin over each baseline and the verdict; per variant,
    its mean drop over members; the best drop among members within 25% of the FLOPs.
    """
    table = comparison_table(dense_measurements, baseline_results, chosen_members, variant_results, method_results)
    return table, budget_verdicts(table), to_mlflow_metrics(summary_metrics(table))


def plot_accuracy_vs_flops(report_table: pd.DataFrame, pareto_set: pd.DataFrame) -> Figure:
    """Accuracy vs FLOPs: front before fine-tuning, members after fine-tuning per variant (and the rows of methods
    beside prune, labelled ``<kind>: <method>``), baselines."""
    before_col = final_exit_key(pareto_set.columns, "_accuracy")
    kind = report_table["kind"]
    others = report_table[~kind.isin(["dense", "member", "baseline"])]
    methods = _series(report_table[kind == "member"], "method") | _series(others, ["kind", "method"])
    return plots.accuracy_after_finetuning(
        (pareto_set["flops_ratio"].tolist(), pareto_set[before_col].tolist()),
        methods,
        _series(report_table[kind == "baseline"], "method"),
        float(report_table[kind == "dense"]["test_accuracy"].iloc[0]),
        "report: accuracy vs FLOPs before and after fine-tuning",
    )


def _series(rows: pd.DataFrame, by: str | list[str]) -> dict[str, plots.Series]:
    """(FLOPs ratio, test accuracy) per group of ``rows`` (means over the fine-tune seeds), labelled by the
    group's key(s) joined with ': '."""
    keys = [by] if isinstance(by, str) else by
    rows = rows.groupby([*keys, "member"], sort=False)[["flops_ratio", "test_accuracy"]].mean().reset_index()
    return {
        ": ".join(map(str, key)) if isinstance(key, tuple) else str(key): (
            g["flops_ratio"].tolist(),
            g["test_accuracy"].tolist(),
        )
        for key, g in rows.groupby(by, sort=False)
    }


def plot_variant_comparison(report_table: pd.DataFrame) -> Figure:
    """Accuracy drop per chosen member under each re-init variant and each baseline (means over seeds)."""
    rows = report_table[report_table["kind"].isin(["member", "baseline"])]
    members = sorted(rows["member"].unique(), key=lambda m: -rows[rows["member"] == m]["flops_ratio"].max())
    flops = {m: rows[(rows["member"] == m) & (rows["kind"] == "member")]["flops_ratio"] for m in members}
    labels = [f"member {m}\n{100 * flops[m].iloc[0]:.0f}% FLOPs" if len(flops[m]) else f"member {m}" for m in members]
    drops: dict[str, list[float]] = {}
    for (kind, method), g in rows.groupby(["kind", "method"], sort=False):
        by_member = g.groupby("member")["accuracy_drop_pt"].mean()  # over the fine-tune seeds
        name = f"baseline: {method}" if kind == "baseline" else str(method)
        drops[name] = [float(by_member.get(m, float("nan"))) for m in members]
    return plots.variant_comparison(labels, drops, "report: re-init variants vs baselines (same fine-tune budget)")
