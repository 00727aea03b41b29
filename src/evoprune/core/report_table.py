"""The comparison table of a prune run (dense model, every member x re-init variant, baselines: one row per
model and fine-tune seed), its statistics over seeds, the verdict per budget and the figures that summarise it.

With ``report.seeds: N`` every member and baseline is fine-tuned with N seeds. Each row then carries its
method's mean and std over the seeds at that budget (``test_accuracy_mean``, ``test_accuracy_std``, ``n_seeds``)
and its margin over the best baseline at the same budget (the baseline with the highest mean accuracy), paired
by seed: ``margin_over_best_baseline_pt`` for its own seed, ``..._mean`` and ``..._std`` over the seeds.
``budget_verdicts`` says per budget which method wins and whether the best member's margin exceeds its std.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, PositiveInt

from evoprune.core.exits import final_exit_key


class ReportParams(BaseModel):
    """conf/base/parameters_report.yml: what the report asks of the fine-tunes (finetune and baselines read it)."""

    model_config = ConfigDict(extra="forbid")

    seeds: PositiveInt = 1  # fine-tune seeds per member and baseline: seed, seed + 1, ...


LEADING = ["kind", "method", "member", "seed", "flops_ratio", "params_ratio", "test_accuracy", "accuracy_drop_pt"]
MODEL = ["kind", "method", "member"]  # what a model is; its rows differ by seed
MARGIN = "margin_over_best_baseline_pt"
SMALL_FLOPS_RATIO = 0.25  # "best drop among members keeping at most this share of the FLOPs"


def comparison_table(
    dense_measurements: Mapping[str, float],
    baseline_results: pd.DataFrame,
    chosen_members: pd.DataFrame,
    variant_results: Sequence[pd.DataFrame],
    method_results: Mapping[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """One row per model and fine-tune seed: ``kind`` (dense | member | baseline, or the method family of a
    pipeline beside prune, e.g. dst), ``method`` (variant, criterion or method), ``member`` and ``seed`` first,
    then every measurement, plus each member's final-exit validation accuracy before fine-tuning and predicted
    latency ratio (from mask_search's ``chosen_members``), then the statistics over seeds (``seed_statistics``).
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
    if "seed" not in table:  # results of a run before seeds were recorded: one replicate each
        table["seed"] = np.nan
    table = seed_statistics(table)
    return table[LEADING + [c for c in table.columns if c not in LEADING]]


def seed_statistics(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with, per row, its model's mean, std (ddof 1; NaN for one seed) and number of seeds of the test
    accuracy, and its margin in points over the best baseline at its budget (``member``), paired by seed."""
    table = table.copy()
    accuracy = table.groupby(MODEL, sort=False, dropna=False)["test_accuracy"]
    table["test_accuracy_mean"] = accuracy.transform("mean")
    table["test_accuracy_std"] = accuracy.transform("std")
    table["n_seeds"] = accuracy.transform("count")
    baselines = table[table["kind"] == "baseline"]
    best = (
        baselines.sort_values("test_accuracy_mean", ascending=False, kind="stable").groupby("member")["method"].first()
    )
    reference = baselines[baselines["method"].eq(baselines["member"].map(best))]
    by_seed = reference.set_index(["member", reference["seed"].fillna(-1)])["test_accuracy"]
    keys = pd.MultiIndex.from_arrays([table["member"], table["seed"].fillna(-1)])
    table["best_baseline"] = table["member"].map(best)
    table[MARGIN] = 100.0 * (table["test_accuracy"].to_numpy() - by_seed.reindex(keys).to_numpy())
    margin = table.groupby(MODEL, sort=False, dropna=False)[MARGIN]
    table[f"{MARGIN}_mean"] = margin.transform("mean")
    table[f"{MARGIN}_std"] = margin.transform("std")
    return table


def budget_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """One row per member budget: the best member method (highest mean accuracy over seeds) and the best
    baseline, their means and stds, the paired margin of the one over the other (mean, std, points), the winner
    among every method at that budget (``kind: method``), whether a member wins and whether its margin exceeds
    the margin's std (needs two seeds or more)."""
    rows = []
    for member, at_budget in table[table["kind"] != "dense"].groupby("member", sort=False):
        models = at_budget.groupby(MODEL, sort=False).first().reset_index()
        members, baselines = models[models["kind"] == "member"], models[models["kind"] == "baseline"]
        if not len(members):
            continue
        top = members.loc[members["test_accuracy_mean"].idxmax()]
        winner = models.loc[models["test_accuracy_mean"].idxmax()]
        row = {
            "member": member,
            "flops_ratio": float(at_budget[at_budget["method"].eq(top["method"])]["flops_ratio"].mean()),
            "best_member_method": top["method"],
            "best_member_accuracy_mean": top["test_accuracy_mean"],
            "best_member_accuracy_std": top["test_accuracy_std"],
            "n_seeds": int(top["n_seeds"]),
            "winner": f"{winner['kind']}: {winner['method']}",
        }
        if len(baselines):
            base = baselines.loc[baselines["test_accuracy_mean"].idxmax()]
            row |= {
                "best_baseline": base["method"],
                "best_baseline_flops_ratio": float(
                    at_budget[at_budget["method"].eq(base["method"])]["flops_ratio"].mean()
                ),
                "best_baseline_accuracy_mean": base["test_accuracy_mean"],
                "best_baseline_accuracy_std": base["test_accuracy_std"],
                "margin_pt_mean": top[f"{MARGIN}_mean"],
                "margin_pt_std": top[f"{MARGIN}_std"],
                "member_wins": bool(top[f"{MARGIN}_mean"] > 0),
                "margin_exceeds_std": bool(top["n_seeds"] >= 2 and top[f"{MARGIN}_mean"] > top[f"{MARGIN}_std"]),
            }
        rows.append(row)
    verdicts = pd.DataFrame(rows)
    early = early_exit_verdicts(table)
    return verdicts.merge(early, on="member", how="left") if len(early) and len(verdicts) else verdicts


POLICY_ACCURACY, POLICY_FLOPS = "early_exit.test_accuracy", "early_exit.expected_flops"


def early_exit_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """Per member budget where the search judged on every exit (rows of kind ``exit_search``) has a network: the
    early-exit policy of the member (variant ``keep``, searched for the final exit) against it, both fine-tuned
    alike: test accuracy (means over seeds), expected FLOPs as a ratio of the dense network's, the paired
    accuracy margin of the exit search (points, by seed) and the verdict: which dominates, or a trade-off."""
    kinds = table["kind"]
    if POLICY_ACCURACY not in table or not kinds.eq("exit_search").any():
        return pd.DataFrame()
    dense_flops = float(table.loc[kinds == "dense", "flops"].iloc[0])
    rows = []
    for member, at in table[kinds.isin(["member", "exit_search"])].groupby("member", sort=False):
        final, every = at[(at["kind"] == "member") & (at["method"] == "keep")], at[at["kind"] == "exit_search"]
        if not len(final) or not len(every):
            continue
        by_seed = [rows_.set_index(rows_["seed"].fillna(-1))[POLICY_ACCURACY] for rows_ in (every, final)]
        margin = 100.0 * (by_seed[0] - by_seed[1]).dropna()
        cost = [rows_[POLICY_FLOPS].mean() / dense_flops for rows_ in (final, every)]
        gain, saving = margin.mean(), cost[0] - cost[1]
        verdict = (
            "exit_search dominates"
            if gain >= 0 and saving >= 0
            else "final-exit search dominates"
            if gain <= 0 and saving <= 0
            else "trade-off"
        )
        rows.append(
            {
                "member": member,
                "early_exit.final_search_accuracy_mean": final[POLICY_ACCURACY].mean(),
                "early_exit.final_search_expected_flops_ratio": cost[0],
                "early_exit.exit_search_method": every["method"].iloc[0],
                "early_exit.exit_search_flops_ratio": every["flops_ratio"].mean(),
                "early_exit.exit_search_accuracy_mean": every[POLICY_ACCURACY].mean(),
                "early_exit.exit_search_expected_flops_ratio": cost[1],
                "early_exit.margin_pt_mean": gain,
                "early_exit.margin_pt_std": margin.std(),
                "early_exit.verdict": verdict,
            }
        )
    return pd.DataFrame(rows)


def summary_metrics(table: pd.DataFrame) -> dict[str, float]:
    """From the means over seeds: per member, the best variant's accuracy drop and its margin over each
    baseline (points, positive = the member is better), and the verdict of ``budget_verdicts`` (paired margin
    over the best baseline, its std, whether the member wins and whether the margin exceeds the std, as 1/0);
    per variant, its mean drop over members; the best drop among members keeping at most ``SMALL_FLOPS_RATIO``
    of the FLOPs; how many budgets members win, and win beyond the std."""
    summary: dict[str, float] = {}
    means = table.groupby(MODEL, sort=False, dropna=False).mean(numeric_only=True).reset_index()
    tuned = means[means["kind"] == "member"]
    for member, rows in tuned.groupby("member"):
        best = rows.loc[rows["accuracy_drop_pt"].idxmin()]
        summary[f"member{member}.flops_ratio"] = best["flops_ratio"]
        summary[f"member{member}.best_drop_pt"] = best["accuracy_drop_pt"]
        for criterion, b in means[(means["kind"] == "baseline") & (means["member"] == member)].groupby("method"):
            summary[f"member{member}.margin_over_{criterion}_pt"] = float(
                b["accuracy_drop_pt"].iloc[0] - best["accuracy_drop_pt"]
            )
    verdicts = budget_verdicts(table)
    for v in verdicts.to_dict("records") if "margin_pt_mean" in verdicts else []:
        key = f"member{v['member']}"
        summary[f"{key}.margin_over_best_baseline_pt"] = v["margin_pt_mean"]
        if not np.isnan(v["margin_pt_std"]):
            summary[f"{key}.margin_over_best_baseline_std_pt"] = v["margin_pt_std"]
        summary[f"{key}.member_wins"] = float(v["member_wins"])
        summary[f"{key}.margin_exceeds_std"] = float(v["margin_exceeds_std"])
    for v in verdicts.to_dict("records") if "early_exit.verdict" in verdicts else []:
        if isinstance(v["early_exit.verdict"], str):
            key = f"member{v['member']}.exit_search"
            summary[f"{key}.policy_margin_pt"] = v["early_exit.margin_pt_mean"]
            summary[f"{key}.expected_flops_ratio_diff"] = (
                v["early_exit.exit_search_expected_flops_ratio"] - v["early_exit.final_search_expected_flops_ratio"]
            )
            summary[f"{key}.dominates"] = float(v["early_exit.verdict"] == "exit_search dominates")
    if "member_wins" in verdicts:
        summary["budgets_won_by_members"] = float(verdicts["member_wins"].sum())
        summary["budgets_won_beyond_std"] = float(verdicts["margin_exceeds_std"].sum())
    for variant, rows in tuned.groupby("method"):
        summary[f"variant.{variant}.mean_drop_pt"] = rows["accuracy_drop_pt"].mean()
    small = tuned[tuned["flops_ratio"] <= SMALL_FLOPS_RATIO]
    if len(small):
        summary[f"best_drop_pt_within_{round(100 * SMALL_FLOPS_RATIO)}pct_flops"] = small["accuracy_drop_pt"].min()
    return summary
