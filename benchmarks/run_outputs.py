"""What the benchmarks read from a `prune` run's outputs folder (imported by the scripts beside it)."""

from __future__ import annotations

import pandas as pd
from torch import nn

from evoprune.datasets import AtomicCSVDataset, PrunedMembersDataset, TorchModelDataset


def search_outputs(data: str) -> tuple[nn.Module, nn.Module, pd.DataFrame]:
    """The trained multi-exit network the search pruned, its initial weights (θ0) and the Pareto set
    (``pareto_set.csv``, masks as strings), from the outputs folder ``data`` of a `prune` run."""
    trained = PrunedMembersDataset(filepath=f"{data}/06_models/pareto_members.pt").load()["model"]
    initial = TorchModelDataset(filepath=f"{data}/06_models/multi_exit_model_init.pt").load()
    front = AtomicCSVDataset(filepath=f"{data}/07_model_output/pareto_set.csv", load_args={"dtype": {"mask": str}})
    return trained, initial, front.load()
