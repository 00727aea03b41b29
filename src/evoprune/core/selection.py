"""Fine-tune-aware choice of one member per FLOPs budget.

Accuracy before fine-tuning (the search's fitness) ranks members poorly after it, on networks without
BatchNorm especially. So every candidate of a budget is fine-tuned exactly as the variants will be, with the
weights of ``selection_variant``, and the one with the best final-exit *validation* accuracy is kept (ties:
fewer FLOPs). A budget with one candidate, or a member without a budget, is kept untried.
The selected candidates' fine-tunes are handed on (``Selection.finetuned``): the selection variant's first
fine-tune seed would repeat them exactly, so finetune takes them instead.

With ``selection_refit: linear_l1`` a second round follows: each budget's winner competes with its *refit*, the
same conv units (and every other non-Linear unit) with the Linear layers' units chosen again by group L1 to fill
the winner's cost. Our reading of ``benchmarks/unit_choice.py``: the search, judged on accuracy before
fine-tuning, picks conv units well, but of the fc layers' many units it keeps sizes and units that fine-tune worse
than magnitude's; validation decides per budget. A refit's id is ``REFIT_ID_OFFSET`` + its member's id.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from evoprune.core.baselines import BudgetAxis, budget_cost, refit_within_budget
from evoprune.core.exits import final_exit_key, input_shape
from evoprune.core.finetune import ReusableFinetunes, finetune_settings
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.finetune_pool import FinetuneInputs, FinetuneJob, finetune_jobs
from evoprune.core.importance import GroupL1
from evoprune.core.latency import LatencyModel
from evoprune.core.units import ChromosomeLayout, build_layout

Split = dict[str, torch.Tensor]
logger = logging.getLogger(__name__)
REFIT_ID_OFFSET = 10_000  # a refit candidate's member id: this + the id of the member it was refit from


@dataclass
class Selection:
    """What the selection leaves."""

    # every candidate: member, budget, flops_ratio, val_accuracy_before_finetune (NaN for a refit),
    # val_accuracy_after_finetune (NaN when untried), refit_of (the member a refit comes from, else -1), selected
    table: pd.DataFrame
    kept: list[int]  # positions of the selected members among the candidates, in candidate order
    metrics: dict[str, float]  # member<id>.val_accuracy_after_finetune per tried candidate, candidates_finetuned
    finetuned: ReusableFinetunes  # the fine-tunes of the selected candidates that were tried
    masks: np.ndarray  # (candidates, num_bits): the members' masks, then the refits'
    member_ids: list[int]  # the candidates' ids, in the same order


@dataclass(frozen=True)
class RefitLimits:
    """What a refit obeys: the cost axis the members were chosen on and the search's per-layer limits."""

    axis: BudgetAxis = "flops_ratio"
    latency_model: LatencyModel | None = None  # needed on axis latency_ratio
    max_pruning_ratio: float = 1.0
    round_to: int = 1


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
            "refit_of": -1,
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
    limits: RefitLimits | None = None,
) -> Selection:
    """Fine-tune every contested candidate (``masks[k]`` of ``trained``, member ``member_ids[k]``, its row
    of ``chosen_members`` from mask_search) and keep the best of each budget on validation data; with
    ``params.selection_refit`` the winners then meet their refits (``limits``) the same way.

    Args:
        splits: train and validation split (fine-tuning data, and the data the candidates are judged on).
    """
    table = candidate_table(chosen_members, member_ids)
    masks, ids = np.asarray(masks, dtype=bool), [int(m) for m in member_ids]
    layout = build_layout(trained, input_shape(trained))
    loss_weights = params.exit_loss_weights(trained)
    threads = params.parallel.threads(device)
    settings = finetune_settings(params.selection_variant, seed, params.training, loss_weights, device, threads)
    inputs = FinetuneInputs(trained, initial, layout, *splits, params.training, loss_weights, device)
    tried: dict[int, tuple[nn.Module, dict]] = {}
    seeds = [seed + k for k in range(params.selection_seeds)]  # the report's first fine-tune seeds
    if len(seeds) > 1:
        table["val_accuracy_after_finetune_std"] = np.nan

    def contest(positions: Sequence[int]) -> set[int]:
        """Fine-tune the untried of ``positions`` (together, ``params.parallel``); the winner of every group, as
        positions (of ``table`` and ``masks`` as they are when called: the refit round extends both)."""
        untried = [i for i in positions if i not in tried]
        jobs = [
            FinetuneJob(masks[i], params.selection_variant, s, f"select_members[{params.selection_variant}] "
                        f"member {ids[i]} (budget {table.at[i, 'budget']:.2f}, seed {s})")
            for i in untried for s in seeds
        ]  # fmt: skip
        fitted = finetune_jobs(inputs, jobs, params.parallel)
        for n, i in enumerate(untried):
            runs = fitted[n * len(seeds) : (n + 1) * len(seeds)]
            tried[i] = runs[0]  # the first seed's: the run's seed, what finetune would repeat
            accuracy = [history["val_accuracy"][-1] for _, history in runs]
            table.at[i, "val_accuracy_after_finetune"] = float(np.mean(accuracy))
            if len(seeds) > 1:
                table.at[i, "val_accuracy_after_finetune_std"] = float(np.std(accuracy, ddof=1))
        score = table["val_accuracy_after_finetune"].fillna(table["val_accuracy_before_finetune"])
        order = table.assign(score=-score).sort_values(["score", "flops_ratio"], kind="stable")
        return set(order.groupby("group", sort=False).head(1).index)

    contested = table["group"].map(table["group"].value_counts()) > 1
    winners = contest(np.flatnonzero(contested.to_numpy()))
    if params.selection_refit != "none":
        refits = refit_rows(trained, layout, masks, table, sorted(winners), limits or RefitLimits())
        if len(refits):
            masks = np.concatenate([masks, np.stack(refits["mask"].tolist())])
            ids += refits["member"].tolist()
            table = pd.concat([table, refits.drop(columns="mask")], ignore_index=True)
            winners = contest([*sorted(winners), *range(len(table) - len(refits), len(table))])
    table["selected"] = table.index.isin(winners)
    judged = table.index.isin(list(tried))
    _log_contest(table[judged])
    metrics = {
        f"member{r.member}.val_accuracy_after_finetune": r.val_accuracy_after_finetune
        for r in table[judged].itertuples()
    }
    metrics["candidates_finetuned"] = len(tried)
    finetuned = ReusableFinetunes(settings, {ids[i]: tried[i] for i in sorted(winners) if i in tried})
    return Selection(table.drop(columns="group"), sorted(winners), metrics, finetuned, masks, ids)


def layer_type_bits(model: nn.Module, layout: ChromosomeLayout, layer_type: type[nn.Module]) -> np.ndarray:
    """True for the bits of the groups whose layer is a ``layer_type`` (``nn.Linear``: the fully-connected units)."""
    bits = np.zeros(layout.num_bits, dtype=bool)
    for g in layout.groups:
        bits[g.offset : g.offset + g.size] = isinstance(model.get_submodule(g.name), layer_type)
    return bits


def refit_rows(
    trained: nn.Module,
    layout: ChromosomeLayout,
    masks: np.ndarray,
    table: pd.DataFrame,
    winners: Sequence[int],
    limits: RefitLimits,
) -> pd.DataFrame:
    """One candidate row (plus its ``mask``) per winner whose refit differs from it: its Linear units chosen
    again by group L1 (Torch-Pruning's ``GroupMagnitudeImportance(p=1)``) within the winner's cost, every other
    unit as the winner's. Empty when the network has no Linear unit to refit."""
    refit = layer_type_bits(trained, layout, nn.Linear)
    rows = []
    if not refit.any():
        return pd.DataFrame(rows)
    scores = GroupL1(input_shape(trained))(trained, layout)
    cost = budget_cost(layout, limits.axis, limits.latency_model)
    for i in winners:
        member = int(table.at[i, "member"])
        if member >= REFIT_ID_OFFSET:
            raise ValueError(f"member id {member} collides with the refit ids (REFIT_ID_OFFSET = {REFIT_ID_OFFSET})")
        budget = float(cost(masks[i][None])[0])
        mask = refit_within_budget(
            layout, masks[i], scores, refit, budget, limits.max_pruning_ratio, limits.round_to, cost
        )
        if np.array_equal(mask, masks[i]):
            continue
        rows.append(
            {
                **table.loc[i].to_dict(),
                "member": REFIT_ID_OFFSET + member,
                "flops_ratio": float(layout.flops_ratio(mask[None])[0]),
                "val_accuracy_before_finetune": np.nan,
                "val_accuracy_after_finetune": np.nan,
                "refit_of": member,
                "mask": mask,
            }
        )
    return pd.DataFrame(rows)


def _log_contest(tried: pd.DataFrame) -> None:
    for _, row in tried.iterrows():
        refit = f", member {row['refit_of']} with its Linear units by L1" if row["refit_of"] >= 0 else ""
        spread = (
            f" (mean; std {row['val_accuracy_after_finetune_std']:.4f})"
            if "val_accuracy_after_finetune_std" in row
            else ""
        )
        logger.info(
            "select_members: member %d (budget %.2f, %.1f%% FLOPs%s): validation accuracy %.4f%s after fine-tuning%s",
            row["member"],
            row["budget"],
            100 * row["flops_ratio"],
            refit,
            row["val_accuracy_after_finetune"],
            spread,
            " <- selected" if row["selected"] else "",
        )
