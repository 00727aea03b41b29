"""`kedro run --pipeline=exit_search` on the artifacts of a finished tiny `prune` run (after the seeded check: two
seeds, variant keep); the check runs inside ``tests/test_prune_session.py::test_prune_run_is_tracked_in_mlflow``."""

from pathlib import Path

import mlflow
import pandas as pd

from tests.conftest import run_tiny_session


def assert_exit_search_runs_after_prune(project: Path, client: mlflow.MlflowClient, experiment: str) -> None:
    """The search judged on every exit leaves its front; per member whose FLOPs its front reaches, the front's
    network with the most FLOPs within them is fine-tuned per seed into report rows of kind exit_search, and the
    verdicts compare the early-exit policy of both searches' networks."""
    params = {"report": {"seeds": 2}, "finetune": {"variants": ["keep"]}}
    run_tiny_session(project, "exit_search", runtime_params=params)
    front = pd.read_csv(project / "data/tiny/07_model_output/exit_search_front.csv", dtype={"mask": str})
    assert len(front) and front["flops_ratio"].is_monotonic_increasing
    report = pd.read_csv(project / "data/tiny/08_reporting/report_table.csv")
    keep = report[report["method"] == "keep"].groupby("member")["flops_ratio"].first()
    reached = [m for m, flops in keep.items() if (front["flops_ratio"] <= flops + 1e-9).any()]
    rows = report[report["kind"] == "exit_search"]
    assert sorted(rows["member"].unique()) == sorted(reached) and len(reached)
    assert len(rows) == 2 * len(reached) and (rows["method"] == "search_mean_error").all()
    for member, group in rows.groupby("member"):  # the front's best within the member's FLOPs
        assert (group["flops_ratio"] <= keep[member] + 1e-9).all()
        assert (
            abs(
                group["flops_ratio"].iloc[0]
                - front.loc[front["flops_ratio"] <= keep[member] + 1e-9, "flops_ratio"].max()
            )
            < 1e-9
        )
    verdicts = pd.read_csv(project / "data/tiny/08_reporting/report_verdicts.csv").set_index("member")
    judged = verdicts.loc[reached]
    assert (
        judged["early_exit.verdict"].isin(["exit_search dominates", "final-exit search dominates", "trade-off"]).all()
    )
    assert judged["early_exit.exit_search_expected_flops_ratio"].between(0, 1).all()

    runs = client.search_runs([experiment], order_by=["start_time DESC"])
    latest = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    metrics = set(latest.data.metrics)
    assert {"exit_search.front_size", "exit_search.search_seconds"} <= metrics
    assert {f"report.member{m}.exit_search.policy_margin_pt" for m in reached} <= metrics
    assert any(m.startswith("exit_search.search_mean_error.member") for m in metrics)
    assert {a.path for a in client.list_artifacts(latest.info.run_id, "exit_search")} == {
        "exit_search/exit_search_front.csv"
    }
