"""Nodes of report: one table (dense, every member x variant, baselines), summary metrics and plots."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from evoprune.core import plots
from evoprune.core.exits import final_exit_key
from evoprune.tracking import to_mlflow_metrics

LEADING = ["kind", "method", "member", "flops_ratio", "params_ratio", "test_accuracy", "accuracy_drop_pt"]


def build_report(
    dense_measurements: dict[str, float],
    baseline_results: pd.DataFrame,
    chosen_members: pd.DataFrame,
    *variant_results: pd.DataFrame,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """The comparison table (one row per model) and summary metrics.

    Summary metrics per member: the best variant's accuracy drop and its margin over each baseline
    (points, positive = the member is better); per variant: its mean drop over members; and the best
    drop among members keeping at most 25% of the FLOPs.
    """
    dense = {"kind": "dense", "method": "dense", "member": -1, **dense_measurements}
    dense.update(
        flops_ratio=1.0,
        params_ratio=1.0,
        accuracy_drop_pt=0.0,
        test_accuracy=dense_measurements[final_exit_key(dense_measurements, ".test_accuracy")],
    )
    members = [t.rename(columns={"variant": "method"}).assign(kind="member") for t in variant_results if len(t)]
    baselines = baseline_results.rename(columns={"criterion": "method"}).assign(kind="baseline")
    table = pd.concat([pd.DataFrame([dense]), *members, baselines], ignore_index=True)
    before = chosen_members.set_index("member")
    final_before = final_exit_key(before.columns, "_accuracy")
    table["val_accuracy_before_finetune"] = table["member"].map(before[final_before])
    table = table[LEADING + [c for c in table.columns if c not in LEADING]]

    summary: dict[str, float] = {}
    tuned = table[table["kind"] == "member"]
    for member, rows in tuned.groupby("member"):
        best = rows.loc[rows["accuracy_drop_pt"].idxmin()]
        summary[f"member{member}.flops_ratio"] = best["flops_ratio"]
        summary[f"member{member}.best_drop_pt"] = best["accuracy_drop_pt"]
        for criterion, b in table[(table["kind"] == "baseline") & (table["member"] == member)].groupby("method"):
            summary[f"member{member}.margin_over_{criterion}_pt"] = float(
                b["accuracy_drop_pt"].iloc[0] - best["accuracy_drop_pt"]
            )
    for variant, rows in tuned.groupby("method"):
        summary[f"variant.{variant}.mean_drop_pt"] = rows["accuracy_drop_pt"].mean()
    small = tuned[tuned["flops_ratio"] <= 0.25]
    if len(small):
        summary["best_drop_pt_within_25pct_flops"] = small["accuracy_drop_pt"].min()
    return table, to_mlflow_metrics(summary)


def plot_accuracy_vs_flops(report_table: pd.DataFrame, pareto_set: pd.DataFrame) -> Figure:
    """Accuracy vs FLOPs: front before fine-tuning, members after fine-tuning per variant, baselines."""
    before_col = final_exit_key(pareto_set.columns, "_accuracy")

    def series(kind: str) -> dict[str, plots.Series]:
        rows = report_table[report_table["kind"] == kind]
        return {
            str(m): (g["flops_ratio"].tolist(), g["test_accuracy"].tolist())
            for m, g in rows.groupby("method", sort=False)
        }

    dense = report_table[report_table["kind"] == "dense"]["test_accuracy"].iloc[0]
    return plots.accuracy_after_finetuning(
        (pareto_set["flops_ratio"].tolist(), pareto_set[before_col].tolist()),
        series("member"),
        series("baseline"),
        float(dense),
        "report: accuracy vs FLOPs before and after fine-tuning",
    )


def plot_variant_comparison(report_table: pd.DataFrame) -> Figure:
    """Accuracy drop per chosen member under each re-init variant and each baseline."""
    rows = report_table[report_table["kind"] != "dense"]
    members = sorted(rows["member"].unique(), key=lambda m: -rows[rows["member"] == m]["flops_ratio"].max())
    flops = {m: rows[(rows["member"] == m) & (rows["kind"] == "member")]["flops_ratio"] for m in members}
    labels = [f"member {m}\n{100 * flops[m].iloc[0]:.0f}% FLOPs" if len(flops[m]) else f"member {m}" for m in members]
    drops: dict[str, list[float]] = {}
    for (kind, method), g in rows.groupby(["kind", "method"], sort=False):
        by_member = g.set_index("member")["accuracy_drop_pt"]
        name = f"baseline: {method}" if kind == "baseline" else str(method)
        drops[name] = [float(by_member.get(m, float("nan"))) for m in members]
    return plots.variant_comparison(labels, drops, "report: re-init variants vs baselines (same fine-tune budget)")
