"""What the benchmarks read from a `prune` run's outputs folder (imported by the scripts beside it)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from kedro.config import OmegaConfigLoader
from torch import nn

from evoprune import settings
from evoprune.datasets import AtomicCSVDataset, PrunedMembersDataset, TensorDictDataset, TorchModelDataset


def search_outputs(data: str) -> tuple[nn.Module, nn.Module, pd.DataFrame]:
    """The trained multi-exit network the search pruned, its initial weights (θ0) and the Pareto set
    (``pareto_set.csv``, masks as strings), from the outputs folder ``data`` of a `prune` run."""
    trained = PrunedMembersDataset(filepath=f"{data}/06_models/pareto_members.pt").load()["model"]
    initial = TorchModelDataset(filepath=f"{data}/06_models/multi_exit_model_init.pt").load()
    front = AtomicCSVDataset(filepath=f"{data}/07_model_output/pareto_set.csv", load_args={"dtype": {"mask": str}})
    return trained, initial, front.load()


def run_splits(data: str, *splits: str, dataset: str = "fashion_mnist") -> list[dict[str, torch.Tensor]]:
    """The named splits (``train``, ``validation``, ``test``) of ``dataset`` that the `prune` run with outputs
    folder ``data`` prepared (``05_model_input``), in the order asked."""
    return [TensorDictDataset(filepath=f"{data}/05_model_input/{dataset}_{s}.pt").load() for s in splits]


def run_parameters(env: str | None = None) -> dict[str, Any]:
    """The parameters that `kedro run --env=<env>` sees: conf/base and conf/<env> merged as the project's settings
    merge them (an environment overrides only the keys it sets); None or "base": a plain `kedro run`'s (conf/local).
    Run from the project root."""
    args = dict(settings.CONFIG_LOADER_ARGS)
    if env and env != "base":
        args["default_run_env"] = env
    return OmegaConfigLoader("conf", **args)["parameters"]
