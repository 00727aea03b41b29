"""Dynamic sparse training against its baselines, one row per model (the report's ``dst`` rows).

- ``dst_unstructured``: the sparse network as trained (weights kept, accuracy, non-zero FLOPs);
- ``magnitude_unstructured``: the trained dense network pruned by global magnitude to the same share of weights
  and fine-tuned for the epochs that make its total equal DST's;
- ``dst_structured``: the structured DST mask, physically pruned, fine-tuned and measured like a Pareto member;
- ``l1_at_dst_flops``: one-shot structured L1 (Torch-Pruning's group L1) at the structured mask's FLOPs,
  fine-tuned and measured the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from evoprune.core.baselines import BaselinePruner
from evoprune.core.comparison import finetune_with_variant, prune_to_member_budgets
from evoprune.core.exits import final_exit_key
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.models.adapter import input_shape
from evoprune.core.sparse.dst import nonzero_flops, weight_sparsity
from evoprune.core.sparse.magnitude import magnitude_baseline
from evoprune.core.train import TrainConfig, accuracy_per_exit

Split = dict[str, torch.Tensor]
DST_MEMBER = -1  # member id of the rows (they are not members of the Pareto front)
SEEDED_COMPARISON_COLUMNS = ["axis", "budget", "seeded_accuracy", "unseeded_accuracy", "gain_pt"]


def unstructured_row(
    method: str, model: nn.Module, test_split: Split, dense: Mapping[str, float], device: torch.device
) -> dict[str, object]:
    """Accuracy of every exit, share of weights kept and non-zero FLOPs of a sparse (zeros in its weights) model."""
    row: dict[str, object] = {"kind": "dst", "method": method, "member": DST_MEMBER}
    for e, acc in enumerate(accuracy_per_exit(model, test_split, device)):
        row[f"exit{e + 1}.test_accuracy"] = acc
    final = final_exit_key(row, ".test_accuracy")
    row["test_accuracy"] = row[final]
    row["accuracy_drop_pt"] = 100.0 * (dense[final] - row[final])
    row["weights_kept"] = 1.0 - weight_sparsity(model)["total"]
    row["nonzero_flops"] = nonzero_flops(model)["total"]
    row["flops_ratio"] = row["nonzero_flops"] / dense["flops"]
    return row


def compare_dst(
    sparse_model: nn.Module,
    structured_model: nn.Module,
    structured_mask: np.ndarray,
    trained: nn.Module,
    initial: nn.Module,
    splits: tuple[Split, Split, Split],
    policy: tuple[float, str],
    dense_measurements: dict[str, float],
    finetune: FinetuneParams,
    magnitude_training: TrainConfig,
    seed: int,
    device: torch.device,
    seeds: Sequence[int] | None = None,
) -> pd.DataFrame:
    """The four kinds of rows above.

    Args:
        sparse_model: unstructured DST's result (pruned weights are zeros).
        structured_model / structured_mask: structured DST's network and its chromosome (num_bits,).
        trained / initial: the trained multi-exit network and its θ0 (the baselines start from ``trained``).
        magnitude_training: the magnitude baseline's fine-tune (its epochs make the total equal DST's).
        seed: the run's seed (DST itself and the magnitude baseline train once, with it).
        seeds: the fine-tune seeds of the structured rows (``report.seeds`` replicates: one row per seed of
            ``dst_structured`` and of ``l1_at_dst_flops``, as the members and baselines have); default ``[seed]``.
    """
    train_split, validation_split, test_split = splits
    seeds = [seed] if seeds is None else [int(s) for s in seeds]
    dst_row = unstructured_row("dst_unstructured", sparse_model, test_split, dense_measurements, device)
    kept = float(dst_row["weights_kept"])
    magnitude, history = magnitude_baseline(
        trained,
        kept,
        train_split,
        validation_split,
        magnitude_training,
        device,
        seed,
        finetune.exit_loss_weights(trained),
    )
    magnitude_row = unstructured_row("magnitude_unstructured", magnitude, test_split, dense_measurements, device)
    magnitude_row["train_seconds"] = history["train_seconds"]
    mask = np.asarray(structured_mask, dtype=bool)[None]
    structured = finetune_with_variant(
        structured_model,
        initial,
        mask,
        [DST_MEMBER],
        "keep",
        splits,
        policy,
        dense_measurements,
        finetune,
        seeds,
        device,
    )
    l1 = prune_to_member_budgets(
        trained,
        mask,
        [DST_MEMBER],
        [BaselinePruner("l1", "budget_fit", input_shape(trained))],
        splits,
        policy,
        dense_measurements,
        finetune,
        seeds,
        device,
    )
    rows = [dst_row, magnitude_row]
    rows += [{**m.row, "kind": "dst", "method": "dst_structured"} for m in structured]
    rows += [{**m.row, "kind": "dst", "method": "l1_at_dst_flops"} for m in l1]
    table = pd.DataFrame(rows).drop(columns=["variant", "criterion"], errors="ignore")
    return table


def method_metrics(table: pd.DataFrame, run_seed: int | None = None) -> dict[str, float]:
    """The table's numbers but its member id and seed as ``<method>.<column>`` metrics (empty cells left out); a
    row of another fine-tune seed than ``run_seed`` (a ``report.seeds`` replicate) as ``<method>.seed<seed>.<column>``,
    as the members' (``MeasuredModel.key`` and ``scalars``)."""
    numeric = table.select_dtypes("number").drop(columns=["member", "seed"], errors="ignore")
    seeds = table["seed"] if "seed" in table else pd.Series(np.nan, index=table.index)
    metrics = {}
    for (index, row), method in zip(numeric.iterrows(), table["method"], strict=True):
        replicate = run_seed is not None and pd.notna(seeds[index]) and int(seeds[index]) != run_seed
        name = f"{method}.seed{int(seeds[index])}" if replicate else method
        metrics.update({f"{name}.{k}": v for k, v in row.dropna().items()})
    return metrics


def best_within_budgets(front: pd.DataFrame, budgets: list[float], axis: str = "flops_ratio") -> list[float]:
    """Per budget: the best final-exit accuracy of a front's masks whose ``axis`` cost is within it (NaN when
    none is). ``front`` has the Pareto set's columns: ``axis`` and ``exit<k>_accuracy`` per exit."""
    last = final_exit_key(front.columns, "_accuracy")
    return [float(front.loc[front[axis] <= b, last].max()) if (front[axis] <= b).any() else np.nan for b in budgets]


def seeded_search_comparison(
    seeded_front: pd.DataFrame, unseeded_front: pd.DataFrame, budgets: list[float], axis: str = "flops_ratio"
) -> pd.DataFrame:
    """One row per budget: the best final-exit validation accuracy (before fine-tuning) within it on the front
    of a search seeded with DST's masks and on the unseeded search's, and their difference in points."""
    seeded = best_within_budgets(seeded_front, budgets, axis)
    unseeded = best_within_budgets(unseeded_front, budgets, axis)
    table = pd.DataFrame({"budget": budgets, "seeded_accuracy": seeded, "unseeded_accuracy": unseeded})
    table["gain_pt"] = 100 * (table["seeded_accuracy"] - table["unseeded_accuracy"])
    table.insert(0, "axis", axis)
    return table[SEEDED_COMPARISON_COLUMNS]
