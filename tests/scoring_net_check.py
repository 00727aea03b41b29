"""`kedro run --pipeline=scoring_net` on the artifacts of a finished tiny `prune` run; the check runs inside
``tests/test_prune_session.py::test_prune_run_is_tracked_in_mlflow`` (one prune run serves every method)."""

from pathlib import Path

import mlflow
import pandas as pd
import torch

from evoprune.core.scoring_net import FEATURE_VERSION, ScoringNet
from evoprune.datasets import ScoringNetDataset
from tests.conftest import run_tiny_session


def assert_scoring_net_runs_after_prune(project: Path, client: mlflow.MlflowClient, experiment: str) -> None:
    """The Scoring Net is trained and saved (weights + feature spec, weights only), its masks at the members'
    budgets are fine-tuned into report rows beside the members and baselines, it is transferred to conf/tiny's
    targets (table, plot, metrics), and ``scoring_net.*`` is logged."""
    before = pd.read_csv(project / "data/tiny/08_reporting/report_table.csv")
    run_tiny_session(project, "scoring_net")
    path = project / "data/tiny/06_models/scoring_net.pt"
    assert isinstance(ScoringNetDataset(filepath=str(path)).load(), ScoringNet)
    assert torch.load(path, weights_only=True)["feature_version"] == FEATURE_VERSION

    report = pd.read_csv(project / "data/tiny/08_reporting/report_table.csv")
    rows = report[report["kind"] == "scoring_net"]
    l1 = report[report["method"] == "l1"].set_index("member")
    assert len(rows) == len(l1) and len(report) == len(before) + len(rows)  # one row per member; prune's kept
    for _, row in rows.iterrows():  # fitted to the member's budget, like L1; at most L1's FLOPs + one unit's
        assert abs(row["flops_budget"] - l1.loc[row["member"], "flops_budget"]) < 1e-9
        assert row["flops_ratio"] <= l1.loc[row["member"], "flops_ratio"] + 0.05
    assert rows["test_accuracy"].between(0, 1).all() and (rows["mask_seconds"] > 0).all()
    history = pd.read_json(project / "data/tiny/08_reporting/scoring_net_history.json", typ="series")
    assert [s["stage"] for s in history["stages"]] == ["gates", "refine"]
    assert all(s["seconds"] > 0 for s in history["stages"]) and history["extra_sources_seconds"] > 0

    runs = client.search_runs([experiment], order_by=["start_time DESC"])
    latest = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    metrics = set(latest.data.metrics)
    assert {"scoring_net.mask_seconds", "scoring_net.train.stage1_gates.seconds"} <= metrics
    assert latest.data.metrics["scoring_net.train.extra_sources_seconds"] > 0  # conf/tiny trains one extra source
    assert any(m.startswith("scoring_net.member") and m.endswith(".test_accuracy") for m in metrics)
    artifacts = {a.path for a in client.list_artifacts(latest.info.run_id, "scoring_net")}
    assert {f"scoring_net/{f}" for f in ("scoring_net.pt", "scoring_net_transfer.csv", "scoring_net_transfer.png")} <= (
        artifacts
    )

    # transfer: per target of conf/tiny and its budget, the zero-shot, adapted and native nets beside L1
    transfer = pd.read_csv(project / "data/tiny/08_reporting/scoring_net_transfer.csv")
    methods = {"scoring_net_zero_shot", "scoring_net_adapted", "scoring_net_native", "l1"}
    assert transfer.groupby(["target", "budget"])["method"].apply(set).to_dict() == {
        ("digits_lenet5", 0.5): methods,
        ("classes_5_9", 0.5): methods,
    }
    assert (transfer["flops_ratio"] <= transfer["budget"] + 1e-9).all()
    assert set(transfer["source"]) == {"run", "classes 0,1,2,3,4"}
    assert (transfer[transfer["method"] == "l1"]["margin_vs_l1_pt"] == 0).all()
    # conf/tiny fine-tunes every transfer mask too: accuracies after it and margins over L1's
    assert transfer["finetuned_accuracy"].between(0, 1).all()
    assert (transfer[transfer["method"] == "l1"]["finetuned_margin_vs_l1_pt"] == 0).all()
    assert (project / "data/tiny/08_reporting/scoring_net_transfer.png").stat().st_size > 0
    assert {
        "scoring_net.transfer.digits_lenet5.scoring_net_zero_shot.margin_vs_l1_at_50pct",
        "scoring_net.transfer.classes_5_9.scoring_net_adapted.accuracy_at_50pct",
        "scoring_net.transfer.digits_lenet5.scoring_net_zero_shot.finetuned_margin_vs_l1_at_50pct",
        "scoring_net.transfer.classes_5_9.l1.finetuned_accuracy_at_50pct",
    } <= metrics
