"""Project hooks."""

from __future__ import annotations

from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from pydantic import BaseModel


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
        try:
            self._check(pipeline, catalog)
        except Exception:
            # kedro-mlflow may already have opened the run: close it as FAILED rather than leave it RUNNING
            # (and active, so that the next session in this process would log into it)
            if mlflow.active_run() is not None:
                mlflow.end_run(status="FAILED")
            raise

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


class ModelLineageHook:
    """Refuses, before any node runs, a model file the run would start from (a free input: e.g.
    ``multi_exit_model.pt`` when only ``mask_search`` runs) whose architecture is not the configured one
    (``train_dense.model``, ``build_exits.exit_after``): a checkpoint of another architecture or another
    configuration would be searched or fine-tuned without complaint."""

    @hook_impl
    def before_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        try:
            self._check(pipeline, catalog)
        except Exception:
            if mlflow.active_run() is not None:  # as in ConfigConsistencyHook: never leave the run RUNNING
                mlflow.end_run(status="FAILED")
            raise

    def _check(self, pipeline: Any, catalog: Any) -> None:
        from evoprune.core.exits import spec_differences
        from evoprune.datasets._file_dataset import TorchFileDataset
        from evoprune.pipelines.build_exits.nodes import BuildExitsParams
        from evoprune.pipelines.train_dense.nodes import TrainDenseParams

        model_files = {}
        for name in sorted(pipeline.inputs()):
            dataset = catalog.get(name) if not name.startswith("params:") else None
            if isinstance(dataset, TorchFileDataset) and dataset.exists():
                model_files[name] = dataset
        if not model_files:
            return
        model = TrainDenseParams.model_validate(_as_dict(catalog.load("params:train_dense"))).model
        exit_after = BuildExitsParams.model_validate(_as_dict(catalog.load("params:build_exits"))).exit_after
        for name, dataset in model_files.items():
            spec = dataset.read_spec()
            diffs = spec_differences(spec, model, exit_after) if spec is not None else []
            if diffs:
                raise ValueError(
                    f"`{name}` ({dataset.filepath}) was not made by this configuration: "
                    + "; ".join(diffs)
                    + f". Re-run the stages that make it (kedro run --pipeline=prune, or --to-outputs={name}), "
                    "or set train_dense.model / build_exits.exit_after to what it was made with."
                )
