"""Shared fixtures: tiny generated MNIST-like IDX files and a throwaway copy of the project."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from evoprune.core.data import IDX_FILES

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``compress``; returns the path written."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake images: noise plus a bright 6x6 block whose position encodes the label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 5)
        images[i, 4 + 12 * r : 10 + 12 * r, 2 + 5 * c : 8 + 5 * c] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def image_split(n: int, seed: int) -> dict[str, torch.Tensor]:
    """A split of ``n`` fake images as the pipelines hold it: uint8 images and int64 labels."""
    x, y = make_images(n, seed)
    return {"images": torch.from_numpy(x), "labels": torch.from_numpy(y).long()}


def write_fake_dataset(folder: Path, n_train: int = 600, n_test: int = 200, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make_images(n_train, seed=0)
    test_x, test_y = make_images(n_test, seed=1)
    for name, arr in zip(IDX_FILES, (train_x, train_y, test_x, test_y), strict=True):
        write_idx(folder / name, arr, compress)
    return folder


@pytest.fixture(scope="session")
def fake_idx_dir(tmp_path_factory) -> Path:
    """Four gzipped IDX files (600 train, 200 test images), like Debian's package ships them."""
    return write_fake_dataset(tmp_path_factory.mktemp("fake_fashion_mnist"))


@pytest.fixture
def tiny_project(tmp_path, fake_idx_dir, monkeypatch) -> Path:
    """A copy of the project's conf and pyproject in tmp_path, wired to the fake data and to a
    temporary MLflow SQLite store; run it with env ``tiny``."""
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(PROJECT_ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "src").mkdir()  # evoprune itself is installed; Kedro only wants the folder
    tiny = tmp_path / "conf" / "tiny"
    (tiny / "globals.yml").write_text(f"outputs: data/tiny\ndataset:\n  source_dir: {fake_idx_dir}\n")
    (tiny / "mlflow.yml").write_text(f"server:\n  mlflow_tracking_uri: sqlite:///{tmp_path / 'mlflow.db'}\n")
    (tiny / "parameters.yml").write_text(
        "data_preparation:\n  validation_size: 100\ntrain_dense:\n  training:\n    epochs: 2\n    batch_size: 20\n"
        "    optimizer: adamw\n    learning_rate: 3.0e-3\n"
        "build_exits:\n  training:\n    epochs: 1\n    batch_size: 20\n  latency:\n    batch_size: 50\n    repeats: 2\n"
        "mask_search:\n  validation_subset: 100\n  adaptive_bn_images: 64\n  random_masks: 4\n"
        "  search:\n    pop_size: 8\n    generations: 2\n    checkpoint_every: 1\n    max_accuracy_drop: 0.9\n"
        "  roulette_branch:\n    branch_size: 3\n    max_levels: 2\n"
        "finetune:\n  training:\n    epochs: 1\n    batch_size: 20\n"
        "  measurement:\n    latency_batch_sizes: [1, 20]\n    latency_repeats: 1\n"
    )
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working directory
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
    return tmp_path
