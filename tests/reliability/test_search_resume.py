"""A `kedro run` killed outright (SIGKILL) in the middle of the mask search: the next run resumes from the
search checkpoint and ends with the same Pareto set and history as a run never interrupted; the killed
run's MLflow status is corrected to KILLED."""

from __future__ import annotations

import shutil
import time

import pandas as pd
import pytest

from tests.reliability.kedro_process import finish, run_kedro, start_kedro, tracked_runs

OUTPUTS = "data/tiny/07_model_output"
SEARCH = ("--to-outputs=pareto_set,mask_search_history",)  # data_preparation .. mask_search


def _params(checkpoints: str) -> tuple[str, ...]:
    """Six generations (the kill lands before the last), a checkpoint after each, in ``checkpoints``."""
    return (
        "--params",
        f"mask_search.search.generations=6,mask_search.search.checkpoint_every=1,"
        f"mask_search.checkpoint_dir=data/tiny/{checkpoints}",
    )


@pytest.mark.slow
def test_a_search_killed_outright_resumes_to_the_front_of_an_uninterrupted_run(tiny_project):
    process = start_kedro(tiny_project, "prune", extra_args=(*SEARCH, *_params("checkpoints")))
    while not list((tiny_project / "data/tiny/checkpoints").glob("*/state.npz")):
        if process.poll() is not None:
            raise AssertionError(f"kedro run ended before the first search checkpoint: {finish(process)[-3000:]}")
        time.sleep(0.05)
    process.kill()
    finish(process, timeout=60)
    (killed,) = tracked_runs(tiny_project)
    assert killed.info.status == "RUNNING"  # SIGKILL: nothing could close it

    returncode, output, _ = run_kedro(tiny_project, "prune", extra_args=(*SEARCH, *_params("checkpoints")))
    assert returncode == 0, output[-3000:]
    assert "Resuming the mask search from" in output and "state.npz after generation" in output
    resumed = {n: pd.read_csv(tiny_project / OUTPUTS / f"{n}.csv") for n in ("pareto_set", "mask_search_history")}
    shutil.rmtree(tiny_project / "data/tiny/checkpoints")

    returncode, output, _ = run_kedro(tiny_project, "prune", extra_args=(*SEARCH, *_params("fresh")))
    assert returncode == 0, output[-3000:]
    assert "Resuming the mask search" not in output
    for name, table in resumed.items():
        pd.testing.assert_frame_equal(table, pd.read_csv(tiny_project / OUTPUTS / f"{name}.csv"), obj=name)

    statuses = {run.info.run_id: run.info.status for run in tracked_runs(tiny_project)}
    assert statuses[killed.info.run_id] == "KILLED" and list(statuses.values()).count("FINISHED") == 2
