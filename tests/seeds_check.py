"""`report.seeds: 2` and `finetune.selection_refit: linear_l1` on the artifacts of a finished tiny
`prune` run: the fine-tunes (members, baselines with Torch-Pruning's Taylor criterion ranked both ways, the roulette
branch method's networks) repeated per seed, the seeded report, its verdicts and summary metrics; the check runs
inside ``tests/test_prune_session.py::test_prune_run_is_tracked_in_mlflow``."""

from pathlib import Path

import mlflow
import pandas as pd

from evoprune.core.selection import REFIT_ID_OFFSET
from tests.conftest import run_tiny_session

SEEDS = [42, 43]  # the project's seed and the next


def assert_seeded_report_after_prune(project: Path, client: mlflow.MlflowClient, experiment: str) -> None:
    """Every member x variant and baseline x budget has one row per seed with mean, std and the paired margin over
    the best baseline; one verdict per budget; the summary's verdict metrics and per-seed child runs are logged."""
    params = {
        "report": {"seeds": 2},
        "finetune": {"variants": ["keep"], "selection_refit": "linear_l1"},
        "baselines": {
            "criteria": ["l1", "taylor"],
            "rankings": ["budget_fit", "torch_pruning"],
            "roulette_branch": True,
        },
        "mask_search": {"roulette_branch": {"branch_size": 3, "max_levels": 12}},  # a path down to the budgets
    }
    run_tiny_session(project, ["mask_search", "finetune", "baselines", "report"], runtime_params=params)
    reporting = project / "data/tiny/08_reporting"
    report = pd.read_csv(reporting / "report_table.csv")
    members = sorted(report.loc[report["kind"] == "member", "member"].unique())
    methods = {"member": ["keep"], "baseline": ["l1", "taylor", "tp_l1", "tp_taylor"]}
    for kind, names in methods.items():
        rows = report[report["kind"] == kind]
        assert sorted(rows["method"].unique()) == sorted(names)
        assert len(rows) == len(names) * len(members) * len(SEEDS)
        assert all(sorted(seeds) == SEEDS for _, seeds in rows.groupby(["method", "member"])["seed"])
    assert (report.loc[report["kind"].isin(["member", "baseline"]), "n_seeds"] == 2).all()  # dst's rows: one seed
    selection = pd.read_csv(project / "data/tiny/07_model_output/member_selection.csv")
    refits = selection[selection["refit_of"] >= 0]  # every winner met its refit; the report has the better one
    assert len(refits) and (refits["member"] == REFIT_ID_OFFSET + refits["refit_of"]).all()
    assert sorted(selection.loc[selection["selected"], "member"]) == members
    keep = report[report["method"] == "keep"]
    for _, model in keep.groupby("member"):  # the statistics are those of the two rows
        assert model["test_accuracy_mean"].iloc[0] == model["test_accuracy"].mean()
        assert abs(model["test_accuracy_std"].iloc[0] - model["test_accuracy"].std()) < 1e-12
    assert keep["margin_over_best_baseline_pt"].notna().all()
    tp_rows = report[report["method"].str.startswith("tp_")]
    assert (tp_rows["flops_ratio"] <= tp_rows["flops_budget"] + 1e-9).all()  # Torch-Pruning stepped until it fit

    path = pd.read_csv(project / "data/tiny/07_model_output/roulette_path.csv", dtype={"mask": str})
    budgets = keep.groupby("member")["flops_ratio"].first()
    reached = [m for m, b in budgets.items() if (path["flops_ratio"] <= b + 1e-9).any()]
    roulette = report[report["kind"] == "roulette"]
    assert reached and sorted(roulette["member"].unique()) == reached and len(roulette) == len(reached) * len(SEEDS)
    for member, rows in roulette.groupby("member"):  # the path's network with the most FLOPs within the member's
        within = path.loc[path["flops_ratio"] <= budgets[member] + 1e-9, "flops_ratio"].max()
        assert abs(rows["flops_ratio"].iloc[0] - within) < 1e-9 and (rows["method"] == "roulette_branch").all()

    verdicts = pd.read_csv(reporting / "report_verdicts.csv")
    assert sorted(verdicts["member"]) == members and (verdicts["n_seeds"] == 2).all()
    assert verdicts["best_baseline"].isin(methods["baseline"]).all() and verdicts["margin_pt_std"].notna().all()

    runs = client.search_runs([experiment], order_by=["attributes.start_time DESC"])
    (latest,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][:1]
    metrics = latest.data.metrics
    for member in members:
        assert f"report.member{member}.margin_over_best_baseline_pt" in metrics
        assert f"report.member{member}.margin_over_best_baseline_std_pt" in metrics
        assert f"baselines.tp_taylor.member{member}.seed43.test_accuracy" in metrics
    assert metrics["report.budgets_won_by_members"] == verdicts["member_wins"].sum()
    assert_dst_fine_tunes_repeated_per_seed(project, client, experiment, params)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == latest.info.run_id]
    baselines = [r for r in children if r.data.tags["stage"] == "baselines"]
    assert len(baselines) == len(methods["baseline"]) * len(members) * len(SEEDS)
    assert {r.data.tags["seed"] for r in baselines} == {str(s) for s in SEEDS}


def assert_dst_fine_tunes_repeated_per_seed(project: Path, client, experiment: str, params: dict) -> None:
    """DST's comparison again with ``report.seeds: 2`` (its networks from the dst run before): the structured DST
    network and L1 at its FLOPs are fine-tuned once per seed; DST itself and the magnitude baseline train once."""
    run_tiny_session(project, "dst", node_names=["dst.compare_methods"], runtime_params=params)
    dst = pd.read_csv(project / "data/tiny/08_reporting/methods/dst.csv")
    for method in ("dst_structured", "l1_at_dst_flops"):
        assert sorted(dst.loc[dst["method"] == method, "seed"]) == SEEDS
    assert (dst["method"] == "dst_unstructured").sum() == 1 and (dst["method"] == "magnitude_unstructured").sum() == 1
    runs = client.search_runs([experiment], order_by=["attributes.start_time DESC"])
    latest = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert {"dst.dst_structured.test_accuracy", "dst.dst_structured.seed43.test_accuracy"} <= set(latest.data.metrics)
    assert "dst.l1_at_dst_flops.seed43.test_accuracy" in latest.data.metrics
