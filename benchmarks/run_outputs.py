"""What the benchmarks read from a `prune` run's outputs folder (imported by the scripts beside it)."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

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
