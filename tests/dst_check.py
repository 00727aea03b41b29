"""`kedro run --pipeline=dst` on the artifacts of a finished tiny `prune` run; the check runs inside
``tests/test_prune_session.py::test_prune_run_is_tracked_in_mlflow`` (one prune run serves both)."""

from pathlib import Path

import mlflow
import pandas as pd
import torch

from evoprune.datasets import PrunedMembersDataset, SparseModelDataset
from tests.conftest import run_tiny_session


def assert_dst_runs_after_prune(project: Path, client: mlflow.MlflowClient, experiment: str) -> None:
    """The dst pipeline trains both forms, saves its artifacts, logs ``dst.*`` metrics in its own MLflow run and
    adds its rows to the report (beside the members, which are kept)."""
    before = pd.read_csv(project / "data/tiny/08_reporting/report_table.csv")
    run_tiny_session(project, "dst", runtime_params={"dst": {"seed_search": True}})
    models = project / "data/tiny/06_models"
    sparse = SparseModelDataset(filepath=str(models / "dst_sparse_model.pt")).load()
    layers = dict(sparse["model"].named_modules())
    assert all(torch.all(layers[name].weight[~mask] == 0) for name, mask in sparse["weight_masks"].items())
    members = PrunedMembersDataset(filepath=str(models / "dst_structured_members.pt")).load()
    assert members["member_ids"] == [-1] and members["masks"].shape[0] == 1

    report = pd.read_csv(project / "data/tiny/08_reporting/report_table.csv")
    dst_rows = report[report["kind"] == "dst"]
    assert set(dst_rows["method"]) == {
        "dst_unstructured",
        "magnitude_unstructured",
        "dst_structured",
        "l1_at_dst_flops",
    }
    assert len(report) == len(before) + 4  # the prune rows are all still there
    structured = dst_rows.set_index("method").loc[["dst_structured", "l1_at_dst_flops"]]
    assert structured["flops_ratio"].iloc[1] <= structured["flops_ratio"].iloc[0] + 1e-9  # L1 fits DST's FLOPs
    assert structured["latency_ms_batch1"].notna().all() and structured["test_accuracy"].between(0, 1).all()
    unstructured = dst_rows.set_index("method").loc[["dst_unstructured", "magnitude_unstructured"]]
    assert abs(unstructured["weights_kept"].iloc[0] - unstructured["weights_kept"].iloc[1]) < 1e-3  # same sparsity
    assert (project / "data/tiny/08_reporting/dst_training.png").is_file()
    seeded = pd.read_csv(project / "data/tiny/08_reporting/dst_seeded_search_comparison.csv")
    assert seeded["budget"].tolist() == [0.5, 0.25] and (seeded["axis"] == "flops_ratio").all()  # prune's budgets
    front = pd.read_csv(project / "data/tiny/07_model_output/dst_seeded_pareto_set.csv", dtype={"mask": str})
    assert len(front) > 0 and front["flops_ratio"].between(0, 1).all()
    history = pd.read_json(project / "data/tiny/07_model_output/dst_unstructured_history.json", typ="series")
    assert len(history["kept_share"]) == 1 and len(history["val_accuracy"]) == 1

    runs = client.search_runs([experiment], order_by=["start_time DESC"])
    latest = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    metrics = latest.data.metrics
    assert {"dst.unstructured.kept_share", "dst.structured.kept_share", "dst.dst_structured.test_accuracy"} <= set(
        metrics
    )
    assert "dst.magnitude_unstructured.weights_kept" in metrics and "report.variant.keep.mean_drop_pt" in metrics
    assert metrics["dst.seeded_search.front_size"] == len(front)
    artifacts = {a.path for a in client.list_artifacts(latest.info.run_id, "dst")}
    assert {"dst/dst_sparse_model.pt", "dst/dst_structured_members.pt", "dst/dst_training.png"} <= artifacts
