"""Nodes of mask_search."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator
from torch import nn

from evoprune.core import plots
from evoprune.core.exits import input_shape
from evoprune.core.latency import (
    LatencyModel,
    LatencySettings,
    measure_masks_ms,
    prediction_errors,
    validate_latency,
    validation_masks,
)
from evoprune.core.mask_codec import decode_masks, encode_masks
from evoprune.core.runtime import resolve_device
from evoprune.core.search.api import SearchOutcome, search_pruning_masks
from evoprune.core.search.distributed import DistributedConfig
from evoprune.core.search.members import (
    MemberRule,
    choose_front_members,
    final_network_groups,
    with_measured_latency,
)
from evoprune.core.search.roulette_branch import RouletteBranchConfig
from evoprune.core.search.run import SearchConfig
from evoprune.core.units import build_layout
from evoprune.pipelines.latency_profile.nodes import LatencyProfileParams
from evoprune.tracking import to_mlflow_metrics

Split = dict[str, torch.Tensor]
logger = logging.getLogger(__name__)


class MaskSearchParams(BaseModel):
    """conf/base/parameters_mask_search.yml (the defaults are conf/base's; ``tests/test_params_defaults.py``)"""

    model_config = ConfigDict(extra="forbid")

    validation_subset: PositiveInt = 2000  # validation images scoring each candidate
    adaptive_bn_images: NonNegativeInt = 1024  # training images re-estimating BatchNorm per candidate; 0 = off
    # conf/base's search (SearchConfig's own defaults serve library use of the core)
    search: SearchConfig = Field(
        default_factory=lambda: SearchConfig(
            pop_size=48,
            generations=60,
            max_accuracy_drop=0.75,
            max_pruning_ratio=0.7,
            uncapped_below=0.2,
            seed_with_l1=8,
        )
    )
    roulette_branch: RouletteBranchConfig | None = Field(default_factory=RouletteBranchConfig)  # null: skip
    random_masks: NonNegativeInt = 60  # random masks evaluated for contrast in the plot
    chosen_members: PositiveInt = 3  # without member_budgets: members spread evenly along the FLOPs axis
    # per FLOPs budget (ratio), the front member within it with the best final-exit accuracy (null: spread)
    member_budgets: list[Annotated[float, Field(gt=0.0, le=1.0)]] | None = Field(
        default_factory=lambda: [0.5, 0.35, 0.25]
    )
    # with member_budgets: the best `candidates_per_budget` members per budget (by final-exit accuracy before
    # fine-tuning); finetune's select_members fine-tunes them and keeps the best on validation data per budget
    candidates_per_budget: PositiveInt = 2
    # conf/base writes it under ${globals:outputs} (data); null: no checkpoints
    checkpoint_dir: str | None = "data/07_model_output/mask_search_checkpoints"
    checkpoints_kept: PositiveInt = 3  # searches whose checkpoints stay (newest first, this one included)
    # a corrupt, torn, old-format or another search's checkpoint: restart (warn, keep it as state.npz.bad and
    # search afresh) or stop (raise CheckpointError naming the file)
    on_bad_checkpoint: Literal["restart", "stop"] = "restart"
    # population scoring on Dask workers (scheduler null: in this process)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    # the cost axis of member_budgets (and of the front plot): null = the search's own (latency_ratio when it
    # is an objective, else flops_ratio); latency_ratio = the latency model's predicted ratio
    budget_axis: Literal["flops_ratio", "latency_ratio"] | None = None
    # with member_budgets: a candidate's predicted speed-up must be at least this share of its FLOPs reduction,
    # i.e. flops_ratio / latency_ratio >= it (the latency model's prediction on this target; null: no such rule).
    # FLOPs cut from layers left a few channels wide turn into little speed on a CPU: this keeps members whose
    # FLOPs reduction is also a speed-up (issue 11 asks for >= 0.7 on ResNet-20)
    min_speedup_share: Annotated[float, Field(gt=0.0, le=1.5)] | None = None
    # what min_speedup_share judges: the latency model's prediction, or each possible candidate (a front member
    # within the loosest budget) timed whole on this machine, paired with the dense network, at latency_profile's
    # settings (a few seconds each; needs no tables). Measured on a Xeon, a member predicted at 0.704 ran at 0.67
    speedup_share_from: Literal["predicted", "measured"] = "predicted"

    def cost_axis(self) -> str:
        """The column members are chosen and the front is drawn on."""
        if self.budget_axis is not None:
            return self.budget_axis
        return "latency_ratio" if "latency_ratio" in self.search.objectives else "flops_ratio"

    @model_validator(mode="after")
    def _members_obey_the_cap(self) -> MaskSearchParams:
        if self.member_budgets and self.search.uncapped_below >= min(self.member_budgets):
            raise ValueError(
                f"search.uncapped_below ({self.search.uncapped_below}) lies above the tightest of member_budgets "
                f"({min(self.member_budgets)}): members are chosen between the two (where they obey "
                "search.max_pruning_ratio, as the baselines at their FLOPs do), so none could be. Set "
                "uncapped_below below the tightest budget."
            )
        return self

    @model_validator(mode="after")
    def _speedup_share_needs_budgets(self) -> MaskSearchParams:
        if self.min_speedup_share is not None and not self.member_budgets:
            raise ValueError(
                f"min_speedup_share ({self.min_speedup_share}) filters the candidates of member_budgets, which is "
                "empty: set member_budgets, or min_speedup_share: null."
            )
        return self

    @model_validator(mode="after")
    def _measured_share_needs_a_share(self) -> MaskSearchParams:
        if self.speedup_share_from == "measured" and self.min_speedup_share is None:
            raise ValueError(
                "speedup_share_from: measured times the candidates for min_speedup_share, which is null: set "
                "min_speedup_share (e.g. 0.7), or speedup_share_from: predicted."
            )
        return self


def search_data(
    train_split: Split, validation_split: Split, early_exit_operating_point: dict[str, object], params: MaskSearchParams
) -> tuple[Split, torch.Tensor | None, tuple[float, str]]:
    """What every search of this network scores candidates on: the first ``validation_subset`` validation
    images, the first ``adaptive_bn_images`` training images (adaptive BN; None when 0) and the early-exit
    policy of build_exits' operating point."""
    subset = {k: v[: params.validation_subset] for k, v in validation_split.items()}
    calibration = train_split["images"][: params.adaptive_bn_images] if params.adaptive_bn_images else None
    policy = (float(early_exit_operating_point["threshold"]), str(early_exit_operating_point["criterion"]))
    return subset, calibration, policy


def search_masks(
    multi_exit_model: nn.Module,
    train_split: Split,
    validation_split: Split,
    early_exit_operating_point: dict[str, object],
    latency_model: LatencyModel,
    latency_params: LatencyProfileParams,
    params: MaskSearchParams,
    seed: int,
    device: str,
    seed_masks: np.ndarray | None = None,
) -> SearchOutcome:
    """Run the configured search on the first ``validation_subset`` validation images (the latency model: this
    network's, of this run's settings and device); ``seed_masks`` (another method's masks) join the first population."""
    subset, calibration, policy = search_data(train_split, validation_split, early_exit_operating_point, params)
    return search_pruning_masks(
        multi_exit_model,
        subset,
        calibration,
        params.search,
        seed,
        resolve_device(device),
        params.random_masks,
        params.roulette_branch,
        params.checkpoint_dir,
        policy,
        params.checkpoints_kept,
        params.on_bad_checkpoint,
        params.distributed,
        latency_model,
        _latency_settings(params, latency_model, latency_params),
        train_split,
        seed_masks,
    )


def _latency_settings(
    params: MaskSearchParams, latency_model: LatencyModel, latency_params: LatencyProfileParams
) -> LatencySettings:
    """The settings the latency model must have been measured with; refuses ``min_speedup_share`` without
    latency tables (evaluated before the search starts, not after it)."""
    if (
        params.min_speedup_share is not None
        and params.speedup_share_from == "predicted"
        and not latency_model.available
    ):
        raise ValueError(f"mask_search.min_speedup_share needs latency tables: {latency_model.unavailable}")
    return latency_params.settings(params.search.round_to)


def _rows(outcome: SearchOutcome, X: np.ndarray, accuracy: np.ndarray) -> pd.DataFrame:
    cost = outcome.layout.cost(X)
    table = pd.DataFrame({f"exit{e + 1}_accuracy": accuracy[:, e] for e in range(accuracy.shape[1])})
    table.insert(0, "flops_ratio", cost["flops"] / outcome.layout.dense_flops)
    table["flops"], table["params"] = cost["flops"], cost["params"]
    table["params_ratio"] = cost["params"] / outcome.layout.dense_params
    latency_ratio = outcome.predicted_latency_ratio(X)
    if latency_ratio is not None:
        table["latency_ratio"] = latency_ratio  # predicted by the latency model, relative to the dense network
    for column, counts in outcome.layout.kept_columns(X).items():
        table[column] = counts
    table["units_kept"] = X.sum(1)
    table["mask"] = encode_masks(X)
    return table


def tabulate_search(
    outcome: SearchOutcome,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, object], dict[str, object]]:
    """Pareto set, every evaluated candidate, random masks, per-generation metrics and a summary."""
    res = outcome.result
    axis = "latency_ratio" if "latency_ratio" in outcome.objectives else "flops_ratio"
    pareto = _rows(outcome, res.front_X, res.front_accuracy).sort_values(axis, ignore_index=True)
    pareto.insert(0, "member", range(len(pareto)))
    history = _rows(outcome, res.evaluated_X, res.evaluated_accuracy)
    history.insert(0, "generation", res.evaluated_generation)
    history.insert(1, "feasible", (res.evaluated_G <= 0).all(1))  # every constraint met
    random = _rows(outcome, outcome.random_X, outcome.random_accuracy)
    per_generation = {k: [g[k] for g in res.generations] for k in res.generations[0]} if res.generations else {}
    summary = {
        "front_size": len(pareto),
        "min_flops_ratio": float(pareto["flops_ratio"].min()) if len(pareto) else 1.0,
        "search_seconds": outcome.seconds,
        "evaluations": outcome.evaluations,
        "evaluations_per_second": outcome.evaluations / max(outcome.seconds, 1e-9),
        "num_units": outcome.layout.num_bits,
        "reference_accuracy": float(outcome.reference_accuracy[-1]),
    }
    return pareto, history, random, to_mlflow_metrics(per_generation), to_mlflow_metrics(summary)


def tabulate_roulette_path(outcome: SearchOutcome) -> pd.DataFrame:
    """The roulette branch method's path (Chan et al.): one row per level, the dense network first, with its
    FLOPs and params ratios, final-exit validation accuracy (before fine-tuning) and mask bits; empty when the
    branch did not run (``mask_search.roulette_branch: null``)."""
    columns = ["level", "flops_ratio", "params_ratio", "val_accuracy", "units_kept", "mask"]
    if outcome.roulette is None:
        return pd.DataFrame(columns=columns)
    X = outcome.roulette["path_X"]
    cost = outcome.layout.cost(X)
    return pd.DataFrame(
        {
            "level": range(len(X)),
            "flops_ratio": cost["flops"] / outcome.layout.dense_flops,
            "params_ratio": cost["params"] / outcome.layout.dense_params,
            "val_accuracy": outcome.roulette["path_accuracy"],
            "units_kept": X.sum(1),
            "mask": encode_masks(X),
        }
    )


def time_front_candidates(
    pareto_set: pd.DataFrame,
    multi_exit_model: nn.Module,
    latency_params: LatencyProfileParams,
    params: MaskSearchParams,
    device: str,
) -> pd.DataFrame:
    """With ``speedup_share_from: measured``, the Pareto set plus ``measured_latency_ratio`` of every member that
    could be a candidate, each pruned network timed paired with the dense one at latency_profile's settings on
    this machine (``with_measured_latency``); otherwise the Pareto set as it is."""
    if params.speedup_share_from == "predicted":
        return pareto_set
    layout = build_layout(multi_exit_model.eval(), input_shape(multi_exit_model))
    settings = latency_params.settings(params.search.round_to)

    def measure_ratio(masks: np.ndarray) -> np.ndarray:
        return measure_masks_ms(multi_exit_model, layout, masks, settings, resolve_device(device)).ratio

    return with_measured_latency(pareto_set, params.cost_axis(), _member_rule(params), measure_ratio)


def _member_rule(params: MaskSearchParams, final_groups: tuple[str, ...] = ()) -> MemberRule:
    return MemberRule(
        params.member_budgets,
        params.candidates_per_budget,
        params.search.uncapped_below,
        params.min_speedup_share,
        final_groups,
    )


def choose_members(
    pareto_set: pd.DataFrame, params: MaskSearchParams, multi_exit_model: nn.Module | None = None
) -> pd.DataFrame:
    """Members on ``params.cost_axis()`` (FLOPs, or the predicted latency ratio): per ``member_budgets`` the best
    ``candidates_per_budget`` (column ``budget``), one per allocation of ``multi_exit_model``'s final-exit network,
    or ``chosen_members`` spread along the front (``evoprune.core.search.members.choose_front_members``)."""
    axis = params.cost_axis()
    if axis not in pareto_set.columns:
        raise ValueError(f"mask_search.budget_axis {axis}: the Pareto set has no such column (no latency tables?)")
    final_groups = ()
    if multi_exit_model is not None:
        layout = build_layout(multi_exit_model.eval(), input_shape(multi_exit_model))
        final_groups = final_network_groups(multi_exit_model, layout)
    return choose_front_members(pareto_set, axis, _member_rule(params, final_groups), params.chosen_members)


def export_members(multi_exit_model: nn.Module, chosen_members: pd.DataFrame) -> dict[str, object]:
    """The chosen members as one portable file (spec + weights + masks).

    Returns: ``{"model": the multi-exit network, "masks": (K, num_bits) bool, "member_ids": K ids}``.
    """
    masks = decode_masks(chosen_members["mask"])
    return {"model": multi_exit_model, "masks": masks, "member_ids": chosen_members["member"].tolist()}


def plot_pareto_front(
    pareto_set: pd.DataFrame,
    search_history: pd.DataFrame,
    random_masks: pd.DataFrame,
    chosen_members: pd.DataFrame,
    outcome: SearchOutcome,
    params: MaskSearchParams,
) -> Figure:
    """Front before fine-tuning, with evaluated, random and roulette-branch candidates for contrast."""
    exits = [c for c in pareto_set.columns if c.startswith("exit") and c.endswith("_accuracy")]
    mean_over_exits = "mean_error" in params.search.objectives and "error" not in params.search.objectives

    axis = params.cost_axis() if params.cost_axis() in pareto_set.columns else "flops_ratio"

    def xy(table: pd.DataFrame) -> tuple[list[float], list[float]]:
        accuracy = table[exits].mean(axis=1) if mean_over_exits else table[exits[-1]]
        return table[axis].tolist(), accuracy.tolist()

    return plots.pareto_front(
        xy(pareto_set),
        xy(search_history),
        xy(random_masks),
        xy(chosen_members),
        float(outcome.reference_accuracy.mean() if mean_over_exits else outcome.reference_accuracy[-1]),
        outcome.roulette_path(axis),
        f"mask_search: {params.search.algorithm}, objectives {params.search.objectives}",
        "mean accuracy over exits" if mean_over_exits else "final-exit accuracy",
        "predicted latency (ratio of dense)" if axis == "latency_ratio" else "FLOPs kept (ratio of dense)",
    )


def validate_latency_model(
    multi_exit_model: nn.Module,
    latency_model: LatencyModel,
    chosen_members: pd.DataFrame,
    latency_params: LatencyProfileParams,
    params: MaskSearchParams,
    device: str,
) -> tuple[pd.DataFrame, Figure, dict[str, object]]:
    """Predicted vs measured latency (each network timed paired with the dense one) of the chosen members and
    ``validation_masks`` random pruned networks: table, plot and error metrics (ratio errors; ``ms_*`` absolute)."""
    if not latency_model.available:
        return pd.DataFrame(columns=["kind"]), plots.latency_validation([], [], [], latency_model.unavailable), {}
    layout = build_layout(multi_exit_model.eval(), input_shape(multi_exit_model))
    settings = latency_params.settings(params.search.round_to)
    masks, kinds = validation_masks(
        layout, decode_masks(chosen_members["mask"]), latency_params.validation_masks, settings
    )
    table = pd.DataFrame(
        validate_latency(multi_exit_model, layout, latency_model, masks, settings, resolve_device(device))
    )
    table.insert(0, "kind", kinds)
    errors = prediction_errors(table["predicted_ratio"], table["measured_ratio"])
    errors.update({f"ms_{k}": v for k, v in prediction_errors(table["predicted_ms"], table["measured_ms"]).items()})
    title = f"latency model: {errors['within_10pct']:.0%} within +-10% (batch {settings.batch_size})"
    figure = plots.latency_validation(table["predicted_ratio"], table["measured_ratio"], kinds, title)
    return table, figure, to_mlflow_metrics(errors)
