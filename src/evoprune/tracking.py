"""MLflow plumbing outside the core: metric dicts shaped for kedro-mlflow's MlflowMetricsHistoryDataset
(the core returns plain dicts), and the records of nested runs (one per fine-tuned model) that nodes return
and ``evoprune.datasets.MlflowChildRunsDataset`` logs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from evoprune.core.comparison import MeasuredModel


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


@dataclass(frozen=True)
class ChildRun:
    """One nested MLflow run, as a node returns it: logged under the active run (the ``kedro run``) by
    ``MlflowChildRunsDataset``, tagged so that runs can be filtered and compared side by side in the MLflow
    UI (e.g. ``tags.variant = 'rewind'``)."""

    name: str
    tags: dict[str, str]
    metrics: dict[str, float]  # logged at step 0
    series: dict[str, list[float]] = field(default_factory=dict)  # logged as steps 1..n (one per epoch)


def measured_child_run(name: str, tags: Mapping[str, object], measured: MeasuredModel) -> ChildRun:
    """The nested run of a fine-tuned pruned model: ``tags`` plus its FLOPs ratio, the numbers of its report
    row, and its validation accuracy and training loss per epoch."""
    return ChildRun(
        name,
        {**{k: str(v) for k, v in tags.items()}, "flops_ratio": f"{measured.row['flops_ratio']:.3f}"},
        {k: float(v) for k, v in measured.scalars.items()},
        {k: [float(v) for v in measured.history[k]] for k in ("val_accuracy", "train_loss")},
    )
