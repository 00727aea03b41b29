"""Shape metric dicts for kedro-mlflow's MlflowMetricsHistoryDataset (the core returns plain dicts)."""

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
