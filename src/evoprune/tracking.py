"""MLflow plumbing outside the core: metric dicts shaped for kedro-mlflow's MlflowMetricsHistoryDataset
(the core returns plain dicts), and nested runs per fine-tuned model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def to_mlflow_metrics(values: Mapping[str, float | int | Sequence[float]]) -> dict[str, object]:
    """``{"acc": 0.9, "loss": [0.5, 0.3]}`` -> ``{"acc": {"value": 0.9, "step": 0},
    "loss": [{"value": 0.5, "step": 1}, {"value": 0.3, "step": 2}]}``; sequences are logged as steps
    1..n (one per epoch or generation)."""
    out: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, Sequence) and not isinstance(value, str):
            if len(value) == 0:
                continue
            out[key] = [{"value": float(v), "step": i} for i, v in enumerate(value, start=1)]
        else:
            out[key] = {"value": float(value), "step": 0}
    return out


def metric_series(metrics: Mapping[str, object], name: str) -> list[float]:
    """Values of metric ``name`` ordered by step, from either shape kedro-mlflow hands around: what a
    node returned (``{"loss": [...]}``) or what MlflowMetricsHistoryDataset loads back
    (``{"train_dense.loss": [...]}``, a single-step metric as one dict)."""
    for key, value in metrics.items():
        if key == name or key.endswith(f".{name}"):
            points = value if isinstance(value, list) else [value]
            return [float(p["value"]) for p in sorted(points, key=lambda p: p["step"])]
    return []


def log_child_run(
    run_name: str, tags: Mapping[str, object], metrics: Mapping[str, float | Sequence[float]]
) -> str | None:
    """One nested MLflow run under the active run (the ``kedro run``), tagged so that runs can be filtered
    and compared side by side in the MLflow UI (e.g. ``tags.variant = 'rewind'``). Sequences are logged
    as steps 1..n. Returns the run id, or None when no run is active (nodes called outside Kedro)."""
    import mlflow

    if mlflow.active_run() is None:
        return None
    with mlflow.start_run(run_name=run_name, nested=True, tags={k: str(v) for k, v in tags.items()}) as run:
        scalars = {k: float(v) for k, v in metrics.items() if not isinstance(v, Sequence)}
        if scalars:
            mlflow.log_metrics(scalars)
        for key, values in metrics.items():
            if isinstance(values, Sequence):
                for step, value in enumerate(values, start=1):
                    mlflow.log_metric(key, float(value), step=step)
        return run.info.run_id
