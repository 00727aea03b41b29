from evoprune.tracking import metric_series, to_mlflow_metrics


def test_to_mlflow_metrics_steps_sequences_from_one():
    out = to_mlflow_metrics({"acc": 0.5, "loss": [3.0, 2.0], "empty": []})
    assert out == {"acc": {"value": 0.5, "step": 0}, "loss": [{"value": 3.0, "step": 1}, {"value": 2.0, "step": 2}]}


def test_metric_series_round_trips_and_ignores_other_metrics():
    metrics = to_mlflow_metrics({"loss": [3.0, 2.0, 1.0], "val_loss": [9.0]})
    assert metric_series(metrics, "loss") == [3.0, 2.0, 1.0]
    assert metric_series({"stage.val_loss": {"step": 1, "value": 9.0}}, "loss") == []
    assert metric_series({"stage.val_loss": {"step": 1, "value": 9.0}}, "val_loss") == [9.0]
