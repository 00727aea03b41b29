"""The roulette branch method (Chan et al. 2024): from the current network, sample a branch of
roulette-pruned candidates, keep the slimmest one whose accuracy stays within the limit (the most
accurate among equally slim ones), and prune further from it until no candidate of a branch passes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from evoprune.core.search.operators import drop_probability
from evoprune.core.units import ChromosomeLayout


class RouletteBranchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    branch_size: PositiveInt = 12  # candidates sampled per level
    step: float = Field(0.25, gt=0.0, lt=1.0)  # roulette intensity: share of kept units a level drops at most
    max_levels: PositiveInt = 30


def roulette_branch_search(
    layout: ChromosomeLayout,
    score: Callable[[np.ndarray], np.ndarray],
    rank: np.ndarray,
    importance: np.ndarray,
    reference_accuracy: float,
    max_accuracy_drop: float,
    floor: float,
    cfg: RouletteBranchConfig,
    seed: int,
) -> dict[str, np.ndarray]:
    """Returns the path (one mask per level, dense first) and every evaluated candidate:
    ``path_X``, ``path_accuracy`` (final exit), ``X``, ``accuracy`` (all exits), ``level``."""
    rng = np.random.default_rng(seed)
    current = np.ones(layout.num_bits, dtype=bool)
    path_X, path_acc = [current], [reference_accuracy]
    all_X, all_acc, levels = [], [], []
    for level in range(1, cfg.max_levels + 1):
        intensity = cfg.step * rng.uniform(0.2, 1.0, size=cfg.branch_size)
        drop = rng.random((cfg.branch_size, layout.num_bits)) < drop_probability(rank, intensity, floor)
        branch = layout.repair(current & ~drop, importance)
        accuracy = score(branch)
        all_X.append(branch), all_acc.append(accuracy), levels.append(np.full(len(branch), level))
        ok = accuracy[:, -1] >= reference_accuracy - max_accuracy_drop
        if not ok.any():
            break
        flops = layout.cost(branch)["flops"]
        candidates = np.flatnonzero(ok)
        best = min(candidates, key=lambda i: (round(flops[i] / layout.dense_flops, 3), -accuracy[i, -1]))
        current = branch[best]
        path_X.append(current), path_acc.append(accuracy[best, -1])
    return {
        "path_X": np.array(path_X),
        "path_accuracy": np.array(path_acc),
        "X": np.concatenate(all_X) if all_X else np.empty((0, layout.num_bits), bool),
        "accuracy": np.concatenate(all_acc) if all_acc else np.empty((0, 0)),
        "level": np.concatenate(levels) if levels else np.empty(0),
    }


def path_levels_within(layout: ChromosomeLayout, path_X: np.ndarray, flops_budgets: np.ndarray) -> list[int | None]:
    """For each FLOPs budget (a ratio of the dense FLOPs), the level of the roulette path whose network has the
    most FLOPs within it; None when the path's slimmest network is above the budget."""
    ratios = layout.flops_ratio(np.asarray(path_X, dtype=bool))
    out: list[int | None] = []
    for budget in np.asarray(flops_budgets, dtype=float):
        within = np.flatnonzero(ratios <= budget + 1e-9)
        out.append(int(within[np.argmax(ratios[within])]) if len(within) else None)
    return out
