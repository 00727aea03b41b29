"""Which Pareto members go on to fine-tuning: per cost budget the most accurate before fine-tuning, or members
spread along the front. Messages name the ``mask_search`` parameters a user sets."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn

from evoprune.core.exits import final_exit_key
from evoprune.core.mask_codec import decode_masks
from evoprune.core.units import ChromosomeLayout, kept_column

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberRule:
    """How members are chosen per budget (``mask_search.member_budgets`` and the settings beside it)."""

    budgets: Sequence[float] | None  # None or empty: spread along the front instead
    candidates_per_budget: int = 1
    uncapped_below: float = 0.0  # members keep at least this FLOPs ratio (where the per-layer cap binds)
    # speed-up / FLOPs reduction at least this (None: any): measured where the Pareto set has
    # `measured_latency_ratio` (``with_measured_latency``), else the latency model's prediction
    min_speedup_share: float | None = None
    # the groups of the final exit's network (``final_network_groups``): two candidates keeping as many units in
    # each are twins, one allocation, only one goes on to the fine-tune contest; empty: not known
    final_groups: tuple[str, ...] = ()


MEASURED = "measured_latency_ratio"


def with_measured_latency(
    pareto_set: pd.DataFrame,
    axis: str,
    rule: MemberRule,
    measure_ratio: Callable[[np.ndarray], np.ndarray],
) -> pd.DataFrame:
    """``pareto_set`` with column ``measured_latency_ratio``: for the members that could be a budget's candidate
    (within the loosest of ``rule.budgets`` on ``axis``, keeping at least ``rule.uncapped_below`` of the FLOPs)
    ``measure_ratio(masks)``, their latency relative to the dense network's as timed on the target; NaN for
    the rest. ``min_speedup_share`` then judges the measured speed-up instead of the prediction."""
    could_be = (pareto_set[axis] <= max(rule.budgets or [np.inf])) & _obeys_cap(pareto_set, rule)
    timed = pareto_set.assign(**{MEASURED: np.nan})
    if could_be.any():
        timed.loc[could_be, MEASURED] = measure_ratio(decode_masks(pareto_set.loc[could_be, "mask"]))
        share = _speedup_share(timed)
        logger.info(
            "mask_search: %d front members timed on the target: speed-up / FLOPs reduction %.3f-%.3f measured",
            int(could_be.sum()), share.min(), share.max(),
        )  # fmt: skip
    return timed


def choose_front_members(pareto_set: pd.DataFrame, axis: str, rule: MemberRule, spread: int) -> pd.DataFrame:
    """With ``rule.budgets``: for each budget, tightest first, the ``candidates_per_budget`` front members
    within it on ``axis`` with the best final-exit accuracy (twins of a better one skipped: the same allocation of
    the final exit's network, ``rule.final_groups``, else the same FLOPs and final-exit accuracy), not taken by a
    tighter budget and obeying the per-layer cap (keeping at least ``uncapped_below`` of the FLOPs: the baselines
    at their FLOPs obey it too) and, with ``min_speedup_share``, measured (``with_measured_latency``) or else
    predicted to turn at least that share of their FLOPs reduction into speed-up. A budget no member fits is
    skipped with a warning, and a ValueError says why when none fits any; column ``budget`` says which.
    Otherwise ``spread`` members spread evenly along ``axis`` (nearest to evenly spaced targets; ``budget`` empty)."""
    if not rule.budgets:
        cost = pareto_set[axis].to_numpy()
        targets = np.linspace(cost.min(), cost.max(), spread)
        picked = sorted({int(np.abs(cost - t).argmin()) for t in targets})
        return pareto_set.iloc[picked].assign(budget=np.nan).reset_index(drop=True)
    final = final_exit_key(pareto_set.columns, "_accuracy")
    eligible = _obeys_cap(pareto_set, rule) & _fast_enough(pareto_set, rule.min_speedup_share)
    budget_of: dict[int, float] = {}
    for budget in sorted(set(rule.budgets)):
        within = pareto_set[(pareto_set[axis] <= budget) & eligible & ~pareto_set.index.isin(list(budget_of))]
        if within.empty:
            logger.warning(
                "mask_search: no Pareto member left within %.3f of %s%s; budget skipped", budget, axis,
                f" that reaches min_speedup_share {rule.min_speedup_share}" if rule.min_speedup_share else "",
            )  # fmt: skip
        for index in _distinct_best(within, final, rule.candidates_per_budget, rule.final_groups):
            budget_of[int(index)] = budget
    if not budget_of:
        raise ValueError(_no_member_fits(pareto_set, rule, axis))
    chosen = pareto_set.loc[sorted(budget_of)].assign(budget=[budget_of[i] for i in sorted(budget_of)])
    return chosen.sort_values(axis).reset_index(drop=True)


def final_network_groups(model: nn.Module, layout: ChromosomeLayout) -> tuple[str, ...]:
    """The groups of ``layout`` whose units the final exit's logits depend on: all but the early exits' heads."""
    if not hasattr(model, "exit_heads"):
        return tuple(g.name for g in layout.groups)  # one exit (groups need not be modules: an LSTM's "lstm.l0")
    heads = next(name for name, m in model.named_modules() if m is model.exit_heads) + "."
    return tuple(g.name for g in layout.groups if not g.name.startswith(heads))


def _obeys_cap(pareto_set: pd.DataFrame, rule: MemberRule) -> pd.Series:
    """Members keeping at least ``rule.uncapped_below`` of the FLOPs: they obey max_pruning_ratio, as the baselines
    at their FLOPs do."""
    return pareto_set["flops_ratio"] >= rule.uncapped_below


def _distinct_best(members: pd.DataFrame, final: str, count: int, final_groups: Sequence[str] = ()) -> list[int]:
    """The index of the ``count`` members of best ``final`` accuracy, a twin of one already taken skipped: the
    same allocation of the final exit's network (units kept per group of ``final_groups``: masks apart only in
    which units of a layer they keep, or in an early exit's head; fine-tuned, such ResNet-20 candidates differed by
    no more than the contest's noise), or, where the allocation is not known (no ``final_groups``, or not all their
    ``kept.<group>`` columns: never a part of it), the same FLOPs and final-exit accuracy (as a rule masks apart
    only in an early exit's head)."""
    allocation = [kept_column(name) for name in final_groups]
    same = allocation if allocation and set(allocation) <= set(members.columns) else ["flops_ratio", final]
    taken: list[int] = []
    for index, row in members.sort_values(final, ascending=False, kind="stable").iterrows():
        if len(taken) == count:
            break
        if members.loc[taken, same].eq(row[same]).all(axis=1).any():
            logger.info("mask_search: member %s skipped as a candidate: the twin of a better one", row.get("member"))
        else:
            taken.append(index)
    return taken


def _fast_enough(pareto_set: pd.DataFrame, min_share: float | None) -> pd.Series:
    """Members whose speed-up over the dense network (1 / latency ratio: measured where the set has
    ``measured_latency_ratio``, else predicted) is at least ``min_share`` of their FLOPs reduction (1 / flops_ratio);
    all of them when ``min_share`` is None. A member not timed (NaN) is not fast enough."""
    if min_share is None:
        return pd.Series(True, index=pareto_set.index)
    if MEASURED not in pareto_set.columns and "latency_ratio" not in pareto_set.columns:
        raise ValueError(
            "mask_search.min_speedup_share needs the latency model's predicted latency_ratio, and the Pareto set "
            "has none (no latency tables for this network): set min_speedup_share: null, or time the candidates "
            "on the target (speedup_share_from: measured)."
        )
    share = _speedup_share(pareto_set)
    logger.info(
        "mask_search: %d of %d front members with a %s latency reach a speed-up of %.2f of their FLOPs reduction "
        "(best %.3f)", int((share >= min_share).sum()), int(share.notna().sum()), _judged(pareto_set), min_share,
        share.max(),
    )  # fmt: skip
    return share >= min_share


def _speedup_share(members: pd.DataFrame) -> pd.Series:
    """Speed-up over the dense network per unit of FLOPs reduction: measured where timed, else predicted."""
    return members["flops_ratio"] / members[MEASURED if MEASURED in members.columns else "latency_ratio"]


def _judged(members: pd.DataFrame) -> str:
    return "measured" if MEASURED in members.columns else "predicted"


def _no_member_fits(pareto_set: pd.DataFrame, rule: MemberRule, axis: str) -> str:
    """Why no front member is a candidate of any budget, and what to change."""
    if pareto_set.empty:
        return (
            "mask_search: the search kept no feasible candidate, so no member can be chosen: every candidate broke "
            "one of the search's constraints (search_masks' warning says which and how many broke each alone; "
            "mask_search_history.csv's `feasible` column shows them). Loosen search.max_accuracy_drop, "
            "search.min_speedup_share or search.max_flops_ratio, or search longer (search.generations)."
        )
    spread = f"the front spans {pareto_set[axis].min():.3f}-{pareto_set[axis].max():.3f} of {axis}"
    speed = rule.min_speedup_share is not None
    if speed and {MEASURED, "latency_ratio"} & set(pareto_set.columns):
        within = pareto_set[pareto_set[axis] <= max(rule.budgets)]
        best = _speedup_share(within).max() if len(within) else float("nan")
        spread += f"; within the loosest budget the best {_judged(pareto_set)} speed-up share is {best:.3f}"
    return (
        f"mask_search: no Pareto member fits any of member_budgets {list(rule.budgets)} on {axis} (keeping at least "
        f"search.uncapped_below {rule.uncapped_below} of the FLOPs"
        + (f", min_speedup_share {rule.min_speedup_share}" if speed else "")
        + f"): {spread}. Loosen member_budgets"
        + (" or min_speedup_share" if speed else "")
        + ", or search longer (search.generations)."
    )
