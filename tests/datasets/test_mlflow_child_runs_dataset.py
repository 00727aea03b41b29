"""Run records become nested MLflow runs in one place: the catalog's MlflowChildRunsDataset."""

import mlflow
import pytest
from kedro.io import DatasetError

from evoprune.datasets import MlflowChildRunsDataset
from evoprune.tracking import ChildRun

RECORDS = [
    ChildRun("finetune/keep/member3", {"stage": "finetune", "variant": "keep", "member": "3"}, {"test_accuracy": 0.9}),
    ChildRun(
        "finetune/rewind/member3",
        {"stage": "finetune", "variant": "rewind", "member": "3"},
        {"test_accuracy": 0.8, "flops_ratio": 0.25},
        {"val_accuracy": [0.5, 0.7, 0.75]},
    ),
]


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    monkeypatch.chdir(tmp_path)  # artifacts (none here) stay in tmp_path
    mlflow.set_tracking_uri(uri)
    yield mlflow.MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(previous)


def test_records_become_nested_runs_under_the_active_run(tracking):
    experiment = mlflow.set_experiment("child_runs_test").experiment_id
    with mlflow.start_run() as parent:
        MlflowChildRunsDataset().save(RECORDS)
    children = tracking.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == {"finetune/keep/member3", "finetune/rewind/member3"}
    rewind = by_name["finetune/rewind/member3"]
    assert {k: rewind.data.tags[k] for k in ("stage", "variant", "member")} == RECORDS[1].tags
    assert rewind.data.metrics["test_accuracy"] == 0.8 and rewind.data.metrics["flops_ratio"] == 0.25
    history = tracking.get_metric_history(rewind.info.run_id, "val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.7), (3, 0.75)]
    assert mlflow.active_run() is None  # the parent was closed by its own context, not by the dataset


def test_nothing_is_logged_without_an_active_run(tracking):
    experiment = mlflow.set_experiment("child_runs_test").experiment_id
    MlflowChildRunsDataset().save(RECORDS)
    assert tracking.search_runs([experiment]) == []


def test_the_dataset_is_write_only():
    with pytest.raises(DatasetError, match="write-only.*mlflow.search_runs"):
        MlflowChildRunsDataset().load()
    assert not MlflowChildRunsDataset().exists()
