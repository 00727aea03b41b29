"""Population scoring on real Dask workers (a LocalCluster of 2 processes on this machine)."""

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from evoprune.core.models import build_model
from evoprune.core.search.api import search_pruning_masks
from evoprune.core.search.distributed import DistributedConfig, DistributedError
from evoprune.core.search.run import SearchConfig
from evoprune.core.train import TrainConfig, train
from tests.conftest import image_split

CPU = torch.device("cpu")
CFG = SearchConfig(pop_size=8, generations=3, max_accuracy_drop=0.9)


class DiesOnceInAWorker(nn.Module):
    """A small CNN whose first forward inside a Dask worker kills that worker's process (once: it leaves a
    marker file), as a machine lost mid-search would."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 5), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        try:
            from distributed import get_worker

            get_worker()
            in_worker = True
        except ValueError:
            in_worker = False
        if in_worker and not Path(self.marker).exists():
            Path(self.marker).touch()
            os._exit(1)
        return self.head(self.features(x))


def dies_once_in_a_worker(marker: str) -> nn.Module:
    return DiesOnceInAWorker(marker)


def _trained(spec: dict) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(spec)
    train(
        model,
        image_split(300, 0),
        None,
        TrainConfig(epochs=2, batch_size=50, optimizer="adamw", learning_rate=3e-3),
        CPU,
        seed=0,
    )
    return model.eval()


def _search(model: nn.Module, distributed: DistributedConfig | None):
    return search_pruning_masks(
        model, image_split(120, 1), None, CFG, seed=0, device=CPU, random_masks=0, distributed=distributed
    )


@pytest.fixture
def one_thread():
    """Workers and the serial run use the same number of torch threads (identical float sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _same_front(a, b) -> None:
    assert np.array_equal(a.result.front_X, b.result.front_X)
    assert np.array_equal(a.result.front_F, b.result.front_F)
    assert np.array_equal(a.result.evaluated_X, b.result.evaluated_X)
    assert np.array_equal(a.result.evaluated_accuracy, b.result.evaluated_accuracy)


def test_two_local_workers_give_the_serial_front(one_thread):
    model = _trained({"name": "lenet5", "conv_channels": [6, 12], "fc_features": [24, 16]})
    serial = _search(model, None)
    local = _search(model, DistributedConfig(scheduler="local", workers=2))
    _same_front(serial, local)
    assert len(serial.result.evaluated_X) > CFG.pop_size  # more than one generation was scored


def test_a_worker_that_dies_mid_search_has_its_chunk_rescored(one_thread, tmp_path):
    marker = tmp_path / "a worker died"
    spec = {
        "source": "factory",
        "factory": "tests.core.search.test_distributed:dies_once_in_a_worker",
        "input_size": 28,
        "num_classes": 10,
        "kwargs": {"marker": str(marker)},
    }
    model = _trained(spec)
    serial = _search(model, None)
    assert not marker.exists()  # the serial run never runs in a worker
    local = _search(model, DistributedConfig(scheduler="local", workers=2))
    assert marker.exists()  # a worker did die
    _same_front(serial, local)


def test_an_unreachable_scheduler_fails_within_seconds_naming_its_address():
    model = build_model({"name": "lenet5", "conv_channels": [4, 8], "fc_features": [8, 8]})
    start = time.perf_counter()
    with pytest.raises(DistributedError, match=r"tcp://127\.0\.0\.1:9 .*dask scheduler"):
        _search(model, DistributedConfig(scheduler="tcp://127.0.0.1:9", connect_timeout_s=2))
    assert time.perf_counter() - start < 15
