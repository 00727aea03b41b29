"""`prune` on a row-sequential LSTM through a real KedroSession: no early exits, hidden units searched,
pruned physically by our shrinker, latency tables of its LSTM layer, fine-tuned, compared with the baselines and
reported; then hidden-state
pruning and dynamic sparse training of its gate matrices on the same run."""

import mlflow
import pandas as pd
import pytest
import torch

from evoprune.datasets import LatencyModelDataset, SparseModelDataset
from tests.conftest import run_tiny_session

pytestmark = pytest.mark.slow

LSTM = {
    "train_dense": {"model": {"name": "lstm_seq", "hidden_size": 8}},
    "build_exits": {"exit_after": []},
    "finetune": {"variants": ["keep"]},
    "mask_search": {"roulette_branch": None, "member_budgets": [0.5]},
}


def test_prune_runs_on_an_lstm_without_early_exits(tiny_project):
    run_tiny_session(tiny_project, "prune", runtime_params=LSTM)
    reporting = tiny_project / "data/tiny/08_reporting"
    summary = pd.read_csv(reporting / "exit_summary.csv")
    assert summary["after"].tolist() == ["output"]  # one exit: the network's own output
    report = pd.read_csv(reporting / "report_table.csv").set_index("method")
    assert {"dense", "keep", "l1", "random"} <= set(report.index)
    dense_flops = report.loc["dense", "flops"]
    assert dense_flops == 2 * 28 * 4 * 8 * (28 + 8) + 2 * 8 * 10  # gate products of every step + head, counted
    members = report.loc[["keep"]]
    assert (members["flops"] < dense_flops).all() and (members["units_kept"] < 8).all()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tiny_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("evoprune").experiment_id
    (run,) = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" not in r.data.tags]
    assert run.data.params["train_dense.model.name"] == "lstm_seq"
    assert "build_exits.exit1.test_accuracy" in run.data.metrics
    assert run.data.metrics["build_exits.latency.speedup"] == 1.0
    latency = LatencyModelDataset(filepath=str(tiny_project / "data/tiny/06_models/latency_model.pt")).load()
    assert latency.available and "lstm.weight_ih_l0" in {t.name for t in latency.tables}  # LSTM layers timed too
    validation = pd.read_csv(reporting / "latency_validation.csv")
    assert len(validation) > 1 and validation["predicted_ms"].gt(0).all() and validation["measured_ratio"].gt(0).all()

    hidden = {"hidden_state": {"sparsities": [0.5], "training": {"epochs": 1, "batch_size": 50}}}
    run_tiny_session(tiny_project, "hidden_state", runtime_params=LSTM | hidden)
    report = pd.read_csv(reporting / "report_table.csv")
    rows = report[report["kind"] == "hidden_state"].set_index("method")
    assert set(rows.index) == {"hidden_state@50%", "hidden_state@50% (no fine-tune)"}
    assert (rows["hidden_sparsity"].between(0.2, 0.8)).all() and (rows["flops_ratio"] < 1.0).all()
    assert {"keep", "l1"} <= set(report["method"])  # prune's rows are still there
    assert (reporting / "hidden_state_sparsity.png").is_file()

    lstm_dst = {
        "dst": {
            "start_from": "trained",
            "unstructured": {"alpha": 0.05, "training": {"epochs": 1, "optimizer": "adamw", "train_subset": 2000}},
            "structured": {"alpha": 0.05, "training": {"epochs": 1, "optimizer": "adamw", "train_subset": 2000}},
        }
    }
    run_tiny_session(tiny_project, "dst", runtime_params=LSTM | lstm_dst)
    sparse = SparseModelDataset(filepath=str(tiny_project / "data/tiny/06_models/dst_sparse_model.pt")).load()
    lstm = sparse["model"].lstm
    for name in ("weight_ih_l0", "weight_hh_l0"):  # the gate matrices are sparse, zeros where the masks drop
        mask = sparse["weight_masks"][f"lstm.{name}"]
        assert torch.all(getattr(lstm, name)[~mask] == 0) and 0 < mask.float().mean() < 1
    report = pd.read_csv(reporting / "report_table.csv")
    rows = report[report["kind"] == "dst"].set_index("method")
    assert set(rows.index) == {"dst_unstructured", "magnitude_unstructured", "dst_structured", "l1_at_dst_flops"}
    assert rows.loc["dst_unstructured", "weights_kept"] < 1.0
    assert abs(rows.loc["dst_unstructured", "weights_kept"] - rows.loc["magnitude_unstructured", "weights_kept"]) < 1e-3
    assert rows.loc["dst_unstructured", "nonzero_flops"] < dense_flops
    assert rows.loc["dst_structured", "units_kept"] <= 8 and rows["test_accuracy"].between(0, 1).all()
