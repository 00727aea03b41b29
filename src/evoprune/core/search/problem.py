"""The pruning problem for pymoo: a vectorised Problem that scores the whole population at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
from pymoo.core.problem import Problem

from evoprune.core.units import ChromosomeLayout

Objective = Literal[
    "error",
    "mean_error",
    "policy_error",
    "flops_ratio",
    "expected_flops_ratio",
    "params_ratio",
    "filters_ratio",
    "latency_ratio",
    "latency_per_flops",
]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
POLICY_OBJECTIVES = ("policy_error", "expected_flops_ratio")
LATENCY_OBJECTIVES = ("latency_ratio", "latency_per_flops")  # objectives the latency model predicts
EXTRA_VALUES = ["accuracy", "flops", "params"]  # what _evaluate returns besides F and G, per candidate


class MaskSearchProblem(Problem):
    """Minimise the chosen objectives of a binary mask under "accuracy drop <= limit".

    ``error`` is the final exit's error and ``mean_error`` the mean over all exits (pruning an early
    layer changes every later exit); ``policy_error`` and ``expected_flops_ratio`` judge the
    confidence-threshold early-exit policy (its error, and its expected FLOPs per sample as a share of
    the dense network's). The other ``*_ratio`` objectives are the kept share of FLOPs, params or
    units, computed analytically from the mask, and ``latency_ratio`` the predicted latency over the
    dense network's (``latency``: a latency model's ``ratio``, see ``evoprune.core.latency``); ``latency_per_flops``
    is that ratio over the FLOPs ratio (1: the time falls as the FLOPs do; beside ``flops_ratio`` it keeps, at
    each FLOPs cost and accuracy, the network whose FLOPs cut is most a speed-up). The constraint uses the accuracy of the first error
    objective chosen (``error`` if none is). With ``min_speedup_share`` a second constraint keeps candidates whose
    predicted speed-up is at least that share of their FLOPs reduction (``flops_ratio / latency_ratio >= it``), so
    the front holds only networks whose FLOPs cut is also a speed-up on the target. With ``max_flops_ratio`` another
    keeps candidates within that share of the dense FLOPs, so the whole population competes below a budget (the
    front then holds several allocations near it, instead of a few beside a front across every cost).

    Args:
        layout: the chromosome layout.
        score: masks (K, num_bits) -> ``{"accuracy": (K, num_exits)}``, plus ``policy_accuracy`` (K,)
            and ``exit_share`` (K, num_exits) when a policy objective is used (an array is read as
            the accuracy).
        objectives: names from ``OBJECTIVES``.
        reference: the same dict for the unpruned network (K = 1), or its per-exit accuracy.
        max_accuracy_drop: the constraint's limit (accuracy, 0.05 = 5 points).
        latency: masks (K, num_bits) -> (K,) predicted latency ratio; needed by ``LATENCY_OBJECTIVES`` and by
            ``min_speedup_share``.
        min_speedup_share: the speed constraint's limit (None: no such constraint).
        max_flops_ratio: the FLOPs constraint's limit, a share of the dense FLOPs (None: no such constraint).
    """

    def __init__(
        self,
        layout: ChromosomeLayout,
        score: Callable[[np.ndarray], np.ndarray | dict[str, np.ndarray]],
        objectives: list[str],
        reference: np.ndarray | dict[str, np.ndarray],
        max_accuracy_drop: float,
        latency: Callable[[np.ndarray], np.ndarray] | None = None,
        min_speedup_share: float | None = None,
        max_flops_ratio: float | None = None,
    ) -> None:
        unknown = [o for o in objectives if o not in OBJECTIVES]
        if unknown or not objectives:
            raise ValueError(f"unknown objectives {unknown or objectives}; choose from {list(OBJECTIVES)}")
        constraint_on = next((o for o in objectives if o in ("error", "mean_error", "policy_error")), "error")
        # the setting behind each column of G, in order, with its value: what a user loosens (``why_infeasible``)
        settings = [f"search.max_accuracy_drop {max_accuracy_drop} (before fine-tuning, on {constraint_on})"]
        if min_speedup_share is not None:
            settings.append(f"search.min_speedup_share {min_speedup_share} (predicted)")
        if max_flops_ratio is not None:
            settings.append(f"search.max_flops_ratio {max_flops_ratio}")
        super().__init__(
            n_var=layout.num_bits, n_obj=len(objectives), n_ieq_constr=len(settings), xl=0, xu=1, vtype=bool
        )
        self.constraint_settings, self.constraint_on = settings, constraint_on
        self.layout, self.score, self.objectives = layout, score, list(objectives)
        self.max_accuracy_drop, self.min_speedup_share = max_accuracy_drop, min_speedup_share
        self.max_flops_ratio = max_flops_ratio
        timed = [o for o in objectives if o in LATENCY_OBJECTIVES]
        if timed and latency is None:
            raise ValueError(f"the {timed} objectives need a latency model of the target (evoprune.core.latency)")
        if min_speedup_share is not None and latency is None:
            raise ValueError("min_speedup_share needs a latency model of the target (evoprune.core.latency)")
        self.latency = latency
        ref = _as_scores(reference)
        policy_objectives = [o for o in objectives if o in POLICY_OBJECTIVES]
        if policy_objectives and "policy_accuracy" not in ref:
            raise ValueError(
                f"{policy_objectives} need an early-exit policy: a multi-exit model and build_exits' operating point"
            )
        self.reference_accuracy = ref["accuracy"].reshape(-1)
        dense = np.ones((1, layout.num_bits), dtype=bool)
        self.reference_error = float(self._values(dense, ref, layout.cost(dense))[self.constraint_on][0])

    def _values(
        self, X: np.ndarray, scores: dict[str, np.ndarray], cost: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        accuracy = np.atleast_2d(scores["accuracy"])  # (K, E)
        values = {
            "error": 1.0 - accuracy[:, -1],
            "mean_error": 1.0 - accuracy.mean(1),
            "flops_ratio": cost["flops"] / self.layout.dense_flops,
            "params_ratio": cost["params"] / self.layout.dense_params,
            "filters_ratio": X.mean(1),
        }
        if self.latency is not None:
            values["latency_ratio"] = np.asarray(self.latency(X), dtype=float)
            values["latency_per_flops"] = values["latency_ratio"] / values["flops_ratio"]  # every layer keeps a unit
        if "policy_accuracy" in scores:
            values["policy_error"] = 1.0 - np.atleast_1d(scores["policy_accuracy"])
            expected = (np.atleast_2d(scores["exit_share"]) * self.layout.exit_flops(X)).sum(1)
            values["expected_flops_ratio"] = expected / self.layout.dense_flops
        return values

    def _evaluate(self, X, out, *args, **kwargs):
        X = np.asarray(X, dtype=bool)
        scores = _as_scores(self.score(X))
        accuracy = scores["accuracy"]
        cost = self.layout.cost(X)
        values = self._values(X, scores, cost)
        drop = values[self.constraint_on] - self.reference_error
        out["F"] = np.column_stack([values[o] for o in self.objectives])
        G = [drop - self.max_accuracy_drop]
        if self.min_speedup_share is not None:  # predicted speed-up / FLOPs reduction >= the share
            G.append(self.min_speedup_share - 1.0 / values["latency_per_flops"])
        if self.max_flops_ratio is not None:
            G.append(values["flops_ratio"] - self.max_flops_ratio)
        out["G"] = np.column_stack(G)
        out["accuracy"] = accuracy
        out["flops"] = cost["flops"]
        out["params"] = cost["params"]


def _as_scores(scores: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return scores if isinstance(scores, dict) else {"accuracy": np.asarray(scores)}


def why_infeasible(settings: list[str], G: np.ndarray) -> str:
    """Why no candidate with constraint values ``G`` (K, C; > 0 broken) is feasible, one clause per constraint of
    ``settings`` (``MaskSearchProblem.constraint_settings``, one per column of G): how many candidates broke it, how many broke it alone
    (loosening that setting alone would have let them in) and by how little the nearest one missed it."""
    G = np.asarray(G, dtype=float)
    broken = G > 0
    clauses = []
    for j, setting in enumerate(settings):
        over = G[broken[:, j], j]
        alone = int((broken[:, j] & (broken.sum(1) == 1)).sum())
        missed = f", the nearest by {over.min():.4g}" if len(over) else ""
        clauses.append(f"{setting}: broken by {int(broken[:, j].sum())}, by {alone} alone{missed}")
    return f"none of the {len(G)} candidates met every constraint; " + "; ".join(clauses)
