"""Nested MLflow runs declared in the catalog: the one place where a node's run records become MLflow runs."""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError

from evoprune.tracking import ChildRun


class MlflowChildRunsDataset(AbstractDataset[list[ChildRun], list[ChildRun]]):
    """Saves a list of ``evoprune.tracking.ChildRun`` as nested runs under the active MLflow run (the one
    kedro-mlflow opens for the ``kedro run``): tags at start, ``metrics`` at step 0, each of ``series`` as
    steps 1..n. Nothing is logged when no run is active (tracking disabled, or the pipeline run outside
    kedro-mlflow). Write-only: read the runs back with ``mlflow.search_runs`` (filter on their tags).
    """

    def __init__(self, *, metadata: dict[str, Any] | None = None) -> None:
        self.metadata = metadata

    def save(self, data: list[ChildRun]) -> None:
        import mlflow

        if mlflow.active_run() is None:
            return
        for record in data:
            with mlflow.start_run(run_name=record.name, nested=True, tags=dict(record.tags)):
                if record.metrics:
                    mlflow.log_metrics(dict(record.metrics))
                for key, values in record.series.items():
                    for step, value in enumerate(values, start=1):
                        mlflow.log_metric(key, float(value), step=step)

    def load(self) -> list[ChildRun]:
        raise DatasetError(
            "MlflowChildRunsDataset is write-only: its records are nested MLflow runs; read them with "
            "mlflow.search_runs(filter_string=\"tags.stage = 'finetune'\") or in the MLflow UI"
        )

    def _exists(self) -> bool:
        return False  # runs are appended, never found again: the node always runs

    def _describe(self) -> dict[str, Any]:
        return {}
