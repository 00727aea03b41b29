"""Roulette-wheel operators (Chan et al. 2024): a unit is dropped with a probability that falls with its
importance; small units are likely, never certainly, pruned and large ones likely, never certainly, kept.

Importance (``evoprune.core.importance``, the unit's own filter L1 norm by default) is ranked within each
layer: ``rank`` 0 is the least important unit, 1 the most important.
"""

from __future__ import annotations

import numpy as np
from pymoo.core.mutation import Mutation
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling

from evoprune.core.units import ChromosomeLayout


def rank_within_layers(importance: np.ndarray, layout: ChromosomeLayout) -> np.ndarray:
    """Importance -> rank in [0, 1] within each layer (0 = least important; a 1-unit layer gets 1)."""
    ranks = np.ones(layout.num_bits)
    for g in layout.groups:
        block = importance[g.offset : g.offset + g.size]
        if g.size > 1:
            ranks[g.offset : g.offset + g.size] = np.argsort(np.argsort(block, kind="stable"), kind="stable") / (
                g.size - 1
            )
    return ranks


def drop_probability(rank: np.ndarray, intensity: float | np.ndarray, floor: float) -> np.ndarray:
    """Roulette drop probability: ``intensity`` for the least important unit, ``intensity * floor``
    for the most important one, linear in between."""
    return np.asarray(intensity)[..., None] * (1.0 - (1.0 - floor) * rank)


class RouletteSampling(Sampling):
    """First population: the all-ones mask, the given ``seeds`` (e.g. L1-pruned masks at several FLOPs
    budgets, so that the search starts where the classic heuristic ends), then masks drawn by the
    roulette wheel at pruning intensities spread evenly over (0, max_intensity]."""

    def __init__(
        self, rank: np.ndarray, floor: float = 0.1, max_intensity: float = 0.95, seeds: np.ndarray | None = None
    ) -> None:
        super().__init__()
        self.rank, self.floor, self.max_intensity = rank, floor, max_intensity
        self.seeds = np.zeros((0, len(rank)), dtype=bool) if seeds is None else np.asarray(seeds, dtype=bool)

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        fixed = np.vstack([np.ones((1, problem.n_var), dtype=bool), self.seeds])[:n_samples]
        n_drawn = n_samples - len(fixed)
        intensity = self.max_intensity * (np.arange(1, n_drawn + 1) / max(n_drawn, 1))
        drop = random_state.random((n_drawn, problem.n_var)) < drop_probability(self.rank, intensity, self.floor)
        return np.vstack([fixed, ~drop])


class RouletteMutation(Mutation):
    """Bit flips biased by importance: kept units are dropped with a probability falling with their
    rank, dropped units come back with a probability rising with it; the mean rate is ``rate`` per bit
    (default 1 / number of bits)."""

    def __init__(self, rank: np.ndarray, floor: float = 0.1, rate: float | None = None, prob: float = 1.0) -> None:
        super().__init__(prob=prob)
        self.rank, self.floor, self.rate = rank, floor, rate

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        rate = self.rate or 1.0 / problem.n_var
        scale = 2.0 / (1.0 + self.floor)  # mean of (1 - (1 - floor) * rank) over uniform ranks is (1 + floor) / 2
        p_drop = rate * scale * (1.0 - (1.0 - self.floor) * self.rank)
        p_restore = rate * scale * (self.floor + (1.0 - self.floor) * self.rank)
        X = X.astype(bool)
        flip = random_state.random(X.shape) < np.where(X, p_drop, p_restore)
        return X ^ flip


class KeepUnitsPerLayer(Repair):
    """Every layer keeps at least ``min_units`` of its units (default one), its most important ones
    coming back first; with ``round_to`` > 1, a multiple of ``round_to`` units or all of them
    (``ChromosomeLayout.round_units``, rounding stochastically with pymoo's seeded generator).

    ``uncapped_below`` > 0: ``min_units`` binds only masks that keep at least this share of the dense
    FLOPs once every layer keeps one unit; sparser masks keep one unit a layer. The cap guards the budgets
    where members are fine-tuned and compared, and leaves the sparse end of the front open.
    """

    def __init__(
        self,
        layout: ChromosomeLayout,
        importance: np.ndarray,
        min_units: np.ndarray | None = None,
        round_to: int = 1,
        uncapped_below: float = 0.0,
    ) -> None:
        super().__init__()
        self.layout, self.importance, self.min_units, self.round_to = layout, importance, min_units, round_to
        self.uncapped_below = uncapped_below

    def _do(self, problem, X, random_state=None, **kwargs):
        if not self.uncapped_below or self.min_units is None:
            return self.layout.repair(X, self.importance, self.min_units, self.round_to, random_state)
        free = self.layout.repair(X, self.importance, None, self.round_to, random_state)
        capped = self.layout.flops_ratio(free) >= self.uncapped_below
        if capped.any():
            free[capped] = self.layout.repair(X[capped], self.importance, self.min_units, self.round_to, random_state)
        return free
