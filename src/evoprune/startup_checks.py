"""What ``ProjectStartupHook`` does before the first node runs (the tracking store: before kedro-mlflow
contacts it): make the project root the working directory, and check the tracking store, the device and the
output folders; each check raises ``StartupCheckError`` saying what is wrong and how to fix it, instead of a
traceback minutes in."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

LOCAL_STORE_HINT = (
    "to track into the local SQLite store instead, put\n"
    "    server:\n"
    "      mlflow_tracking_uri: sqlite:///mlflow.db\n"
    "in conf/local/mlflow.yml"
)
PROBE_TIMEOUT_S = 5.0  # per attempt; one attempt, no retries
logger = logging.getLogger(__name__)


class StartupCheckError(RuntimeError):
    """A run refused before any node ran; the message names the setting and the fix."""


def configured_tracking_uri(conf_mlflow: dict) -> str | None:
    """The tracking URI a run will use: ``server.mlflow_tracking_uri`` of mlflow.yml, else
    ``$MLFLOW_TRACKING_URI`` (as kedro-mlflow resolves it); None when neither is set (local ``mlruns``)."""
    uri = (conf_mlflow.get("server") or {}).get("mlflow_tracking_uri")
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def check_tracking_store(uri: str | None) -> None:
    """Refuses an HTTP(S) tracking server that does not answer, or a SQLite store whose file or folder
    cannot be written. Relative SQLite paths are taken from the working directory (the project root once
    ``ProjectStartupHook`` ran). Other schemes (databricks, file stores) are left to MLflow."""
    if not uri:
        return
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        check_server_answers(uri)
    elif scheme == "sqlite":
        check_sqlite_store(uri)


def check_server_answers(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """One request to ``<uri>/health`` without retries: any HTTP answer (even 404 or 401) means a server
    listens; a refused connection or a timeout is refused here, naming the URI (MLflow itself would retry
    for minutes, then fail with a traceback)."""
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=(timeout, timeout))
    except requests.exceptions.RequestException as error:
        why = f"no answer within {timeout:g} s" if isinstance(error, requests.exceptions.Timeout) else "cannot connect"
        raise StartupCheckError(
            f"The MLflow tracking server {uri} does not answer ({why}: {type(error).__name__}); "
            "no node ran. It is set by server.mlflow_tracking_uri in conf/<env>/mlflow.yml (or "
            f"$MLFLOW_TRACKING_URI). Start the server (e.g. `mlflow server --host 127.0.0.1 --port 5000`), "
            f"or {LOCAL_STORE_HINT}."
        ) from None


def sqlite_path(uri: str) -> Path:
    """``sqlite:///mlflow.db`` -> ``mlflow.db`` (relative), ``sqlite:////abs/mlflow.db`` -> ``/abs/mlflow.db``."""
    return Path(uri[len("sqlite:///") :])


def check_sqlite_store(uri: str) -> None:
    """The SQLite file's folder exists and is writable (SQLite writes a journal beside the file), and an
    existing file is writable: else name the file and the fix (MLflow says only "unable to open database
    file" or "attempt to write a readonly database")."""
    if uri in ("sqlite://", "sqlite:///:memory:"):
        return
    path = sqlite_path(uri)
    where = f"MLflow's SQLite store {path.resolve()} (server.mlflow_tracking_uri: {uri})"
    if not path.parent.is_dir():
        raise StartupCheckError(
            f"{where}: its folder {path.parent.resolve()} does not exist; create it "
            f"(mkdir -p {path.parent.resolve()}) or point server.mlflow_tracking_uri at another file, e.g. "
            "sqlite:///mlflow.db (the project root), in conf/local/mlflow.yml."
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise StartupCheckError(
            f"{where} is read-only; make it writable (chmod u+w {path.resolve()}) or point "
            "server.mlflow_tracking_uri at another file in conf/local/mlflow.yml."
        )
    if not _folder_writable(path.parent):
        raise StartupCheckError(
            f"{where}: its folder {path.parent.resolve()} is not writable (SQLite writes a journal beside the "
            "file); make it writable or point server.mlflow_tracking_uri elsewhere in conf/local/mlflow.yml."
        )


def check_output_folders(folders: dict[str, Path]) -> None:
    """Every folder a run writes into can be created and written: its nearest existing ancestor is a folder
    that accepts a file. ``folders`` maps where a folder is configured (e.g. ``globals outputs``) to it."""
    for origin, folder in folders.items():
        existing = _nearest_existing(folder)
        if not existing.is_dir():
            raise StartupCheckError(
                f"The output folder {folder.resolve()} ({origin}) cannot be created: {existing.resolve()} is a "
                "file, not a folder. Move that file away or point the setting at another folder."
            )
        if not _folder_writable(existing):
            raise StartupCheckError(
                f"The output folder {folder.resolve()} ({origin}) is not writable ({existing.resolve()} refuses "
                "new files). Make it writable, or point the setting at another folder (e.g. `outputs` in "
                "conf/local/globals.yml)."
            )


def check_device(name: str) -> None:
    """``device: cuda`` on a machine where torch sees no GPU (or an unknown device name) is refused."""
    from evoprune.core.runtime import resolve_device

    try:
        resolve_device(name)
    except ValueError as error:
        raise StartupCheckError(
            f"{error} Set `device` in conf/<env>/parameters.yml or pass --params=device=cpu; no node ran."
        ) from None


def _nearest_existing(path: Path) -> Path:
    """``path`` itself, or its closest ancestor that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _folder_writable(folder: Path) -> bool:
    """A temporary file can be created in ``folder`` (true test: also read-only mounts, also for root)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def run_from_project_root(project_path: Path) -> None:
    """Makes ``project_path`` the working directory (``kedro run`` finds the project from a subfolder, but
    Kedro and MLflow take relative paths from the working directory)."""
    if Path.cwd().resolve() != project_path.resolve():
        logger.info(
            "Working directory %s -> project root %s: relative paths (catalog, sqlite:///mlflow.db, checkpoints) "
            "are taken from the project root",
            Path.cwd(),
            project_path,
        )
        os.chdir(project_path)


def output_folders(globals_: dict, catalog: dict) -> dict[str, Path]:
    """Folders the run writes into, each with where it is configured: the ``outputs`` global and the folder
    of every local ``filepath``/``path`` of the catalog (cut before a ``{placeholder}``)."""
    folders: dict[Path, str] = {}
    if globals_.get("outputs"):
        folders[Path(globals_["outputs"])] = "globals `outputs`"
    for name, entry in catalog.items():
        for key, value in _local_paths(entry):
            folders.setdefault(_folder_of(key, value), f"catalog {name}.{key}")
    return {origin: folder for folder, origin in folders.items()}


def _folder_of(key: str, value: str) -> Path:
    """The folder a catalog ``filepath`` (a file) or ``path`` (a folder) lies in; a pattern
    (``data/05_model_input/{split}.pt``) is cut before its first placeholder."""
    if "{" in value:
        prefix = value.split("{", 1)[0]
        return Path(prefix[: prefix.rfind("/") + 1] or ".")
    return Path(value) if key == "path" else Path(value).parent


def _local_paths(entry: Any, key: str = "") -> list[tuple[str, str]]:
    """``(key, value)`` of every ``filepath``/``path`` string in a catalog entry (nested datasets too) that
    is a local path (no ``scheme://``)."""
    if isinstance(entry, dict):
        found: list[tuple[str, str]] = []
        for sub_key, value in entry.items():
            found += _local_paths(value, sub_key)
        return found
    if key in ("filepath", "path") and isinstance(entry, str) and "://" not in entry:
        return [(key, entry)]
    return []


def check_free_inputs_exist(pipeline: Any, catalog: Any) -> None:
    """Refuses a run whose free inputs (datasets no node of the run makes) are not on disk, e.g. ``--pipeline=
    mask_search`` before ``prune`` ever ran: otherwise Kedro fails only when the first node needing one loads it,
    possibly an hour in. Datasets that cannot tell whether they exist (no ``_exists`` of their own) are skipped."""
    from kedro.io.core import AbstractDataset

    missing = []
    for name in sorted(pipeline.inputs()):
        dataset = None if name.startswith("params:") or name == "parameters" else catalog.get(name)
        if dataset is None or type(dataset)._exists is AbstractDataset._exists:
            continue
        if not dataset.exists():
            path = getattr(dataset, "filepath", None) or getattr(dataset, "_filepath", None) or ""
            missing.append(f"`{name}`" + (f" ({path})" if path else ""))
    if missing:
        raise StartupCheckError(
            "This run needs "
            + ", ".join(missing)
            + ", which no node of this run makes and which "
            + ("is" if len(missing) == 1 else "are")
            + " not on disk. Run the pipeline that makes "
            + ("it" if len(missing) == 1 else "them")
            + " first (e.g. `kedro run --pipeline=prune`), or widen this run (--from-nodes / --to-outputs)."
        )
