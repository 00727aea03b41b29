"""The latency model inside a finished tiny `prune` run, then `latency_profile` again (served from the cache),
a `latency_ratio` search through `kedro run --pipeline=mask_search` and baselines fitted to the members' predicted
latency (`kedro run --pipeline=baselines` with that objective); the check runs inside
``tests/test_prune_session.py::test_prune_run_is_tracked_in_mlflow`` (one prune run serves every method)."""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from evoprune.core.exits import input_shape
from evoprune.core.latency import key_digest
from evoprune.core.mask_codec import decode_masks
from evoprune.core.units import build_layout, kept_column
from evoprune.datasets import LatencyModelDataset, PrunedMembersDataset, TorchModelDataset
from tests.conftest import run_tiny_session


def assert_latency_search_runs_after_prune(project: Path, client: mlflow.MlflowClient, experiment: str) -> None:
    """prune profiled the tables once (filed in the cache by key), gave every front row a predicted latency
    ratio and validated the model on the members and random pruned networks; a second profile reuses the
    cache; a search on ``latency_ratio`` minimises the predicted ratio and chooses members by it."""
    data = project / "data/tiny"
    latency = LatencyModelDataset(filepath=str(data / "06_models/latency_model.pt")).load()
    cached = sorted((data / "06_models/latency_tables").iterdir())
    assert latency.available and [f.name for f in cached] == [f"{key_digest(latency.key)}.pt"]
    validation = pd.read_csv(data / "08_reporting/latency_validation.csv")
    chosen = pd.read_csv(data / "07_model_output/chosen_members.csv", dtype={"mask": str})
    assert validation["kind"].tolist() == ["member"] * len(chosen) + ["random"] * 3
    assert (validation["measured_ratio"] > 0).all() and validation["ratio_error"].notna().all()
    assert (data / "08_reporting/latency_validation.png").is_file()
    pareto = pd.read_csv(data / "07_model_output/pareto_set.csv", dtype={"mask": str})
    network = TorchModelDataset(filepath=str(data / "06_models/multi_exit_model.pt")).load()
    layout = build_layout(network.eval(), input_shape(network))
    np.testing.assert_allclose(pareto["latency_ratio"], latency.ratio(layout, decode_masks(pareto["mask"])))

    stamp = cached[0].stat().st_mtime_ns
    run_tiny_session(project, "latency_profile")
    assert cached[0].stat().st_mtime_ns == stamp and len(list((data / "06_models/latency_tables").iterdir())) == 1
    again = LatencyModelDataset(filepath=str(data / "06_models/latency_model.pt")).load()
    assert (again.key, again.intercept_ms, again.slope) == (latency.key, latency.intercept_ms, latency.slope)

    search = {"objectives": ["error", "latency_ratio"]}
    # a latency budget the tiny network's front reaches (its members keep 0.97-0.99 of the dense latency here):
    # with none within any budget, choose_members stops and says why
    on_latency = {"search": search, "member_budgets": [1.0]}
    run_tiny_session(project, "mask_search", runtime_params={"mask_search": on_latency})
    pareto = pd.read_csv(data / "07_model_output/pareto_set.csv", dtype={"mask": str})
    assert pareto["latency_ratio"].is_monotonic_increasing and pareto["latency_ratio"].min() < 1.0
    chosen = pd.read_csv(data / "07_model_output/chosen_members.csv", dtype={"mask": str})
    assert len(chosen) and (chosen["latency_ratio"] <= chosen["budget"] + 1e-9).all()  # chosen on predicted latency
    assert np.isfinite(pd.read_csv(data / "08_reporting/latency_validation.csv")["predicted_ms"]).all()

    runs = client.search_runs([experiment], order_by=["start_time DESC"])
    latest, profile = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][:2]
    assert latest.data.params["mask_search.search.objectives"] == str(search["objectives"])
    assert {"mask_search.latency.within_10pct", "mask_search.latency.ms_within_10pct"} <= set(latest.data.metrics)
    assert "latency_profile.dense_ms" in profile.data.metrics

    # baselines on the members' budget axis: with a latency_ratio search, pruned to each member's predicted latency
    run_tiny_session(project, "baselines", runtime_params={"mask_search": {"search": search}})
    members = PrunedMembersDataset(filepath=str(data / "06_models/selected_members.pt")).load()
    budgets = dict(zip(members["member_ids"], latency.ratio(layout, members["masks"]), strict=True))
    rows = pd.read_csv(data / "08_reporting/baseline_results.csv")
    assert set(rows["criterion"]) == {"l1", "random"} and len(rows) == 2 * len(budgets)
    np.testing.assert_allclose(rows["latency_budget"], rows["member"].map(budgets))
    for _, row in rows.iterrows():  # the prediction depends on the kept counts alone: rebuild a mask with them
        counts = np.zeros((1, layout.num_bits), dtype=bool)
        for g in layout.groups:
            counts[0, g.offset : g.offset + int(row[kept_column(g.name)])] = True
        assert latency.ratio(layout, counts)[0] <= row["latency_budget"] + 1e-9
    tagged = client.search_runs([experiment], "tags.stage = 'baselines'", order_by=["start_time DESC"])[: len(rows)]
    assert sorted(r.data.tags["latency_budget"] for r in tagged) == sorted(f"{b:.3f}" for b in rows["latency_budget"])
