"""Project hooks."""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from evoprune import run_status
from evoprune.startup_checks import (
    check_device,
    check_free_inputs_exist,
    check_output_folders,
    check_tracking_store,
    configured_tracking_uri,
    output_folders,
    run_from_project_root,
)

logger = logging.getLogger(__name__)


def flatten_params(prefix: str, value: Any, sep: str = ".") -> dict[str, Any]:
    """``("train_dense", {"training": {"epochs": 3}})`` -> ``{"train_dense.training.epochs": 3}``."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten_params(f"{prefix}{sep}{key}", sub, sep))
        return out
    return {prefix: value}


class ConfigConsistencyHook:
    dataset: str | None = None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        try:
            globals_ = context.config_loader["globals"]
        except Exception:  # noqa: BLE001 - a project without globals: nothing to check
            globals_ = {}
        self.dataset = (globals_.get("dataset") or {}).get("name")

    """Checks the model configuration before any node runs: the model builds (torchvision name, factory),
    the checkpoint fits it, and the exits name modules it can be cut after."""

    @hook_impl
    def before_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        # kedro-mlflow has opened the run: MlflowRunStatusHook ends it FAILED, with the reason, if this raises
        self._check(pipeline, catalog)

    def _check(self, pipeline: Any, catalog: Any) -> None:
        inputs = pipeline.inputs()
        if "params:train_dense" in inputs:
            from evoprune.core.data import NATIVE_SHAPE, check_data_fits_model
            from evoprune.core.exits import check_network_config
            from evoprune.pipelines.build_exits.nodes import BuildExitsParams
            from evoprune.pipelines.train_dense.nodes import TrainDenseParams

            dense = TrainDenseParams.model_validate(_as_dict(catalog.load("params:train_dense")))
            exits = None
            if "params:build_exits" in inputs:
                exits = BuildExitsParams.model_validate(_as_dict(catalog.load("params:build_exits")))
            check_network_config(
                dense.model,
                exits.exit_after if exits else None,
                dense.checkpoint.path if dense.checkpoint else None,
            )
            if "params:data_preparation" in inputs and self.dataset in NATIVE_SHAPE:
                from evoprune.pipelines.data_preparation.nodes import DataPreparationParams

                data = DataPreparationParams.model_validate(_as_dict(catalog.load("params:data_preparation")))
                spec = dense.model
                check_data_fits_model(self.dataset, data.image_size, data.channels, spec.input_shape, spec.num_classes)


def _as_dict(value: Any) -> Any:
    return value.model_dump() if isinstance(value, BaseModel) else value


class VariantNamespacesHook:
    """Refuses, before any node runs, a run whose ``finetune.variants`` (after its environment and ``--params``)
    names a variant that has no ``finetune`` namespace (those come from conf/base + conf/local, see
    ``evoprune.pipeline_config``)."""

    @hook_impl
    def before_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        if "params:finetune" not in pipeline.inputs():
            return
        from kedro.framework.project import pipelines

        from evoprune.core.finetune_config import FinetuneParams

        variants = FinetuneParams.model_validate(_as_dict(catalog.load("params:finetune"))).variants
        # a variant's namespace is `finetune.<variant>` once registered (`<variant>` in finetune's own pipeline)
        namespaces = {n.namespace.split(".")[-1] for n in pipelines["finetune"].nodes if n.namespace} - {"finetune"}
        missing = [v for v in variants if v not in namespaces]
        if missing:
            raise ValueError(
                f"finetune.variants lists {missing}, which have no finetune namespace (the pipelines have "
                f"{sorted(namespaces)}): the namespaces are built from finetune.variants in "
                "conf/base/parameters_finetune.yml merged with conf/local; list the variants there, and narrow "
                "them per environment or with --params"
            )


class TypedParamsLoggingHook:
    """Logs typed (pydantic) node parameters to MLflow as flat keys (``train_dense.training.epochs``).

    Kedro hands nodes validated pydantic objects, which kedro-mlflow can only log as one long string;
    this hook adds the flat, comparable keys to the active run.
    """

    def __init__(self) -> None:
        self._logged: set[str] = set()

    @hook_impl
    def before_pipeline_run(self) -> None:
        self._logged.clear()  # one hook object serves every session of a process

    @hook_impl
    def before_node_run(self, node: Any, inputs: dict[str, Any]) -> None:
        if mlflow.active_run() is None:
            return
        flat: dict[str, Any] = {}
        for name, value in inputs.items():
            if name.startswith("params:") and isinstance(value, BaseModel) and name not in self._logged:
                flat.update(flatten_params(name[len("params:") :], value))
                self._logged.add(name)
        if flat:
            mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})


class ProjectStartupHook:
    """Before anything reads or writes a file: runs from the project root (relative paths in the catalog,
    ``sqlite:///mlflow.db``, checkpoint folders resolve there whatever the working directory), and refuses an
    unreachable tracking server or unwritable SQLite store before kedro-mlflow contacts it (``tryfirst``).
    Before the first node (and before the MLflow run opens): the device exists, the output folders can be
    written."""

    def __init__(self) -> None:
        self._folders: dict[str, Path] = {}

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: Any) -> None:
        """Project root as working directory; tracking store reachable; output folders noted."""
        run_from_project_root(Path(context.project_path))
        check_tracking_store(configured_tracking_uri(_config(context, "mlflow", ["mlflow*", "mlflow*/**"])))
        self._folders = output_folders(_config(context, "globals", None), _config(context, "catalog", None))

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        """Before kedro-mlflow opens the run: the device exists, the output folders can be written."""
        if "params:device" in pipeline.inputs():
            check_device(catalog.load("params:device"))
        check_output_folders(self._folders)


def _config(context: Any, name: str, patterns: list[str] | None) -> dict:
    """``context.config_loader[name]`` (registering ``patterns`` first when given); {} when absent."""
    loader = context.config_loader
    if patterns and name not in loader.config_patterns:
        loader.config_patterns.update({name: patterns})
    try:
        return dict(loader[name] or {})
    except (MissingConfigException, KeyError):
        return {}


END_ATTEMPTS = 5  # tries to end a run still open at exit (the tracking store may be locked for a moment)
END_RETRY_SECONDS = 1.0


class MlflowRunStatusHook:
    """Keeps the MLflow run's status truthful (see ``evoprune.run_status``).

    - SIGINT and SIGTERM raise ``KeyboardInterrupt`` while the pipeline runs (SIGTERM would otherwise end the
      process on the spot); at exit the run and its nested runs are ended KILLED, before MLflow's own atexit
      handler would end them FINISHED.
    - An error refused by a ``before_pipeline_run`` hook, or any exit with the run still open, ends it FAILED;
      errors in nodes are ended FAILED by kedro-mlflow, with our ``evoprune.end_reason`` tag.
    - The run is tagged with host, pid and process start time; runs of this machine whose process is gone
      and which are still RUNNING (SIGKILL) are marked KILLED when the next run starts.
    """

    def __init__(self) -> None:
        self._run_id: str | None = None
        self._signal: str | None = None
        self._signal_time_ms = 0
        self._previous_handlers: dict[int, Any] = {}
        self._exit_registered = False

    @hook_impl(wrapper=True)
    def before_pipeline_run(self):
        """Arms the signal and exit handlers; a refusal by another hook ends the run FAILED; then tags the
        opened run with this process and marks the runs of dead processes."""
        self._arm()
        try:
            result = yield
        except Exception as error:
            self._end_open_runs(run_status.FAILED, f"refused before the first node: {type(error).__name__}: {error}")
            self._disarm()
            raise
        self._adopt_active_run()
        return result

    @hook_impl
    def before_node_run(self) -> None:
        """Interrupts again at the next node when a signal's ``KeyboardInterrupt`` was swallowed on its way (raised
        where Python ignores exceptions, e.g. in a finaliser: seen once in a fresh-clone test run, where a SIGINT
        right after the first node left the whole run to finish FINISHED)."""
        if self._signal:
            raise KeyboardInterrupt(f"{self._signal} received")

    @hook_impl(wrapper=True)
    def on_pipeline_error(self, error: Exception):
        """Tags the run with the error before kedro-mlflow ends it FAILED."""
        if self._run_id is not None:
            with _logged_failure(f"could not tag run {self._run_id} with the error"):
                reason = f"{type(error).__name__}: {error}"[:5000]
                MlflowClient().set_tag(self._run_id, run_status.END_REASON_TAG, reason)
        try:
            return (yield)  # kedro-mlflow ends the run FAILED
        finally:
            self._run_id = None
            self._disarm()

    @hook_impl(wrapper=True)
    def after_pipeline_run(self):
        """Disarms the handlers once kedro-mlflow ended the run; an error here ends it FAILED."""
        try:
            return (yield)  # kedro-mlflow ends the run FINISHED
        except Exception as error:
            self._end_open_runs(run_status.FAILED, f"after the last node: {type(error).__name__}: {error}")
            raise
        finally:
            self._run_id = None
            self._disarm()

    def _adopt_active_run(self) -> None:
        """Tags the run kedro-mlflow opened with this process, and marks the runs of dead processes KILLED."""
        active = mlflow.active_run()
        if active is None:  # tracking disabled for this pipeline
            return
        self._run_id = active.info.run_id
        mlflow.set_tags(run_status.process_tags())
        marked = run_status.mark_abandoned_runs(MlflowClient(), active.info.experiment_id, self._run_id)
        if marked:
            logger.warning("Marked %d MLflow run(s) of ended processes KILLED: %s", len(marked), ", ".join(marked))

    def _arm(self) -> None:
        """SIGINT/SIGTERM raise KeyboardInterrupt (main thread only); the exit handler is registered once,
        after MLflow's (atexit runs handlers last-in, first-out)."""
        self._signal = None
        if not self._exit_registered:
            atexit.register(self._at_exit)
            self._exit_registered = True
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _disarm(self) -> None:
        """Restores the signal handlers found by ``_arm``."""
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous_handlers.items():
                if handler is not None:  # None: a handler not set from Python, which cannot be put back
                    signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Notes the signal and interrupts the run like Ctrl-C does."""
        self._signal = signal.Signals(signum).name
        self._signal_time_ms = int(time.time() * 1000)
        raise KeyboardInterrupt(f"{self._signal} received")

    def _at_exit(self) -> None:
        """Ends a run still open at exit: KILLED after a signal, else FAILED (an error outside the nodes)."""
        if self._run_id is None:  # ended by kedro-mlflow (it may leave a stale entry on mlflow's run stack)
            return
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut this short
                signal.signal(signum, signal.SIG_IGN)
        if self._signal:
            status, reason = run_status.KILLED, f"{self._signal} received: the run was interrupted"
        else:
            status, reason = run_status.FAILED, "the process exited with the run open (an error outside the nodes)"
        # The SQLite store can answer "database is locked" here (seen in 2 of 4 full test runs on a loaded 2-core
        # machine, SIGTERM mid-run); MLflow's own exit handler could write moments later and ended the run
        # FINISHED. The lock is transient: try again before giving up.
        for attempt in range(1, END_ATTEMPTS + 1):
            with _logged_failure(
                f"could not end MLflow run {self._run_id} {status} (attempt {attempt}/{END_ATTEMPTS})"
            ):
                self._end_open_runs(status, reason)
                return
            time.sleep(END_RETRY_SECONDS)

    def _end_open_runs(self, status: str, reason: str) -> None:
        """Ends this thread's open runs, and the nested runs of ours that are RUNNING (or that the interrupt
        ended FAILED), with ``status`` and ``reason``."""
        client = MlflowClient()
        while (active := mlflow.active_run()) is not None:
            client.set_tag(active.info.run_id, run_status.END_REASON_TAG, reason[:5000])
            mlflow.end_run(status)
        if self._run_id is None:
            return
        run = client.get_run(self._run_id)
        for child in client.search_runs(
            [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{self._run_id}'"
        ):
            interrupted = self._signal and child.info.status == run_status.FAILED
            if child.info.status == run_status.RUNNING or (interrupted and child.info.end_time >= self._signal_time_ms):
                run_status.end_run(client, child.info.run_id, status, reason)
        if run.info.status == run_status.RUNNING:
            run_status.end_run(client, self._run_id, status, reason)
        self._run_id = None


@contextlib.contextmanager
def _logged_failure(what: str) -> Iterator[None]:
    """Logs (instead of raising) an error of the tracking store while a run is being closed: the error that
    stopped the run is the one to report."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - the store may be what failed
        logger.warning("%s: %s: %s", what, type(error).__name__, error)


class ModelLineageHook:
    """Model files checked against the run that uses them.

    Before any node runs, a model file the run starts from (a free input: e.g. ``multi_exit_model.pt`` when only
    ``mask_search`` runs) is refused when its architecture is not the configured one (``train_dense.model``,
    ``build_exits.exit_after``), or when it was made from other inputs than those on disk now (another dense
    model, other training data: a file of another run). While the run goes on, every model a node makes records
    the digests of the models and data it was made from (``evoprune.core.lineage``); the model file keeps them.
    """

    def __init__(self) -> None:
        self._input_digests: dict[str, dict[str, str]] = {}

    @hook_impl
    def before_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        """Model files, then every free input on disk (``check_free_inputs_exist``). A refusal here ends the
        MLflow run FAILED with the reason (``MlflowRunStatusHook``)."""
        self._check_model_files(pipeline, catalog)
        check_free_inputs_exist(pipeline, catalog)  # after the model checks: their messages say more

    def _check_model_files(self, pipeline: Any, catalog: Any) -> None:
        from evoprune.core.exits import spec_differences
        from evoprune.datasets._file_dataset import TorchFileDataset
        from evoprune.pipelines.build_exits.nodes import BuildExitsParams
        from evoprune.pipelines.train_dense.nodes import TrainDenseParams

        headers = {}
        for name in sorted(pipeline.inputs()):
            dataset = catalog.get(name) if not name.startswith("params:") else None
            if isinstance(dataset, TorchFileDataset) and dataset.exists():
                headers[name] = (dataset.filepath, *dataset.read_header())
        if not headers:
            return
        model = TrainDenseParams.model_validate(_as_dict(catalog.load("params:train_dense"))).model
        exit_after = BuildExitsParams.model_validate(_as_dict(catalog.load("params:build_exits"))).exit_after
        for name, (filepath, spec, _) in headers.items():
            diffs = spec_differences(spec, model, exit_after) if spec is not None else []
            if diffs:
                raise ValueError(
                    f"`{name}` ({filepath}) was not made by this configuration: "
                    + "; ".join(diffs)
                    + f". Re-run the stages that make it (kedro run --pipeline=prune, or --to-outputs={name}), "
                    "or set train_dense.model / build_exits.exit_after to what it was made with."
                )
        made_here = pipeline.all_outputs()
        for name, (filepath, _, lineage) in headers.items():
            _check_lineage(name, filepath, lineage, catalog, made_here)

    @hook_impl
    def before_node_run(self, node: Any, inputs: dict[str, Any]) -> None:
        """Digests of the models and data the node starts from, taken before it can change them (a few tenths
        of a second per data split: uint8 images), and the lineage its input models carry."""
        from torch import nn

        from evoprune.core.lineage import content_digest, is_digestible

        inherited: dict[str, str] = {}
        for value in inputs.values():
            if isinstance(value, nn.Module):
                inherited.update(getattr(value, "lineage", None) or {})
        direct = {
            name: content_digest(value)
            for name, value in inputs.items()
            if not name.startswith("params:") and is_digestible(value)
        }
        self._input_digests[node.name] = {**inherited, **direct}

    @hook_impl
    def after_node_run(self, node: Any, outputs: dict[str, Any]) -> None:
        """The models the node made carry those digests (``TorchModelDataset`` saves them with the model): what
        they were made from directly, and what those inputs were made from."""
        from torch import nn

        digests = self._input_digests.pop(node.name, None)
        if digests is None:
            return
        for value in outputs.values():
            if isinstance(value, nn.Module) and isinstance(getattr(value, "spec", None), dict):
                value.lineage = dict(digests)


def _check_lineage(name: str, filepath: str, lineage: dict[str, str], catalog: Any, made_here: set[str]) -> None:
    """Refuses a model file whose recorded inputs differ from those on disk (inputs this run makes again, and
    those not on disk, are not compared)."""
    from evoprune.core.lineage import content_digest, lineage_differences

    current = {}
    for parent in sorted(lineage):
        dataset = catalog.get(parent) if parent not in made_here else None
        if dataset is not None and dataset.exists():
            current[parent] = content_digest(catalog.load(parent))
    differing = lineage_differences(lineage, current)
    if differing:
        parent = differing[0]
        raise ValueError(
            f"`{name}` ({filepath}) was made from another `{parent}` than the one on disk now "
            f"({_describe_path(catalog.get(parent))}; digest {lineage[parent]} when it was made, "
            f"{current[parent]} now): it belongs to another run. Re-make it from what is on disk "
            f"(kedro run --pipeline=prune --from-inputs={parent} --to-outputs={name}), "
            f"or put back the `{parent}` it was made from."
        )


def _describe_path(dataset: Any) -> str:
    filepath = getattr(dataset, "filepath", None) or getattr(dataset, "_filepath", None)
    return str(filepath) if filepath else type(dataset).__name__
