"""Nodes of latency_profile: the target's latency tables for the multi-exit network, reused from the cache
when this device, torch, threads, settings and architecture were measured before."""

from __future__ import annotations

from pydantic import NonNegativeInt
from torch import nn

from evoprune.core.exits import input_shape
from evoprune.core.latency import LatencyModel, LatencySettings, cached_or_profiled
from evoprune.core.runtime import resolve_device
from evoprune.core.units import build_layout
from evoprune.tracking import to_mlflow_metrics


class LatencyProfileParams(LatencySettings):
    """conf/base/parameters_latency_profile.yml: how the tables are measured (``round_to`` follows
    ``mask_search.search.round_to``), and how many random pruned networks the validation times."""

    validation_masks: NonNegativeInt = 20

    def settings(self, round_to: int) -> LatencySettings:
        """The measurement settings for a search that keeps multiples of ``round_to`` units."""
        return LatencySettings(**self.model_dump(exclude={"validation_masks", "round_to"}), round_to=round_to)


def profile_latency_tables(
    multi_exit_model: nn.Module,
    latency_table_cache: dict[str, LatencyModel],
    params: LatencyProfileParams,
    round_to: int,
    device: str,
) -> tuple[LatencyModel, dict[str, object]]:
    """The latency model of this network on this device (cached one of the same key, else measured now; a
    stand-in that says why for a network the tables cannot time) and its MLflow metrics."""
    model = multi_exit_model.eval()
    layout = build_layout(model, input_shape(model))
    latency = cached_or_profiled(latency_table_cache, model, layout, params.settings(round_to), resolve_device(device))
    if not latency.available:
        return latency, {}
    scalars = {"dense_ms": latency.dense_ms, "intercept_ms": latency.intercept_ms, "slope": latency.slope}
    return latency, to_mlflow_metrics(scalars)
