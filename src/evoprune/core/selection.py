"""Fine-tune-aware choice of one member per FLOPs budget.

Accuracy before fine-tuning (the search's fitness) ranks members poorly after it, on networks without
BatchNorm especially. So every candidate of a budget is fine-tuned exactly as the variants will be, with the
weights of ``selection_variant``, and the one with the best final-exit *validation* accuracy is kept (ties:
fewer FLOPs). A budget with one candidate, or a member without a budget, is kept untried.
The selected candidates' fine-tunes are handed on (``Selection.finetuned``): the selection variant's first
fine-tune seed would repeat them exactly, so finetune takes them instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from evoprune.core.exits import final_exit_key, input_shape
from evoprune.core.finetune import ReusableFinetunes, finetune_member, finetune_settings
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.units import build_layout

Split = dict[str, torch.Tensor]
logger = logging.getLogger(__name__)


@dataclass
class Selection:
    """What the selection leaves."""

    # every candidate: member, budget, flops_ratio, val_accuracy_before_finetune,
    # val_accuracy_after_finetune (NaN when untried), selected
    table: pd.DataFrame
    kept: list[int]  # positions of the selected members among the candidates, in candidate order
    metrics: dict[str, float]  # member<id>.val_accuracy_after_finetune per tried candidate, candidates_finetuned
    finetuned: ReusableFinetunes  # the fine-tunes of the selected candidates that were tried


def candidate_table(chosen_members: pd.DataFrame, member_ids: Sequence[int]) -> pd.DataFrame:
    """One row per candidate, in ``member_ids`` order, with its budget and its final-exit validation
    accuracy before fine-tuning; ``group`` names its competition (``budget<b>``, or ``member<id>`` alone)."""
    chosen = chosen_members.set_index("member").loc[list(member_ids)]
    if "budget" not in chosen.columns:
        chosen = chosen.assign(budget=np.nan)
    final = final_exit_key(chosen.columns, "_accuracy")
    table = pd.DataFrame(
        {
            "member": list(member_ids),
            "budget": chosen["budget"].to_numpy(dtype=float),
            "flops_ratio": chosen["flops_ratio"].to_numpy(dtype=float),
            "val_accuracy_before_finetune": chosen[final].to_numpy(dtype=float),
            "val_accuracy_after_finetune": np.nan,
        }
    )
    table["group"] = [
        f"budget{b}" if np.isfinite(b) else f"member{m}" for m, b in zip(table["member"], table["budget"], strict=True)
    ]
    return table


def select_by_finetuning(
    trained: nn.Module,
    initial: nn.Module,
    masks: np.ndarray,
    member_ids: Sequence[int],
    chosen_members: pd.DataFrame,
    splits: tuple[Split, Split],
    params: FinetuneParams,
    seed: int,
    device: torch.device,
) -> Selection:
    """Fine-tune every contested candidate (``masks[k]`` of ``trained``, member ``member_ids[k]``, its row
    of ``chosen_members`` from mask_search) and keep the best of each budget on validation data.

    Args:
        splits: train and validation split (fine-tuning data, and the data the candidates are judged on).
    """
    train_split, validation_split = splits
    table = candidate_table(chosen_members, member_ids)
    layout = build_layout(trained, input_shape(trained))
    contested = table["group"].map(table["group"].value_counts()) > 1
    loss_weights = params.exit_loss_weights(trained)
    settings = finetune_settings(params.selection_variant, seed, params.training, loss_weights, device)
    tried = {}
    for i in np.flatnonzero(contested.to_numpy()):
        tried[i] = finetune_member(
            trained,
            initial,
            layout,
            masks[i],
            params.selection_variant,
            train_split,
            validation_split,
            params.training,
            device,
            seed,
            loss_weights,
            f"select_members[{params.selection_variant}] member {member_ids[i]} (budget {table.at[i, 'budget']:.2f})",
        )
        table.at[i, "val_accuracy_after_finetune"] = tried[i][1]["val_accuracy"][-1]
    score = table["val_accuracy_after_finetune"].fillna(table["val_accuracy_before_finetune"])
    order = table.assign(score=-score).sort_values(["score", "flops_ratio"], kind="stable")
    winners = set(order.groupby("group", sort=False).head(1).index)
    table["selected"] = table.index.isin(winners)
    _log_contest(table[contested])
    metrics = {
        f"member{r.member}.val_accuracy_after_finetune": r.val_accuracy_after_finetune
        for r in table[contested].itertuples()
    }
    metrics["candidates_finetuned"] = int(contested.sum())
    finetuned = ReusableFinetunes(settings, {int(member_ids[i]): tried[i] for i in sorted(winners) if i in tried})
    return Selection(table.drop(columns="group"), sorted(winners), metrics, finetuned)


def _log_contest(tried: pd.DataFrame) -> None:
    for _, row in tried.iterrows():
        logger.info(
            "select_members: member %d (budget %.2f, %.1f%% FLOPs): validation accuracy %.4f after fine-tuning%s",
            row["member"],
            row["budget"],
            100 * row["flops_ratio"],
            row["val_accuracy_after_finetune"],
            " <- selected" if row["selected"] else "",
        )
