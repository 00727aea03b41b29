"""An MLflow run's status tells the truth: KILLED when `kedro run` is stopped by a signal (or killed outright:
then the next run marks it), FAILED when the run is refused, never FINISHED without its metrics."""

from __future__ import annotations

import os
import signal

import mlflow
import pytest

from evoprune.run_status import END_REASON_TAG, HOST_TAG, process_tags
from tests.conftest import run_tiny_session
from tests.reliability.kedro_process import finish, run_kedro, start_kedro, tracked_runs, wait_for_file

TRAIN_SPLIT = "data/tiny/05_model_input/fashion_mnist_train.pt"  # written by the first node of `prune`


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_run_stopped_by_a_signal_ends_killed(tiny_project, signum):
    process = start_kedro(tiny_project, "prune")
    wait_for_file(tiny_project / TRAIN_SPLIT, process)
    process.send_signal(signum)
    output = finish(process, timeout=60)

    assert process.returncode not in (0, -signum), output[-2000:]  # it exited by itself, after cleaning up
    (run,) = tracked_runs(tiny_project)
    assert run.info.status == "KILLED", output[-2000:]
    assert run.data.tags[END_REASON_TAG].startswith(f"{signum.name} received")
    assert not (tiny_project / "data/tiny/06_models/dense_model.pt").exists()  # it stopped mid-run


@pytest.mark.slow
def test_a_run_killed_outright_is_marked_killed_by_the_next_run_and_live_runs_are_left_alone(tiny_project):
    process = start_kedro(tiny_project, "prune")
    wait_for_file(tiny_project / TRAIN_SPLIT, process)
    process.kill()  # SIGKILL: no handler runs, the run stays RUNNING
    finish(process, timeout=60)
    (killed,) = tracked_runs(tiny_project)
    assert killed.info.status == "RUNNING"

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tiny_project / 'mlflow.db'}")
    experiment = killed.info.experiment_id
    live = client.create_run(experiment, tags=process_tags(os.getpid()), run_name="live")  # this test's process
    elsewhere = client.create_run(
        experiment, tags={**process_tags(), HOST_TAG: "another-machine"}, run_name="elsewhere"
    )  # a pid we cannot check on another machine

    returncode, output, _ = run_kedro(tiny_project, "data_preparation")
    assert returncode == 0, output[-3000:]

    runs = {run.info.run_id: run for run in tracked_runs(tiny_project)}
    assert runs[killed.info.run_id].info.status == "KILLED"
    reason = runs[killed.info.run_id].data.tags[END_REASON_TAG]
    assert f"process {killed.data.tags['evoprune.pid']} " in reason and "ended without closing the run" in reason
    assert runs[live.info.run_id].info.status == "RUNNING"
    assert runs[elsewhere.info.run_id].info.status == "RUNNING"
    (next_run,) = [r for r in runs.values() if r.info.run_name == "data_preparation"]
    assert next_run.info.status == "FINISHED" and next_run.data.tags["evoprune.pid"] != killed.data.tags["evoprune.pid"]


def test_a_run_refused_before_its_first_node_ends_failed_with_the_reason(tiny_project):
    with pytest.raises(Exception, match=r"no module \['conv9'\]"):
        run_tiny_session(tiny_project, runtime_params={"build_exits": {"exit_after": ["stages.0", "conv9"]}})
    (run,) = tracked_runs(tiny_project)
    assert run.info.status == "FAILED"
    assert run.data.tags[END_REASON_TAG].startswith("refused before the first node: ")
    assert "conv9" in run.data.tags[END_REASON_TAG]
    assert not (tiny_project / "data/tiny/05_model_input").exists()


def test_an_error_in_a_node_ends_the_run_failed_with_the_error(tiny_project):
    globals_yml = tiny_project / "conf/tiny/globals.yml"
    globals_yml.write_text(f"outputs: data/tiny\ndataset:\n  source_dir: {tiny_project / 'nowhere'}\n")
    with pytest.raises(Exception, match=r"train-images-idx3-ubyte"):
        run_tiny_session(tiny_project)
    (run,) = tracked_runs(tiny_project)
    assert run.info.status == "FAILED"
    assert "train-images-idx3-ubyte" in run.data.tags[END_REASON_TAG]


def test_ending_a_run_at_exit_is_retried_while_the_store_is_locked(monkeypatch):
    import threading

    from evoprune import hooks

    hook = hooks.MlflowRunStatusHook()
    hook._run_id, hook._signal = "run-1", "SIGTERM"
    calls = []

    def end(status, reason):
        calls.append((status, reason))
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")

    monkeypatch.setattr(hook, "_end_open_runs", end)
    monkeypatch.setattr(hooks, "END_RETRY_SECONDS", 0.0)
    worker = threading.Thread(target=hook._at_exit)  # not the main thread: leaves pytest's signal handlers alone
    worker.start()
    worker.join()
    assert [status for status, _ in calls] == ["KILLED"] * 3  # two locked attempts, then it ended the run
    calls.clear()

    def always_locked(status, reason):
        calls.append((status, reason))
        raise RuntimeError("(sqlite3.OperationalError) database is locked")

    monkeypatch.setattr(hook, "_end_open_runs", always_locked)
    worker = threading.Thread(target=hook._at_exit)
    worker.start()
    worker.join()
    assert len(calls) == hooks.END_ATTEMPTS  # gives up after the last attempt, without raising


def test_a_signal_whose_interrupt_was_swallowed_stops_the_run_at_the_next_node():
    from evoprune import hooks

    hook = hooks.MlflowRunStatusHook()
    hook.before_node_run()  # no signal: nodes run
    hook._signal = "SIGINT"  # the handler ran, but its KeyboardInterrupt was lost (e.g. raised in a finaliser)
    with pytest.raises(KeyboardInterrupt, match="SIGINT received"):
        hook.before_node_run()
