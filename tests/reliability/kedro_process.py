"""`kedro run` in its own process, as a user starts it, on a copy of the project (the ``tiny_project``
fixture), running this checkout's code; and the runs it leaves in the project's MLflow store. Timeouts are
generous: on a loaded 2-core machine one `kedro run` spends minutes importing torch and the pipelines."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow

SRC = Path(__file__).resolve().parents[2] / "src"
KEDRO = Path(sys.executable).with_name("kedro")


def start_kedro(
    project: Path, pipeline: str, cwd: Path | None = None, extra_args: tuple[str, ...] = ()
) -> subprocess.Popen:
    """``kedro run --pipeline=<pipeline> --env=tiny`` from ``cwd`` (default: the project root); stdout and
    stderr together, in wide lines (rich wraps at $COLUMNS), through ``finish``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "KEDRO_DISABLE_TELEMETRY": "1",
        "COLUMNS": "400",
    }
    return subprocess.Popen(
        [str(KEDRO), "run", f"--pipeline={pipeline}", "--env=tiny", *extra_args],
        cwd=cwd or project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    """Waits for ``process`` to end; returns its output with runs of whitespace made single spaces."""
    output, _ = process.communicate(timeout=timeout)
    return " ".join(output.split())


def run_kedro(
    project: Path, pipeline: str, cwd: Path | None = None, extra_args: tuple[str, ...] = ()
) -> tuple[int, str, float]:
    """Runs ``kedro run`` to its end: return code, output, seconds taken."""
    start = time.monotonic()
    process = start_kedro(project, pipeline, cwd, extra_args)
    output = finish(process)
    return process.returncode, output, time.monotonic() - start


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 600) -> None:
    """Polls until ``path`` exists; fails (with the run's output) if the run ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"kedro run ended (rc {process.returncode}) before {path} appeared: {finish(process)}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s: {finish(process)[-3000:]}")
        time.sleep(0.1)


def tracked_runs(project: Path, db: Path | None = None) -> list[mlflow.entities.Run]:
    """Every run of the ``evoprune`` experiment in the project's SQLite store, oldest first."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db or project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("evoprune")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
