"""Nothing half-written: a save that fails midway (EFBIG, as on a full disk) leaves the previous file
byte-identical, no temporary file, and an error naming the file and the cause."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import torch
import yaml
from kedro.io.core import Version
from kedro_mlflow.io.artifacts import MlflowArtifactDataset

from evoprune.core import atomic
from evoprune.core.models import build_model
from evoprune.datasets import (
    AtomicCSVDataset,
    AtomicJSONDataset,
    AtomicMatplotlibDataset,
    ExportedModelsDataset,
    LatencyModelDataset,
    ScoringNetDataset,
    TensorDictDataset,
    TorchModelDataset,
)
from tests.conftest import PROJECT_ROOT
from tests.reliability.file_size_limit import fails_past_file_size_limit

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402 - after choosing the headless backend

TINY_NET = {"name": "lenet5", "conv_channels": [2, 3], "fc_features": [4, 4]}


def _figure(points: int):
    figure, axes = plt.subplots()
    axes.plot(range(points), [i * i for i in range(points)])
    return figure


def _csv(tmp: Path):
    return AtomicCSVDataset(filepath=str(tmp / "table.csv")), pd.DataFrame({"a": [1]}), pd.DataFrame({"a": range(9000)})


def _json(tmp: Path):
    return AtomicJSONDataset(filepath=str(tmp / "point.json")), {"a": 1}, {"a": list(range(9000))}


def _png(tmp: Path):
    return AtomicMatplotlibDataset(filepath=str(tmp / "plot.png")), _figure(2), _figure(500)


def _tensors(tmp: Path):
    return TensorDictDataset(filepath=str(tmp / "split.pt")), {"x": torch.zeros(4)}, {"x": torch.zeros(90_000)}


def _model(tmp: Path):
    return TorchModelDataset(filepath=str(tmp / "model.pt")), build_model(TINY_NET), build_model({"name": "lenet5"})


def _scoring_net(tmp: Path):
    from evoprune.core.scoring_net import ScoringNet

    return ScoringNetDataset(filepath=str(tmp / "net.pt")), ScoringNet(hidden=(2,)), ScoringNet(hidden=(512, 512))


def _latency_model(tmp: Path):
    import numpy as np

    from evoprune.core.latency import LatencyModel, LayerTable

    def model(n: int) -> LatencyModel:
        return LatencyModel(
            {"device": "cpu"}, (LayerTable("fc", np.arange(n), np.arange(n), np.ones((n, n))),), 0, 1, 1
        )

    return LatencyModelDataset(filepath=str(tmp / "latency.pt")), model(2), model(300)


def _mlflow_wrapped_csv(tmp: Path):
    """The catalog's artifacts wrap our datasets in kedro-mlflow's MlflowArtifactDataset (logging off here)."""
    dataset = MlflowArtifactDataset(
        dataset={"type": "evoprune.datasets.AtomicCSVDataset", "filepath": str(tmp / "t.csv")}
    )
    dataset._logging_activated = False
    return dataset, pd.DataFrame({"a": [1]}), pd.DataFrame({"a": range(9000)})


CASES = [_csv, _json, _png, _tensors, _model, _scoring_net, _latency_model, _mlflow_wrapped_csv]


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__.strip("_"))
def test_a_save_failing_midway_leaves_the_previous_file_intact(case, tmp_path):
    dataset, old, new = case(tmp_path)
    dataset.save(old)
    (target,) = list(tmp_path.iterdir())
    before = target.read_bytes()
    error = fails_past_file_size_limit(lambda: dataset.save(new), limit=1024)
    assert str(target) in error and "file size limit" in error, error
    assert target.read_bytes() == before
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left


def test_the_limit_in_these_tests_is_real_an_in_place_write_is_torn(tmp_path):
    """What the atomic saves prevent: a plain in-place write past the limit leaves half a file."""
    target = tmp_path / "plain.bin"
    target.write_bytes(b"old")

    def write_in_place():
        with open(target, "wb") as handle:
            handle.write(b"x" * 10_000)

    assert "File too large" in fails_past_file_size_limit(write_in_place, limit=4096)
    assert target.read_bytes() == b"x" * 4096


def test_failed_exports_leave_the_previous_exports_folder_as_it_was(tmp_path):
    dataset = ExportedModelsDataset(path=str(tmp_path / "exported"), formats=["torchscript"])
    dataset.save({"member0": build_model(TINY_NET).eval()})
    before = {p.name: p.read_bytes() for p in (tmp_path / "exported").iterdir()}
    error = fails_past_file_size_limit(lambda: dataset.save({"member1": build_model({"name": "lenet5"}).eval()}))
    assert str(tmp_path / "exported") in error and "file size limit" in error, error
    assert {p.name: p.read_bytes() for p in (tmp_path / "exported").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]


def test_an_error_of_the_writer_removes_the_temporary_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out.txt"
    atomic.write_text(target, "old")
    with pytest.raises(ZeroDivisionError), atomic.atomic_open(target, "w") as handle:
        handle.write("half")
        _ = 1 / 0
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb', got 'a'"):
        atomic.atomic_open(target, "a").__enter__()


def test_atomic_files_get_the_permissions_a_plain_open_gives(tmp_path):
    atomic.write_bytes(tmp_path / "atomic.bin", b"x")
    (tmp_path / "plain.bin").write_bytes(b"x")
    assert os.stat(tmp_path / "atomic.bin").st_mode == os.stat(tmp_path / "plain.bin").st_mode


def test_versioned_and_load_args_still_work(tmp_path):
    dataset = AtomicCSVDataset(
        filepath=str(tmp_path / "masks.csv"), version=Version(None, None), load_args={"dtype": {"mask": str}}
    )
    dataset.save(pd.DataFrame({"mask": ["0011"]}))
    assert dataset.load()["mask"].tolist() == ["0011"]  # leading zeros kept by load_args
    (version,) = list((tmp_path / "masks.csv").iterdir())
    assert (version / "masks.csv").is_file()


# Types that write no file of their own (metrics and runs go to MLflow; raw images are staged by core.data).
NO_FILE = {
    "kedro_mlflow.io.metrics.MlflowMetricsHistoryDataset",
    "evoprune.datasets.MlflowChildRunsDataset",
    "evoprune.datasets.RawImagesDataset",
    "evoprune.datasets.LatencyTableCacheDataset",  # read-only (LatencyModelDataset files the cache atomically)
}
ATOMIC = {
    f"evoprune.datasets.{name}"
    for name in (
        "AtomicCSVDataset",
        "AtomicJSONDataset",
        "AtomicMatplotlibDataset",
        "TensorDictDataset",
        "TorchModelDataset",
        "PrunedMembersDataset",
        "FinetunedMembersDataset",
        "ExportedModelsDataset",
        "SparseModelDataset",
        "ScoringNetDataset",
        "LatencyModelDataset",
        "MethodResultsDataset",
    )
}


def test_every_catalog_entry_saves_atomically():
    files = sorted((PROJECT_ROOT / "conf").glob("*/catalog*.yml"))
    assert files, "no catalog found"
    types = {}
    for file in files:
        for name, entry in yaml.safe_load(file.read_text()).items():
            inner = entry.get("dataset", {}) if "MlflowArtifactDataset" in entry["type"] else entry
            types[f"{file.parent.name}/{file.name}: {name}"] = inner["type"] if isinstance(inner, dict) else inner
    not_atomic = {k: t for k, t in types.items() if t not in ATOMIC | NO_FILE}
    assert not not_atomic, f"use evoprune.datasets.Atomic* (atomic saves) instead: {not_atomic}"
