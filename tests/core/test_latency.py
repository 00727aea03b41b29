"""The latency model: tables, interpolation, calibrated sum, key checks, round trip (no timing asserted)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from evoprune.core.exits import attach_exits
from evoprune.core.latency import (
    LatencyKeyError,
    LatencyModel,
    LatencySettings,
    LayerTable,
    UnsupportedLatencyModel,
    architecture_digest,
    cached_or_profiled,
    calibrate,
    key_digest,
    latency_key,
    measure_masks_ms,
    monotone_grid,
    prediction_errors,
    profile_latency,
    timing_threads,
    unit_grid,
    validation_masks,
)
from evoprune.core.models import build_model
from evoprune.core.units import build_layout

CPU = torch.device("cpu")
SETTINGS = LatencySettings(batch_size=4, repeats=1, grid_points=3, calibration_masks=3)


@pytest.fixture(scope="module")
def profiled():
    torch.manual_seed(0)
    model = attach_exits(build_model({"name": "lenet5", "conv_channels": [4, 16], "fc_features": [24, 12]}), [1])
    layout = build_layout(model.eval(), (1, 28, 28))
    return model, layout, profile_latency(model, layout, SETTINGS, CPU)


@pytest.fixture(scope="module")
def timing_free(profiled):
    """The profiled model with tables ms = kept in x kept out: what a search finds must not depend on this
    machine's timing noise."""
    model, layout, profiled_latency = profiled
    tables = tuple(replace(t, ms=np.outer(t.in_units, t.out_units).astype(float)) for t in profiled_latency.tables)
    return model, layout, replace(profiled_latency, tables=tables, intercept_ms=0.0, slope=1.0)


def test_grids_cover_each_dimension_and_snap_inner_points_to_multiples_of_8():
    assert unit_grid(4, 5).tolist() == [1, 2, 3, 4]
    assert unit_grid(16, 5).tolist() == list(range(1, 17))  # small layers: every count
    assert unit_grid(16, 5, round_to=8).tolist() == [8, 16]  # ... a search rounding to 8 can keep
    assert unit_grid(6, 5, round_to=8).tolist() == [1, 2, 3, 4, 5, 6]  # a layer of round_to or fewer: not rounded
    grid = unit_grid(64, 5)
    assert grid[0] == 1 and grid[-1] == 64 and all(g % 8 == 0 for g in grid[1:])
    assert (np.diff(grid) > 0).all()


def test_lookup_is_exact_at_grid_points_and_bilinear_between():
    table = LayerTable("conv", np.array([1, 3]), np.array([2, 6]), np.array([[1.0, 3.0], [5.0, 11.0]]))
    assert table.lookup(np.array([1, 3]), np.array([2, 6])).tolist() == [1.0, 11.0]
    mid = table.lookup(np.array([2.0]), np.array([4.0]))[0]
    assert mid == pytest.approx((1.0 + 3.0 + 5.0 + 11.0) / 4)
    assert table.lookup(np.array([9]), np.array([9]))[0] == 11.0  # clamped to the grid
    one = LayerTable("fc", np.array([7]), np.array([1, 5]), np.array([[2.0, 6.0]]))
    assert one.lookup(np.array([7, 7]), np.array([3, 5])).tolist() == [4.0, 6.0]


def test_a_noisy_grid_is_made_non_decreasing_along_both_axes_and_a_monotone_one_is_kept():
    rng = np.random.default_rng(0)
    noisy = np.add.outer(np.arange(6.0), np.arange(5.0)) + rng.normal(0, 1.5, (6, 5))
    assert (np.diff(noisy, axis=0) < 0).any() and (np.diff(noisy, axis=1) < 0).any()
    smooth = monotone_grid(noisy)
    assert (np.diff(smooth, axis=0) >= 0).all() and (np.diff(smooth, axis=1) >= 0).all()
    assert smooth.min() >= noisy.min() and smooth.max() <= noisy.max()
    monotone = np.add.outer(np.arange(4.0), 2 * np.arange(3.0))
    np.testing.assert_array_equal(monotone_grid(monotone), monotone)
    # a table keeps the monotone grid through save and load, so more kept units never predict less time
    table = LayerTable("conv", np.arange(1, 7), np.arange(1, 6), noisy)
    back = LatencyModel.from_state(LatencyModel({}, (table,), 0.0, 1.0, 1.0).state()).tables[0]
    np.testing.assert_array_equal(back.ms, smooth)
    kept_in, kept_out = rng.uniform(1, 6, 200), rng.uniform(1, 5, 200)
    more = back.lookup(kept_in + rng.uniform(0, 1, 200), kept_out + rng.uniform(0, 1, 200))
    assert (more >= back.lookup(kept_in, kept_out) - 1e-12).all()


def test_prediction_is_the_calibrated_sum_of_table_entries(profiled):
    model, layout, latency = profiled
    assert {t.name for t in latency.tables} == {layer.name for layer in layout.layers}
    assert all((t.ms > 0).all() for t in latency.tables)
    rng = np.random.default_rng(0)
    masks = layout.repair(rng.random((5, layout.num_bits)) < 0.6)
    padded = np.concatenate([masks, np.ones((5, 1), dtype=bool)], axis=1)
    by_name = {layer.name: layer for layer in layout.layers}
    expected = np.zeros(5)
    for t in latency.tables:
        layer = by_name[t.name]
        for k in range(5):
            expected[k] += t.lookup(padded[k, layer.in_bits].sum(), padded[k, layer.out_bits].sum())
    assert np.allclose(latency.table_sum(layout, masks), expected)
    assert np.allclose(latency.predict_ms(layout, masks), latency.intercept_ms + latency.slope * expected)
    dense = np.ones((1, layout.num_bits), dtype=bool)
    assert latency.ratio(layout, dense)[0] == pytest.approx(1.0)


def test_tables_round_trip_without_pickle_and_refuse_another_key(profiled, tmp_path):
    model, layout, latency = profiled
    torch.save(latency.state(), tmp_path / "latency.pt")
    back = LatencyModel.from_state(torch.load(tmp_path / "latency.pt", weights_only=True))
    masks = np.random.default_rng(1).random((4, layout.num_bits)) < 0.7
    masks = layout.repair(masks)
    assert np.array_equal(back.predict_ms(layout, masks), latency.predict_ms(layout, masks))
    back.check_key(latency_key(model, SETTINGS, CPU))  # same model, device and settings: accepted
    other = latency_key(model, SETTINGS.model_copy(update={"batch_size": 8}), CPU)
    with pytest.raises(LatencyKeyError, match=r"batch_size: tables '4' vs now '8'"):
        back.check_key(other)
    with pytest.raises(LatencyKeyError, match="device"):
        back.check_key({**latency_key(model, SETTINGS, CPU), "device": "cuda:NVIDIA H200"})


def test_prediction_errors_summarise_relative_errors():
    errors = prediction_errors(np.array([10.0, 11.5, 9.0]), np.array([10.0, 10.0, 10.0]))
    assert errors["within_10pct"] == pytest.approx(2 / 3) and errors["max_abs_error"] == pytest.approx(0.15)


def test_a_search_on_predicted_latency_minimises_the_latency_model_ratio(timing_free):
    from evoprune.core.search.api import search_pruning_masks
    from evoprune.core.search.run import SearchConfig
    from tests.conftest import image_split

    model, layout, latency = timing_free
    cfg = SearchConfig(pop_size=8, generations=2, max_accuracy_drop=0.9, objectives=["error", "latency_ratio"])
    outcome = search_pruning_masks(model, image_split(60, 1), None, cfg, seed=0, device=CPU, latency=latency)
    front = outcome.result.front_F
    assert np.allclose(front[:, 1], latency.ratio(layout, outcome.result.front_X))
    assert front[:, 1].min() < 1.0  # the front reaches below the dense network's predicted latency
    with pytest.raises(ValueError, match=r"the \['latency_ratio'\] objectives need a latency model"):
        search_pruning_masks(model, image_split(60, 1), None, cfg, seed=0, device=CPU)
    per_flops = cfg.model_copy(update={"objectives": ["error", "flops_ratio", "latency_per_flops"]})
    outcome = search_pruning_masks(model, image_split(60, 1), None, per_flops, seed=0, device=CPU, latency=latency)
    X, F = outcome.result.front_X, outcome.result.front_F
    assert np.allclose(F[:, 1], layout.flops_ratio(X))
    assert np.allclose(F[:, 2], latency.ratio(layout, X) / layout.flops_ratio(X))  # latency per FLOPs kept
    with pytest.raises(ValueError, match=r"the \['latency_per_flops'\] objectives need a latency model"):
        search_pruning_masks(model, image_split(60, 1), None, per_flops, seed=0, device=CPU)


def test_calibration_never_makes_smaller_networks_slower():
    sums = np.array([10.0, 4.0, 6.0])
    intercept, slope = calibrate(sums, np.array([5.5, 2.5, 3.5]))
    assert slope == pytest.approx(0.5) and intercept == pytest.approx(0.5)
    intercept, slope = calibrate(sums, np.array([5.0, 6.0, 5.5]))  # noise: pruned nets timed slower
    assert (intercept, slope) == (0.0, 0.5)  # scaled to the dense time instead of an inverted fit
    assert calibrate(sums[:1], np.array([5.0])) == (0.0, 0.5)


def test_the_key_names_the_architecture_not_the_weights():
    torch.manual_seed(0)
    a = build_model({"name": "lenet5", "conv_channels": [4, 16], "fc_features": [24, 12]})
    b = build_model({"name": "lenet5", "conv_channels": [4, 16], "fc_features": [24, 12]})  # other weights
    wider = build_model({"name": "lenet5", "conv_channels": [6, 16], "fc_features": [24, 12]})
    assert architecture_digest(a) == architecture_digest(b) != architecture_digest(wider)
    assert latency_key(a, SETTINGS, CPU) == latency_key(b, SETTINGS, CPU)
    assert latency_key(a, SETTINGS, CPU)["threads"] == "1"  # the settings' threads, not the process's
    keys = {
        key_digest(latency_key(a, SETTINGS.model_copy(update=u), CPU)) for u in ({}, {"repeats": 2}, {"round_to": 8})
    }
    assert len(keys) == 3  # every measurement setting is part of the key


def test_timing_threads_are_restored():
    before = torch.get_num_threads()
    with timing_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_the_cache_serves_its_own_key_and_only_it(profiled):
    model, layout, latency = profiled
    cache = {key_digest(latency.key): latency}
    assert cached_or_profiled(cache, model, layout, SETTINGS, CPU) is latency  # reused: nothing timed
    other = SETTINGS.model_copy(update={"grid_points": 2})
    fresh = cached_or_profiled(cache, model, layout, other, CPU)
    assert fresh is not latency and fresh.key == latency_key(model, other, CPU)
    assert fresh.key["grid_points"] == "2"
    forged = {key_digest(latency_key(model, other, CPU)): latency}  # right file name, wrong contents
    assert cached_or_profiled(forged, model, layout, other, CPU) is not latency


def test_a_network_without_tables_keeps_why_and_says_it_when_asked_to_predict():
    model = build_model({"name": "lenet5"})
    layout = build_layout(model, (1, 28, 28))
    stand_in = LatencyModel.without_tables(latency_key(model, SETTINGS, CPU), "a layer kind the tables do not time")
    assert not stand_in.available
    with pytest.raises(UnsupportedLatencyModel, match="no latency tables for this network: a layer kind"):
        stand_in.ratio(layout, np.ones((1, layout.num_bits), dtype=bool))
    back = LatencyModel.from_state(stand_in.state())
    assert back.unavailable == stand_in.unavailable and back.key == stand_in.key


def test_lstm_layers_are_timed_whole_in_their_input_weights_table():
    """Each LSTM layer's table (its weight_ih part) is keyed by kept inputs and gate rows (4 per hidden unit), the
    recurrence part holds zero; the prediction is still the calibrated sum over the layout's layers."""
    torch.manual_seed(0)
    model = build_model({"name": "lstm_seq", "hidden_size": 8, "num_layers": 2}).eval()
    layout = build_layout(model, (1, 28, 28))
    latency = profile_latency(model, layout, SETTINGS, CPU)
    tables = {t.name: t for t in latency.tables}
    assert set(tables) == {layer.name for layer in layout.layers}
    for k, inputs in ((0, [28]), (1, list(range(1, 9)))):
        timed, recurrence = tables[f"lstm.weight_ih_l{k}"], tables[f"lstm.weight_hh_l{k}"]
        assert timed.in_units.tolist() == inputs and timed.out_units.tolist() == [4 * h for h in range(1, 9)]
        assert (timed.ms > 0).all() and not recurrence.ms.any()
    masks = layout.repair(np.random.default_rng(0).random((4, layout.num_bits)) < 0.5)
    assert np.isfinite(latency.ratio(layout, masks)).all()
    assert latency.ratio(layout, np.ones((1, layout.num_bits), dtype=bool))[0] == pytest.approx(1.0)
    measured = measure_masks_ms(model, layout, masks, SETTINGS, CPU)  # pruned by our own LSTM shrinker
    assert measured.ratio.shape == (4,) and (measured.ratio > 0).all()


def test_whole_networks_are_timed_paired_with_the_dense_one(profiled):
    model, layout, latency = profiled
    masks, kinds = validation_masks(layout, np.ones((2, layout.num_bits), dtype=bool), 3, SETTINGS)
    assert kinds == ["member", "member", "random", "random", "random"] and masks[:2].all()
    assert not masks[2:].all(1).any()  # the held-out masks prune
    held_again, _ = validation_masks(layout, np.empty((0, layout.num_bits), dtype=bool), 3, SETTINGS)
    np.testing.assert_array_equal(held_again, masks[2:])  # seeded
    times = measure_masks_ms(model, layout, masks, SETTINGS, CPU)
    assert times.ratio.shape == (5,) and (times.ratio > 0).all() and times.dense_ms > 0
    np.testing.assert_allclose(times.ms, times.ratio * times.dense_ms)


def test_onnx_runtime_runs_what_the_network_computes_with_either_exporter():
    from evoprune.core.export import onnxruntime_call

    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5), torch.nn.ReLU()).eval()
    x = torch.randn(4, 3, 10, 10).contiguous(memory_format=torch.channels_last)  # the tables' layout
    with torch.no_grad():
        expected = layer(x).numpy()
    for exporter in ("torchscript", "dynamo"):
        (got,) = onnxruntime_call(layer, x, threads=1, exporter=exporter)()
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_onnx_runtime_tables_are_keyed_by_runtime_and_refused_off_the_cpu(profiled):
    from evoprune.core.latency import check_runtime

    model, layout, torch_tables = profiled
    ort = SETTINGS.model_copy(update={"runtime": "onnxruntime", "calibration_masks": 2})
    key = latency_key(model, ort, CPU)
    import onnxruntime

    assert key["runtime"] == "onnxruntime" and key["onnxruntime"] == onnxruntime.__version__
    assert "onnxruntime" not in latency_key(model, SETTINGS, CPU)
    with pytest.raises(LatencyKeyError, match="runtime"):  # torch tables are not reused for ONNX Runtime
        torch_tables.check_key(key)
    latency = profile_latency(model, layout, ort, CPU)
    assert latency.key == key and all((t.ms > 0).all() for t in latency.tables)
    masks = layout.repair(np.random.default_rng(0).random((3, layout.num_bits)) < 0.6)
    times = measure_masks_ms(model, layout, masks, ort, CPU)  # pruned networks exported and timed in ONNX Runtime
    assert times.ratio.shape == (3,) and (times.ratio > 0).all()
    with pytest.raises(ValueError, match="set `device: cpu`"):
        check_runtime(ort, torch.device("cuda"))
    check_runtime(SETTINGS, torch.device("cuda"))  # torch times on any device


def test_a_speed_constraint_keeps_only_candidates_whose_flops_cut_is_a_predicted_speed_up(timing_free):
    from evoprune.core.search.api import search_pruning_masks
    from evoprune.core.search.problem import MaskSearchProblem
    from evoprune.core.search.run import SearchConfig
    from tests.conftest import image_split

    model, layout, latency = timing_free
    free = SearchConfig(pop_size=10, generations=3, max_accuracy_drop=0.9, objectives=["error", "flops_ratio"])
    outcome = search_pruning_masks(model, image_split(60, 1), None, free, seed=0, device=CPU, latency=latency)
    X = outcome.result.evaluated_X
    share = layout.flops_ratio(X) / latency.ratio(layout, X)
    limit = float(np.quantile(share, 0.5))  # half the unconstrained search's candidates would fail it
    constrained = free.model_copy(update={"min_speedup_share": limit})
    outcome = search_pruning_masks(model, image_split(60, 1), None, constrained, seed=0, device=CPU, latency=latency)
    result = outcome.result
    front_share = layout.flops_ratio(result.front_X) / latency.ratio(layout, result.front_X)
    assert len(result.front_X) and (front_share >= limit - 1e-12).all()
    assert result.evaluated_G.shape[1] == 2  # accuracy drop, then the speed share
    evaluated_share = layout.flops_ratio(result.evaluated_X) / latency.ratio(layout, result.evaluated_X)
    assert np.allclose(result.evaluated_G[:, 1], limit - evaluated_share)
    assert (result.evaluated_G[:, 1] > 0).any()  # some candidates were infeasible for speed alone
    with pytest.raises(ValueError, match="search.min_speedup_share needs latency tables"):
        search_pruning_masks(
            model, image_split(60, 1), None, constrained, seed=0, device=CPU,
            latency=latency.without_tables(latency.key, "no tables in this test"),
        )  # fmt: skip
    with pytest.raises(ValueError, match="min_speedup_share needs a latency model"):
        MaskSearchProblem(layout, lambda X: np.ones((len(X), 1)), ["error"], np.ones(1), 0.1, None, 0.7)
