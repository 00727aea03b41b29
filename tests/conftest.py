"""Shared fixtures: tiny generated MNIST-like IDX files and CIFAR python batches, and a throwaway copy of
the project."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import struct
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from evoprune.core.cifar import CIFAR_CLASSES
from evoprune.core.data import IDX_FILES
from evoprune.core.exits import attach_exits, build_network
from evoprune.core.models import build_model
from tests.fake_images import image_split, make_images  # noqa: F401 (the tests import them from here too)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one pytest-xdist worker per core: one thread each
    torch.set_num_threads(1)


def tiny_multi_exit(noise: float = 0.0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A tiny VGG-style network with an exit after its first stage, seeded: ``(trained, initial)``, the "trained"
    weights being θ0 plus ``noise`` times Gaussian noise (standing for training: weights differ from θ0), in eval
    mode."""
    torch.manual_seed(0)
    initial = attach_exits(build_model({"name": "vgg", "stages": [[8], [16]], "fc_features": [16]}), [1])
    trained = build_network(initial.spec)
    trained.load_state_dict(initial.state_dict())
    if noise:
        with torch.no_grad():
            for p in trained.parameters():
                p.add_(noise * torch.randn_like(p))
    return trained.eval(), initial.eval()


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


def write_fake_dataset(folder: Path, n_train: int = 600, n_test: int = 200, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make_images(n_train, seed=0)
    test_x, test_y = make_images(n_test, seed=1)
    for name, arr in zip(IDX_FILES, (train_x, train_y, test_x, test_y), strict=True):
        write_idx(folder / name, arr, compress)
    return folder


class Py2StylePickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING), as Python 2's cPickle wrote the CIFAR
    originals (protocol 2); read back with ``encoding="latin1"`` they become ``str``, as torchvision reads them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def cifar_pickle(obj: object, py2_style: bool = False) -> bytes:
    """``obj`` pickled with protocol 2: as Python 3 writes it, or like the Python 2 originals (str as
    BINSTRING, arrays rebuilt by ``numpy.core.multiarray._reconstruct``)."""
    if not py2_style:
        return pickle.dumps(obj, protocol=2)
    buffer = io.BytesIO()
    Py2StylePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_fake_cifar(folder: Path, dataset: str, per_batch: int = 6, n_test: int = 10, py2_style: bool = False) -> Path:
    """Tiny CIFAR python batches in ``<folder>/<base_folder>/`` (5 training batches of ``per_batch`` images
    for CIFAR-10, one of ``5 * per_batch`` for CIFAR-100), in the real format; returns ``folder``."""
    cls, _, labels_key = CIFAR_CLASSES[dataset]
    num_classes = 10 if dataset == "cifar10" else 100
    out = folder / cls.base_folder
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    text = (lambda s: s.encode("latin1")) if py2_style else (lambda s: s)
    train_names = [name for name, _ in cls.train_list]
    sizes = [per_batch] * len(train_names) if len(train_names) > 1 else [5 * per_batch]
    for name, n in [*zip(train_names, sizes, strict=True), (cls.test_list[0][0], n_test)]:
        batch = {
            text("batch_label"): text(f"{name} of the fake {dataset}"),
            text(labels_key): [int(v) for v in rng.integers(0, num_classes, n)],
            text("data"): rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            text("filenames"): [text(f"img_{i}.png") for i in range(n)],
        }
        if dataset == "cifar100":
            batch[text("coarse_labels")] = [v // 5 for v in batch[text(labels_key)]]
        (out / name).write_bytes(cifar_pickle(batch, py2_style))
    meta = {text(cls.meta["key"]): [text(f"class_{i}") for i in range(num_classes)]}
    (out / cls.meta["filename"]).write_bytes(cifar_pickle(meta, py2_style))
    return folder


def read_fake_cifar_batch(path: Path) -> dict:
    """A batch the test wrote (trusted: it is our own file), as torchvision reads it."""
    with path.open("rb") as handle:
        return pickle.load(handle, encoding="latin1")


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
        "latency_profile:\n  batch_size: 16\n  repeats: 1\n  grid_points: 2\n  calibration_masks: 3\n"
        "  validation_masks: 3\n"
        "mask_search:\n  validation_subset: 100\n  adaptive_bn_images: 64\n  random_masks: 4\n"
        "  member_budgets: [0.5, 0.25]\n  candidates_per_budget: 2\n"
        "  search:\n    pop_size: 8\n    generations: 2\n    checkpoint_every: 1\n    max_accuracy_drop: 0.9\n"
        "    uncapped_below: 0.0\n"  # 8 x 2 candidates: too few between 0.2 and 0.25 to contest that budget
        "  roulette_branch:\n    branch_size: 3\n    max_levels: 2\n"
        "finetune:\n  training:\n    epochs: 1\n    batch_size: 20\n"
        "  measurement:\n    latency_batch_sizes: [1, 20]\n    latency_repeats: 1\n"
        "dst:\n  unstructured:\n    training:\n      epochs: 1\n      batch_size: 50\n"
        "  structured:\n    training:\n      epochs: 1\n      batch_size: 50\n"
        "scoring_net:\n  training:\n    stages:\n      - {stage: gates, steps: 10, batch_size: 32}\n"
        "      - {stage: refine, steps: 3, batch_size: 32}\n    feature_images: 64\n    eval_budgets: [0.5]\n"
        "  transfer:\n    budgets: [0.5]\n    adaptation_steps: 3\n    test_images: 100\n"
        "    finetune: {epochs: 1, batch_size: 50}\n    targets:\n"
        "      - {name: digits_lenet5, dataset: digits, train_images: 200, training: {epochs: 1}}\n"
        "      - {name: classes_5_9, classes: [5, 6, 7, 8, 9], source_classes: [0, 1, 2, 3, 4], training: {epochs: 1}}\n"
    )
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working directory
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
    return tmp_path


def run_tiny_session(
    project: Path,
    pipeline: str | list[str] = "prune",
    to_outputs: list[str] | None = None,
    node_names: list[str] | None = None,
    **kwargs,
):
    """One ``kedro run --env=tiny`` of ``pipeline`` (or of several, as ``--pipelines=a,b``; of only
    ``node_names``, as ``--nodes``) through a KedroSession in this process; ``kwargs`` go to
    ``KedroSession.create`` (e.g. ``runtime_params``)."""
    bootstrap_project(project)
    names = [pipeline] if isinstance(pipeline, str) else list(pipeline)
    try:
        with KedroSession.create(project_path=project, env="tiny", **kwargs) as session:
            return session.run(pipeline_names=names, to_outputs=to_outputs, node_names=node_names)
    finally:
        # kedro-mlflow 2.0.3 leaves the session's run active in this process (a `kedro run` ends with its
        # process); close it so that the next session of this test process opens its own run
        while mlflow.active_run() is not None:
            mlflow.end_run()
