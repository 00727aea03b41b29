"""The latency model file and its cache: round trip without pickle, filed by key, bad files skipped."""

import logging

import numpy as np
import pytest
import torch
from kedro.io.core import DatasetError

from evoprune.core.latency import LatencyModel, LatencySettings, key_digest, latency_key, profile_latency
from evoprune.core.models import build_model
from evoprune.core.units import build_layout
from evoprune.datasets import LatencyModelDataset, LatencyTableCacheDataset
from evoprune.pipelines.latency_profile.nodes import LatencyProfileParams, profile_latency_tables

CPU = torch.device("cpu")
PARAMS = LatencyProfileParams(batch_size=4, repeats=1, grid_points=2, calibration_masks=2)


@pytest.fixture(scope="module")
def profiled():
    torch.manual_seed(0)
    model = build_model({"name": "lenet5", "conv_channels": [4, 8], "fc_features": [16, 8]}).eval()
    layout = build_layout(model, (1, 28, 28))
    return model, layout, profile_latency(model, layout, PARAMS.settings(1), CPU)


def test_a_saved_latency_model_reloads_and_is_filed_in_the_cache_by_its_key(profiled, tmp_path):
    model, layout, latency = profiled
    dataset = LatencyModelDataset(filepath=str(tmp_path / "latency_model.pt"), cache_dir=str(tmp_path / "cache"))
    dataset.save(latency)
    back = dataset.load()
    masks = layout.repair(np.random.default_rng(0).random((3, layout.num_bits)) < 0.6)
    np.testing.assert_array_equal(back.predict_ms(layout, masks), latency.predict_ms(layout, masks))
    assert back.key == latency.key
    cache = LatencyTableCacheDataset(path=str(tmp_path / "cache")).load()
    assert list(cache) == [key_digest(latency.key)] and cache[key_digest(latency.key)].key == latency.key
    torch.load(tmp_path / "latency_model.pt", weights_only=True)  # plain tensors and strings only
    with pytest.raises(DatasetError, match="saves a LatencyModel"):
        dataset.save({"tables": []})


def test_an_empty_or_missing_cache_is_empty_and_bad_files_are_skipped(profiled, tmp_path, caplog):
    model, _, latency = profiled
    assert LatencyTableCacheDataset(path=str(tmp_path / "none")).load() == {}
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 cut short")
    torch.save(latency.state(), tmp_path / "0000000000000000.pt")  # a file not named by its key
    with caplog.at_level(logging.WARNING):
        assert LatencyTableCacheDataset(path=str(tmp_path)).load() == {}
    assert "torn.pt skipped" in caplog.text and "tables of another key" in caplog.text
    with pytest.raises(DatasetError, match="read-only"):
        LatencyTableCacheDataset(path=str(tmp_path)).save({})


def test_the_profile_node_reuses_the_cache_and_profiles_another_key(profiled, tmp_path):
    model, _, latency = profiled
    cache = {key_digest(latency.key): latency}
    reused, metrics = profile_latency_tables(model, cache, PARAMS, 1, "cpu")
    assert reused is latency and metrics["dense_ms"]["value"] == latency.dense_ms
    other, _ = profile_latency_tables(model, cache, PARAMS, 4, "cpu")  # the search now rounds to 4
    assert other is not latency and other.key == latency_key(model, PARAMS.settings(4), CPU)
    assert other.key["round_to"] == "4"


def test_settings_follow_the_search_and_keep_the_measurement(profiled):
    settings = LatencyProfileParams(threads=None, validation_masks=7).settings(8)
    assert isinstance(settings, LatencySettings) and settings.round_to == 8 and settings.threads is None
    assert LatencyModel.from_state(profiled[2].state()).unavailable == ""
