from torch import nn

from evoprune.core.comparison import MeasuredModel
from evoprune.tracking import ChildRun, measured_child_run, metric_series, to_mlflow_metrics


def test_to_mlflow_metrics_steps_sequences_from_one():
    out = to_mlflow_metrics({"acc": 0.5, "loss": [3.0, 2.0], "empty": []})
    assert out == {"acc": {"value": 0.5, "step": 0}, "loss": [{"value": 3.0, "step": 1}, {"value": 2.0, "step": 2}]}


def test_metric_series_round_trips_and_ignores_other_metrics():
    metrics = to_mlflow_metrics({"loss": [3.0, 2.0, 1.0], "val_loss": [9.0]})
    assert metric_series(metrics, "loss") == [3.0, 2.0, 1.0]
    assert metric_series({"stage.val_loss": {"step": 1, "value": 9.0}}, "loss") == []
    assert metric_series({"stage.val_loss": {"step": 1, "value": 9.0}}, "val_loss") == [9.0]


def test_a_measured_model_becomes_one_child_run_record():
    row = {"variant": "rewind", "member": 4, "flops_ratio": 0.12345, "test_accuracy": 0.9, "train_seconds": 3.0}
    history = {"val_accuracy": [0.5, 0.8], "train_loss": [2.0, 1.0], "train_seconds": 3.0}
    measured = MeasuredModel({"variant": "rewind", "member": 4}, row, history, nn.Identity())
    run = measured_child_run("finetune/rewind/member4", {"stage": "finetune", "member": 4}, measured)
    assert run == ChildRun(
        "finetune/rewind/member4",
        {"stage": "finetune", "member": "4", "flops_ratio": "0.123"},
        {"flops_ratio": 0.12345, "test_accuracy": 0.9, "train_seconds": 3.0},
        {"val_accuracy": [0.5, 0.8], "train_loss": [2.0, 1.0]},
    )
