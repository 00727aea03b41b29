"""The comparison table of a prune run (dense model, every member x re-init variant, baselines: one row per
model) and the figures that summarise it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from evoprune.core.exits import final_exit_key

LEADING = ["kind", "method", "member", "flops_ratio", "params_ratio", "test_accuracy", "accuracy_drop_pt"]
SMALL_FLOPS_RATIO = 0.25  # "best drop among members keeping at most this share of the FLOPs"


def comparison_table(
    dense_measurements: Mapping[str, float],
    baseline_results: pd.DataFrame,
    chosen_members: pd.DataFrame,
    variant_results: Sequence[pd.DataFrame],
    method_results: Mapping[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """One row per model: ``kind`` (dense | member | baseline, or the method family of a pipeline beside
    prune, e.g. dst) and ``method`` (variant, criterion or method) first, then every measurement, plus each
    member's final-exit validation accuracy before fine-tuning and predicted latency ratio (from mask_search's
    ``chosen_members``).
    Empty variant tables (variants skipped) add nothing; ``method_results`` rows keep their own ``kind``."""
    dense = {"kind": "dense", "method": "dense", "member": -1, **dense_measurements}
    dense.update(
        flops_ratio=1.0,
        params_ratio=1.0,
        accuracy_drop_pt=0.0,
        test_accuracy=dense_measurements[final_exit_key(dense_measurements, ".test_accuracy")],
    )
    members = [t.rename(columns={"variant": "method"}).assign(kind="member") for t in variant_results if len(t)]
    baselines = baseline_results.rename(columns={"criterion": "method"}).assign(kind="baseline")
    others = [t.assign(kind=t["kind"] if "kind" in t else name) for name, t in (method_results or {}).items() if len(t)]
    table = pd.concat([pd.DataFrame([dense]), *members, baselines, *others], ignore_index=True)
    before = chosen_members.set_index("member")
    final_before = final_exit_key(before.columns, "_accuracy")
    table["val_accuracy_before_finetune"] = table["member"].map(before[final_before])
    if "latency_ratio" in before:  # the latency model's prediction for the member's mask (beside measured speed-ups)
        is_member = table["kind"] == "member"
        table.loc[is_member, "predicted_latency_ratio"] = table.loc[is_member, "member"].map(before["latency_ratio"])
    return table[LEADING + [c for c in table.columns if c not in LEADING]]


def summary_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Per member: the best variant's accuracy drop and its margin over each baseline (points, positive =
    the member is better); per variant: its mean drop over members; and the best drop among members keeping
    at most ``SMALL_FLOPS_RATIO`` of the FLOPs."""
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
    small = tuned[tuned["flops_ratio"] <= SMALL_FLOPS_RATIO]
    if len(small):
        summary[f"best_drop_pt_within_{round(100 * SMALL_FLOPS_RATIO)}pct_flops"] = small["accuracy_drop_pt"].min()
    return summary
