"""A run that cannot succeed is refused before its first node, in seconds, saying what to fix: an unreachable
tracking server, an unusable SQLite store, `device: cuda` without a GPU, an output folder that cannot be
written. And `kedro run` from a subfolder works from the project root."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch

from evoprune.pipeline_registry import register_pipelines
from evoprune.startup_checks import StartupCheckError
from tests.conftest import run_tiny_session
from tests.reliability.kedro_process import run_kedro, tracked_runs


def _closed_port() -> int:
    """A local TCP port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _set_tracking_uri(project, uri: str) -> None:
    (project / "conf/tiny/mlflow.yml").write_text(f"server:\n  mlflow_tracking_uri: {uri}\n")


@pytest.mark.slow
def test_an_unreachable_tracking_server_stops_kedro_run_naming_the_uri_and_the_local_store(tiny_project):
    uri = f"http://127.0.0.1:{_closed_port()}"
    _set_tracking_uri(tiny_project, uri)
    returncode, output, _ = run_kedro(tiny_project, "data_preparation")
    assert returncode != 0
    assert f"The MLflow tracking server {uri} does not answer" in output, output[-3000:]
    assert "mlflow_tracking_uri: sqlite:///mlflow.db in conf/local/mlflow.yml" in output
    assert "Running node" not in output and not (tiny_project / "data/tiny").exists()


def test_an_unreachable_tracking_server_is_refused_within_seconds(tiny_project):
    uri = f"http://127.0.0.1:{_closed_port()}"
    _set_tracking_uri(tiny_project, uri)
    register_pipelines()  # imports torch and every stage: the clock measures the session, not the imports
    start = time.monotonic()
    with pytest.raises(StartupCheckError, match=rf"{uri} does not answer \(cannot connect"):
        run_tiny_session(tiny_project)
    seconds = time.monotonic() - start
    assert seconds < 10, f"{seconds:.1f} s (MLflow's own retries take about 4 minutes)"


@pytest.mark.slow
def test_a_run_from_a_subfolder_writes_everything_at_the_project_root(tiny_project):
    _set_tracking_uri(tiny_project, "sqlite:///mlflow.db")  # relative: the project root, not the cwd
    subfolder = tiny_project / "notebooks" / "scratch"
    subfolder.mkdir(parents=True)
    returncode, output, _ = run_kedro(tiny_project, "data_preparation", cwd=subfolder)
    assert returncode == 0, output[-3000:]

    assert list(subfolder.iterdir()) == [] and sorted(p.name for p in subfolder.parent.iterdir()) == ["scratch"]
    assert (tiny_project / "data/tiny/05_model_input/fashion_mnist_train.pt").is_file()
    (run,) = tracked_runs(tiny_project)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.removeprefix("file://").startswith(f"{tiny_project / 'mlruns'}/")


def test_an_sqlite_store_in_a_missing_folder_is_refused_naming_the_file(tiny_project):
    missing = tiny_project / "no_such_folder" / "mlflow.db"
    _set_tracking_uri(tiny_project, f"sqlite:///{missing}")
    with pytest.raises(StartupCheckError, match=rf"{missing}.*does not exist; create it \(mkdir -p"):
        run_tiny_session(tiny_project)
    assert not missing.parent.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files")
def test_a_read_only_sqlite_store_is_refused_naming_the_file(tiny_project):
    store = tiny_project / "mlflow.db"
    store.write_bytes(b"")
    store.chmod(0o444)
    with pytest.raises(StartupCheckError, match=rf"{store} .*is read-only; make it writable \(chmod u\+w"):
        run_tiny_session(tiny_project)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_refused_before_the_run_opens(tiny_project):
    with pytest.raises(StartupCheckError, match=r"`device: cuda`.*no GPU.*--params=device=cpu; no node ran"):
        run_tiny_session(tiny_project, runtime_params={"device": "cuda"})
    assert tracked_runs(tiny_project) == []  # refused before kedro-mlflow opened a run
    assert not (tiny_project / "data/tiny/05_model_input").exists()


def test_an_output_folder_that_cannot_be_created_is_refused_naming_it(tiny_project):
    (tiny_project / "blocked").write_text("a file where the outputs folder should go")
    globals_yml = tiny_project / "conf/tiny/globals.yml"
    globals_yml.write_text(globals_yml.read_text().replace("outputs: data/tiny", "outputs: blocked/tiny"))
    with pytest.raises(
        StartupCheckError, match=r"blocked/tiny \(globals `outputs`\) cannot be created: .*blocked is a file"
    ):
        run_tiny_session(tiny_project)
    assert tracked_runs(tiny_project) == []


def test_a_stage_whose_inputs_were_never_made_is_refused_before_it_starts(tiny_project):
    """mask_search alone before prune ever ran: every missing input named, with the pipeline that makes them."""
    with pytest.raises(
        StartupCheckError,
        match=r"This run needs `early_exit_operating_point` \(.*\), `multi_exit_model` \(.*multi_exit_model.pt\), "
        r"`train_split` \(.*\), `validation_split` \(.*\), which no node of this run makes and which are not on disk.*kedro run --pipeline=prune",
    ):
        run_tiny_session(tiny_project, "mask_search")
    assert not (tiny_project / "data/tiny/07_model_output").exists()
