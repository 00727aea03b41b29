"""The pruning problem for pymoo: a vectorised Problem that scores the whole population at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from pymoo.core.problem import Problem

from evoprune.core.units import ChromosomeLayout

Objective = Literal["error", "mean_error", "flops_ratio", "params_ratio", "filters_ratio"]
OBJECTIVES: tuple[str, ...] = ("error", "mean_error", "flops_ratio", "params_ratio", "filters_ratio")


class MaskSearchProblem(Problem):
    """Minimise the chosen objectives of a binary mask under "accuracy drop <= limit".

    ``error`` is the final exit's error and ``mean_error`` the mean over all exits (pruning an early
    layer changes every later exit); the ``*_ratio`` objectives are the kept share of FLOPs, params or
    units, computed analytically from the mask. The constraint uses the same accuracy as the first
    error objective (``error`` if none is chosen).

    Args:
        layout: the chromosome layout.
        score: masks (K, num_bits) -> accuracy of every exit (K, num_exits).
        objectives: names from ``OBJECTIVES``.
        reference_accuracy: per-exit accuracy of the unpruned network (num_exits,).
        max_accuracy_drop: the constraint's limit (accuracy, 0.05 = 5 points).
    """

    def __init__(
        self,
        layout: ChromosomeLayout,
        score: Callable[[np.ndarray], np.ndarray],
        objectives: list[str],
        reference_accuracy: np.ndarray,
        max_accuracy_drop: float,
    ) -> None:
        unknown = [o for o in objectives if o not in OBJECTIVES]
        if unknown or not objectives:
            raise ValueError(f"unknown objectives {unknown or objectives}; choose from {list(OBJECTIVES)}")
        super().__init__(n_var=layout.num_bits, n_obj=len(objectives), n_ieq_constr=1, xl=0, xu=1, vtype=bool)
        self.layout, self.score, self.objectives = layout, score, list(objectives)
        self.reference_accuracy = np.asarray(reference_accuracy, dtype=float)
        self.max_accuracy_drop = max_accuracy_drop
        self.constraint_on = "mean_error" if "mean_error" in objectives and "error" not in objectives else "error"

    def _evaluate(self, X, out, *args, **kwargs):
        X = np.asarray(X, dtype=bool)
        accuracy = self.score(X)  # (K, E)
        cost = self.layout.cost(X)
        values = {
            "error": 1.0 - accuracy[:, -1],
            "mean_error": 1.0 - accuracy.mean(1),
            "flops_ratio": cost["flops"] / self.layout.dense_flops,
            "params_ratio": cost["params"] / self.layout.dense_params,
            "filters_ratio": X.mean(1),
        }
        reference = self.reference_accuracy[-1] if self.constraint_on == "error" else self.reference_accuracy.mean()
        drop = reference - (1.0 - values[self.constraint_on])
        out["F"] = np.column_stack([values[o] for o in self.objectives])
        out["G"] = (drop - self.max_accuracy_drop)[:, None]
        out["accuracy"] = accuracy
        out["flops"] = cost["flops"]
        out["params"] = cost["params"]
