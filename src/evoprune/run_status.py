"""Truthful MLflow run statuses: a run interrupted by SIGINT/SIGTERM ends KILLED, one broken by an error
ends FAILED (never FINISHED without its metrics), and a run left RUNNING by a process that died without a
word (SIGKILL, power loss) is marked KILLED by the next run on the same machine.

Our runs carry the tags ``evoprune.host``, ``evoprune.pid`` and ``evoprune.pid_start`` (the process's start
time, so that a reused pid is not taken for the old process); ``evoprune.end_reason`` says why a run did
not finish."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

HOST_TAG = "evoprune.host"
PID_TAG = "evoprune.pid"
PID_START_TAG = "evoprune.pid_start"
END_REASON_TAG = "evoprune.end_reason"
KILLED = RunStatus.to_string(RunStatus.KILLED)
FAILED = RunStatus.to_string(RunStatus.FAILED)
RUNNING = RunStatus.to_string(RunStatus.RUNNING)


def host_id() -> str:
    """This machine as seen by its processes: host name plus pid namespace (containers sharing a host name
    do not see each other's pids)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}" if namespace else socket.gethostname()


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None where /proc has no entry."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5); the name in (...) may hold spaces


def process_tags(pid: int | None = None) -> dict[str, str]:
    """The tags that identify process ``pid`` (default: this one) on this machine."""
    pid = os.getpid() if pid is None else pid
    return {HOST_TAG: host_id(), PID_TAG: str(pid), PID_START_TAG: process_start(pid) or ""}


def process_is_gone(tags: dict[str, str]) -> bool:
    """Whether the process named by a run's tags has ended. Only decidable on the same machine: a run from
    another host (or untagged) is never declared gone."""
    if tags.get(HOST_TAG) != host_id() or not tags.get(PID_TAG, "").isdigit():
        return False
    pid = int(tags[PID_TAG])
    if Path("/proc").is_dir():
        start = process_start(pid)
        return start is None or (bool(tags.get(PID_START_TAG)) and start != tags[PID_START_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def mark_abandoned_runs(client: MlflowClient, experiment_id: str, own_run_id: str | None = None) -> list[str]:
    """Marks KILLED (with ``evoprune.end_reason``) every RUNNING run of the experiment whose process on this
    machine is gone, and its RUNNING nested runs; live runs, other hosts' runs and ``own_run_id`` are left
    alone. Returns the ids of the runs marked."""
    running = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = '{RUNNING}' and tags.`{HOST_TAG}` = '{host_id()}'"
    )
    marked: list[str] = []
    for run in running:
        if run.info.run_id == own_run_id or not process_is_gone(run.data.tags):
            continue
        reason = (
            f"process {run.data.tags[PID_TAG]} on {socket.gethostname()} ended without closing the run "
            f"(killed: SIGKILL, out of memory, power loss); marked by run {own_run_id} at {time.ctime()}"
        )
        for run_id in [run.info.run_id, *running_children(client, experiment_id, run.info.run_id)]:
            end_run(client, run_id, KILLED, reason)
            marked.append(run_id)
    return marked


def running_children(client: MlflowClient, experiment_id: str, parent_id: str) -> list[str]:
    """Ids of the RUNNING nested runs of ``parent_id``."""
    children = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = '{RUNNING}' and tags.`mlflow.parentRunId` = '{parent_id}'",
    )
    return [child.info.run_id for child in children]


def end_run(client: MlflowClient, run_id: str, status: str, reason: str) -> None:
    """Ends ``run_id`` with ``status`` and the tag ``evoprune.end_reason``."""
    client.set_tag(run_id, END_REASON_TAG, reason[:5000])
    client.set_terminated(run_id, status)
