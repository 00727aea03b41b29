"""Pruned networks fine-tuned under one budget and measured against the dense one: the re-init variants of
the chosen members and the baselines at the members' FLOPs, each one row of the comparison.

A row holds what the model is (``labels``: variant or criterion, member, ...), its measurements (per-exit
and early-exit test accuracy, FLOPs, params, latency timed alternately with the dense model) and the ratios
against the dense model. The training history comes along for the tracking of each model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import product

import numpy as np
import pandas as pd
import torch
from torch import nn

from evoprune.core.baselines import BaselinePruner, BudgetAxis, CostRatio, budget_cost
from evoprune.core.exits import final_exit_key, input_shape
from evoprune.core.finetune import ReusableFinetunes, finetune_settings, measure
from evoprune.core.finetune_config import FinetuneParams, MeasurementParams
from evoprune.core.finetune_pool import FinetuneInputs, FinetuneJob, finetune_jobs
from evoprune.core.latency import LatencyModel
from evoprune.core.search.roulette_branch import path_levels_within
from evoprune.core.units import ChromosomeLayout, build_layout, kept_column

Split = dict[str, torch.Tensor]
logger = logging.getLogger(__name__)


@dataclass
class MeasuredModel:
    """One fine-tuned pruned model and its measurements."""

    labels: dict[str, object]  # what it is, e.g. {"variant": "rewind", "member": 3, "seed": 42}; the row's first keys
    row: dict[str, object]  # labels, measurements, ratios against the dense model, train_seconds
    history: dict[str, object]  # the fine-tuning's history (val_accuracy, train_loss per epoch, ...)
    model: nn.Module  # pruned and fine-tuned
    replicate: int = 0  # which of the fine-tune seeds (0: the run's seed)

    @property
    def member(self) -> int:
        return int(self.labels["member"])

    @property
    def key(self) -> str:
        """Its name in metric keys and run names: ``member<id>``, ``member<id>.seed<seed>`` for replicates."""
        return f"member{self.member}" + (f".seed{self.labels['seed']}" if self.replicate else "")

    @property
    def scalars(self) -> dict[str, float]:
        """The row's numbers except the member id and the seed (labels such as ``flops_budget`` included)."""
        return {k: v for k, v in self.row.items() if isinstance(v, (int, float)) and k not in ("member", "seed")}


def replicate_seeds(seed: int, count: int) -> list[int]:
    """The fine-tune seeds of ``report.seeds: count`` replicates: ``seed``, ``seed + 1``, ... (the first is the
    run's seed, so one replicate is the single-seed run)."""
    if count < 1:
        raise ValueError(f"report.seeds is the number of fine-tune seeds, at least 1; got {count}")
    return [seed + k for k in range(count)]


def unpack_members(members: Mapping[str, object]) -> tuple[nn.Module, np.ndarray, list[int]]:
    """``{"model", "masks", "member_ids"}`` (mask_search's ``pareto_members``, ``PrunedMembersDataset``) ->
    the unpruned model, the (K, num_bits) bool masks and the K member ids."""
    masks = np.asarray(members["masks"], dtype=bool)
    return members["model"], masks, [int(i) for i in members["member_ids"]]


def early_exit_policy(operating_point: Mapping[str, object]) -> tuple[float, str]:
    """build_exits' operating point as the ``(threshold, criterion)`` policy ``measure`` takes."""
    return float(operating_point["threshold"]), str(operating_point["criterion"])


def member_row(
    metrics: dict[str, float], dense: dict[str, float], mask: np.ndarray, layout: ChromosomeLayout
) -> dict[str, float]:
    """Measurements of a pruned model plus ratios against the dense model (the speed-ups come from
    ``measure(..., reference=dense model)``, measured, not derived from FLOPs)."""
    row = dict(metrics)
    row["flops_ratio"] = metrics["flops"] / dense["flops"]
    row["params_ratio"] = metrics["params"] / dense["params"]
    row["units_kept"] = int(mask.sum())
    row["units_ratio"] = float(mask.mean())
    row.update({kept_column(g.name): k for g, k in zip(layout.groups, layout.units_kept(mask), strict=True)})
    final = final_exit_key(metrics, ".test_accuracy")
    row["test_accuracy"] = metrics[final]
    row["accuracy_drop_pt"] = 100.0 * (dense[final] - metrics[final])
    for key in [k for k in metrics if k.startswith("speedup_batch")]:  # dense timed alternately with the member
        # 1.0 = the wall time falls exactly as the FLOPs do
        row[key.replace("speedup", "speedup_per_flops_reduction")] = metrics[key] * row["flops_ratio"]
    return row


def measure_against_dense(
    model: nn.Module,
    history: dict[str, object],
    trained: nn.Module,
    mask: np.ndarray,
    layout: ChromosomeLayout,
    test_split: Split,
    policy: tuple[float, str],
    measurement: MeasurementParams,
    dense_measurements: dict[str, float],
    device: torch.device,
    labels: dict[str, object],
    replicate: int = 0,
) -> MeasuredModel:
    """Measure a fine-tuned pruned ``model`` against the dense ``trained`` one (timed alternately)."""
    measured = measure(
        model.eval(),
        test_split,
        policy,
        device,
        tuple(measurement.latency_batch_sizes),
        measurement.latency_repeats,
        memory_format=measurement.memory_format,
        threads=measurement.threads,
        reference=trained,
    )
    row = {
        **labels,
        **member_row(measured, dense_measurements, mask, layout),
        "train_seconds": history["train_seconds"],
    }
    return MeasuredModel(dict(labels), row, history, model, replicate)


def finetune_with_variant(
    trained: nn.Module,
    initial: nn.Module,
    masks: np.ndarray,
    member_ids: Sequence[int],
    variant: str,
    splits: tuple[Split, Split, Split],
    policy: tuple[float, str],
    dense_measurements: dict[str, float],
    params: FinetuneParams,
    seeds: Sequence[int],
    device: torch.device,
    reusable: ReusableFinetunes | None = None,
) -> list[MeasuredModel]:
    """Every member (``masks[k]`` of ``trained``) with the weights of ``variant`` (``initial`` = θ0),
    physically pruned, fine-tuned as ``params.training`` says with each of ``seeds`` and measured on the
    test split.

    Args:
        splits: train, validation and test split.
        policy: the early-exit policy measured on each member, see ``early_exit_policy``.
        seeds: one fine-tune per seed (re-init draws and batch order), see ``replicate_seeds``.
        reusable: fine-tunes already made (select_members'): one made with this fit's exact settings is taken
            instead of fine-tuning again.
    """
    if not len(member_ids):
        return []
    layout = build_layout(trained, input_shape(trained))
    inputs = _inputs(trained, initial, layout, splits, params, device)
    threads = params.parallel.threads(device)

    def plan(mask: np.ndarray, labels: dict[str, object], seed: int) -> FinetuneJob | Fitted:
        settings = finetune_settings(variant, seed, params.training, inputs.loss_weights, device, threads)
        done = reusable.get(int(labels["member"]), settings) if reusable is not None else None
        if done is not None:
            logger.info("finetune[%s] member %s seed %d: select_members made this fine-tune; reused", variant,
                        labels["member"], seed)  # fmt: skip
            return done
        return FinetuneJob(mask, variant, seed, f"finetune[{variant}] member {labels['member']} seed {seed}")

    jobs = [(mask, {"variant": variant, "member": member}) for member, mask in zip(member_ids, masks, strict=True)]
    return _finetune_and_measure(inputs, jobs, seeds, plan, splits[2], policy, dense_measurements, params)


Fitted = tuple[nn.Module, dict[str, object]]  # a pruned, fine-tuned network and its training history


def _inputs(
    trained: nn.Module,
    initial: nn.Module | None,
    layout: ChromosomeLayout,
    splits: tuple[Split, Split, Split],
    params: FinetuneParams,
    device: torch.device,
) -> FinetuneInputs:
    return FinetuneInputs(
        trained, initial, layout, splits[0], splits[1], params.training, params.exit_loss_weights(trained), device
    )


def _finetune_and_measure(
    inputs: FinetuneInputs,
    jobs: Sequence[tuple[np.ndarray, dict[str, object]]],
    seeds: Sequence[int],
    plan: Callable[[np.ndarray, dict[str, object], int], FinetuneJob | Fitted],
    test_split: Split,
    policy: tuple[float, str],
    dense_measurements: dict[str, float],
    params: FinetuneParams,
) -> list[MeasuredModel]:
    """Each job (a mask of the trained network and its labels) with each of ``seeds``: ``plan(mask, labels, seed)``
    gives the fine-tune to run (all run together, ``params.parallel``) or one already made; each pruned, fine-tuned
    model is then measured against the dense model (here, after the workers are gone) and labelled with the seed."""
    planned = [(mask, labels, replicate, seed) for (mask, labels), (replicate, seed) in product(jobs, enumerate(seeds))]
    plans = [plan(mask, labels, seed) for mask, labels, _, seed in planned]
    runs = iter(finetune_jobs(inputs, [p for p in plans if isinstance(p, FinetuneJob)], params.parallel))
    out = []
    for (mask, labels, replicate, seed), fitted in zip(planned, plans, strict=True):
        model, history = next(runs) if isinstance(fitted, FinetuneJob) else fitted
        measured = measure_against_dense(
            model, history, inputs.trained, mask, inputs.layout, test_split, policy, params.measurement,
            dense_measurements, inputs.device, {**labels, "seed": seed}, replicate,
        )  # fmt: skip
        measured.row["finetune_objective"] = params.objective
        out.append(measured)
    return out


def member_budgets(
    layout: ChromosomeLayout, masks: np.ndarray, cost_ratio: CostRatio, budget_axis: BudgetAxis
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """For the members ``masks``: their FLOPs ratios, the budgets baselines are fitted to (their cost on
    ``budget_axis``) and, on the latency axis, their predicted latency ratios (else None).

    A budget is at most 1: the latency model (timings, fitted with noise) can predict a pruned member no faster
    than the dense network, and the dense network's own cost is then the budget (its labels keep the prediction).
    """
    members = np.asarray(masks, dtype=bool)
    costs = cost_ratio(members)
    latency_budgets = costs if budget_axis == "latency_ratio" else None
    return layout.flops_ratio(members), np.minimum(costs, 1.0), latency_budgets


def prune_to_member_budgets(
    trained: nn.Module,
    masks: np.ndarray,
    member_ids: Sequence[int],
    pruners: Sequence[BaselinePruner],
    splits: tuple[Split, Split, Split],
    policy: tuple[float, str],
    dense_measurements: dict[str, float],
    params: FinetuneParams,
    seeds: Sequence[int],
    device: torch.device,
    budget_axis: BudgetAxis = "flops_ratio",
    latency_model: LatencyModel | None = None,
) -> list[MeasuredModel]:
    """For each baseline pruner and each member's cost on ``budget_axis`` (its FLOPs, or its latency as
    ``latency_model`` predicts it: the axis the members were chosen on): the trained network pruned by it to
    that budget, fine-tuned exactly like the members (``params.training``) with each of ``seeds`` and
    measured, labelled with the pruner's ``name``. A seeded criterion (random) draws its masks per seed.

    Args:
        pruners: e.g. ``BaselinePruner("l1", "budget_fit", shape, max_pruning_ratio=0.7, round_to=1)``, the
            limits the search obeyed.
        splits: train, validation and test split.
    """
    layout = build_layout(trained, input_shape(trained))
    cost_ratio = budget_cost(layout, budget_axis, latency_model)
    flops_budgets, budgets, latency_budgets = member_budgets(layout, masks, cost_ratio, budget_axis)
    out = []
    for pruner in pruners:
        draws = [[s] for s in seeds] if pruner.seeded else [list(seeds)]
        for draw in draws:
            fitted = pruner.masks(trained, layout, budgets, draw[0], cost_ratio)
            run = finetune_criterion_masks(
                trained,
                layout,
                fitted,
                member_ids,
                flops_budgets,
                pruner.name,
                splits,
                policy,
                dense_measurements,
                params,
                draw,
                device,
                latency_budgets,
            )
            out += [replace(m, replicate=seeds.index(m.labels["seed"])) for m in run]
    return out


def criterion_metrics(measured: Sequence[MeasuredModel]) -> dict[str, float]:
    """The scalars of models labelled by ``criterion`` (baselines, other methods): ``<criterion>.<key>.<metric>``."""
    return {f"{m.labels['criterion']}.{m.key}.{k}": v for m in measured for k, v in m.scalars.items()}


def method_table(measured: Sequence[MeasuredModel], kind: str) -> pd.DataFrame:
    """Rows for the report of a method beside the members: ``kind``, ``method`` (the models' ``criterion`` label);
    with no model, an empty table that still has these columns and ``member``."""
    rows = pd.DataFrame([m.row for m in measured], columns=None if measured else ["criterion", "member"])
    return rows.rename(columns={"criterion": "method"}).assign(kind=kind)


def finetune_within_member_budgets(
    trained: nn.Module,
    candidate_masks: np.ndarray,
    masks: np.ndarray,
    member_ids: Sequence[int],
    method: str,
    splits: tuple[Split, Split, Split],
    policy: tuple[float, str],
    dense_measurements: dict[str, float],
    params: FinetuneParams,
    seeds: Sequence[int],
    device: torch.device,
) -> list[MeasuredModel]:
    """Another method's networks at the members' FLOPs: per member, of the method's ``candidate_masks`` (the
    roulette branch's path, another search's front) the one with the most FLOPs within the member's, from the
    trained weights, fine-tuned exactly like the members with each of ``seeds`` and measured, labelled
    ``criterion = method``. On a path or a front, the most FLOPs within a budget is the best accuracy there. A
    member whose FLOPs no candidate gets down to has no row (logged)."""
    layout = build_layout(trained, input_shape(trained))
    budgets = layout.flops_ratio(np.asarray(masks, dtype=bool))
    levels = path_levels_within(layout, candidate_masks, budgets)
    reached = [k for k, level in enumerate(levels) if level is not None]
    for k in set(range(len(levels))) - set(reached):
        logger.warning("%s: no network within member %s's FLOPs (%.3f)", method, member_ids[k], budgets[k])
    fitted = np.asarray(candidate_masks, dtype=bool)[[levels[k] for k in reached]]
    return finetune_criterion_masks(
        trained, layout, fitted, [member_ids[k] for k in reached], budgets[reached], method, splits,
        policy, dense_measurements, params, seeds, device,
    )  # fmt: skip


def finetune_criterion_masks(
    trained: nn.Module,
    layout: ChromosomeLayout,
    masks: np.ndarray,
    member_ids: Sequence[int],
    budgets: Sequence[float],
    criterion: str,
    splits: tuple[Split, Split, Split],
    policy: tuple[float, str],
    dense_measurements: dict[str, float],
    params: FinetuneParams,
    seeds: Sequence[int],
    device: torch.device,
    latency_budgets: Sequence[float] | None = None,
) -> list[MeasuredModel]:
    """Each of a criterion's ``masks`` (one per member, fitted to its FLOPs ``budgets``, or to its predicted
    ``latency_budgets`` when given): the trained network pruned physically to it, fine-tuned exactly like the
    members (``params.training``) with each of ``seeds`` and measured, labelled ``criterion``, ``member``,
    ``flops_budget`` (the member's FLOPs ratio), ``latency_budget`` (with ``latency_budgets``) and ``seed``."""
    inputs = _inputs(trained, None, layout, splits, params, device)

    def plan(mask: np.ndarray, labels: dict[str, object], seed: int) -> FinetuneJob:
        return FinetuneJob(mask, None, seed, f"baseline[{criterion}] budget of member {labels['member']} seed {seed}")

    jobs = [
        (mask, {"criterion": criterion, "member": int(member), "flops_budget": float(budget)})
        for member, budget, mask in zip(member_ids, budgets, masks, strict=True)
    ]
    if latency_budgets is not None:
        for (_, labels), latency in zip(jobs, latency_budgets, strict=True):
            labels["latency_budget"] = float(latency)
    return _finetune_and_measure(inputs, jobs, seeds, plan, splits[2], policy, dense_measurements, params)
