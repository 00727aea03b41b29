"""Running a mask search: algorithms, per-generation statistics, checkpoint and exact resume."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.soo.nonconvex.ga import GA
from pymoo.core.evaluator import Evaluator
from pymoo.core.population import Population
from pymoo.indicators.hv import HV
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.util.optimum import filter_optimum
from tqdm.auto import tqdm

from evoprune.core.masking import EvaluatorKind, Precision
from evoprune.core.search.checkpoint import (
    CHECKPOINT_FILE,
    LOG_KEYS,
    POPULATION_KEYS,
    Checkpoint,
    OnBadCheckpoint,
    load_for_resume,
    save_checkpoint,
)
from evoprune.core.search.operators import KeepUnitsPerLayer, RouletteMutation, RouletteSampling
from evoprune.core.search.problem import EXTRA_VALUES, OBJECTIVES, POLICY_OBJECTIVES, MaskSearchProblem
from evoprune.core.search.recovery import RecoveryConfig

logger = logging.getLogger(__name__)


class SearchConfig(BaseModel):
    """How to search (conf/base/parameters_mask_search.yml, key ``mask_search.search``)."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["nsga2", "ga", "roulette"] = "nsga2"  # roulette: the branch method (mask_search.roulette_branch)
    objectives: list[Literal[OBJECTIVES]] = Field(default_factory=lambda: ["error", "flops_ratio"], min_length=1)  # type: ignore[valid-type]
    pop_size: int = Field(40, ge=4)
    generations: PositiveInt = 30
    max_accuracy_drop: float = Field(0.1, gt=0.0, le=1.0)  # before fine-tuning; 0.1 = 10 points
    crossover_prob: float = Field(0.9, ge=0.0, le=1.0)
    mutation_rate: float | None = Field(None, gt=0.0, lt=1.0)  # per bit; None = 1 / number of bits
    roulette_floor: float = Field(0.1, gt=0.0, lt=1.0)  # drop prob. of the most important unit relative to the least
    max_intensity: float = Field(0.95, gt=0.0, lt=1.0)  # strongest pruning in the first population
    checkpoint_every: int = Field(5, ge=0)  # generations; 0 = never
    hv_reference: float = Field(1.1, gt=0.0)  # hypervolume reference point, the same in every objective
    budgets: list[float] = Field(default_factory=lambda: [0.5, 0.25, 0.15])  # FLOPs ratios for "best accuracy within"
    # masks of global L1 pruning (torch-pruning's importance) at this many FLOPs budgets evenly spread
    # over [0.1, 0.9], put in the first population: the search starts where the heuristic ends
    seed_with_l1: NonNegativeInt = 0
    # this many random per-layer allocations at each of `allocation_budgets` (FLOPs ratios) in the first population:
    # unit counts drawn as the random baseline draws them, units chosen by group L1 within each layer (EagleEye's
    # candidate pool, Li et al. 2020). Global L1 and the roulette wheel keep much the same share of every layer;
    # these start the search from other allocations where the members are chosen
    seed_allocations: NonNegativeInt = 0
    allocation_budgets: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(default_factory=list)
    # draw `allocation_pool` x seed_allocations allocations per budget and keep the seed_allocations whose predicted
    # speed-up is the largest share of their FLOPs reduction (FLOPs ratio / the latency model's latency ratio;
    # needs latency tables when > 1): allocations that are fast for their FLOPs on the target, not just any
    allocation_pool: PositiveInt = 1
    # a second constraint: candidates must be predicted (latency model) to turn at least this share of their FLOPs
    # reduction into speed-up, flops_ratio / latency_ratio >= it (needs latency tables; null: none). The whole
    # population then competes where a FLOPs cut is also a speed-up on the target, instead of filtering a front
    # afterwards (mask_search.min_speedup_share)
    min_speedup_share: Annotated[float, Field(gt=0.0, le=1.5)] | None = None
    # a third constraint: candidates keep at most this share of the dense FLOPs (null: none). The whole population
    # then competes below the members' budget, and the front holds several distinct allocations near it for the
    # fine-tuned contest (mask_search.candidates_per_budget) instead of one or two beside a front across every cost
    max_flops_ratio: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    # no layer loses more than this share of its units (torch-pruning's max_pruning_ratio); the
    # baselines obey the same limit
    max_pruning_ratio: float = Field(1.0, gt=0.0, le=1.0)
    # masks keeping less than this share of the dense FLOPs (with one unit a layer) are free of
    # max_pruning_ratio: the cap binds at the members' budgets, not at the sparse end of the front. 0: everywhere
    uncapped_below: float = Field(0.0, ge=0.0, lt=1.0)
    # every layer larger than this keeps a multiple of this many units (or all): channel counts that
    # the CPU/GPU kernels run fast (8 = AVX2's float lanes); 1 = any count. The baselines obey it too.
    round_to: PositiveInt = 1
    # the last recovery.generations generations score candidates after recovery.steps fine-tune steps
    # (evoprune.core.search.recovery); 0 generations = off
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    # how candidates are scored (core.masking): auto = tiled on CUDA (many candidates per launch), sliced on CPU
    # (each candidate on its own sliced weights) | sliced | tiled. precision bfloat16 (tiled only): autocast, for
    # ranking where bf16 is exact enough (benchmarks/mask_evaluation.py prints its disagreement with float32)
    evaluator: EvaluatorKind = "auto"
    precision: Precision = "float32"

    @model_validator(mode="after")
    def _recovery_fits(self) -> SearchConfig:
        if not self.recovery.generations:
            return self
        if self.recovery.generations > self.generations:
            raise ValueError(
                f"search.recovery.generations ({self.recovery.generations}) exceeds search.generations "
                f"({self.generations}); set at most {self.generations}."
            )
        if self.algorithm == "roulette":
            raise ValueError("search.recovery scores generations of nsga2 / ga; the roulette algorithm has none.")
        policy = [o for o in self.objectives if o in POLICY_OBJECTIVES]
        if policy:
            raise ValueError(
                f"search.recovery scores each exit's accuracy, not the early-exit policy of objectives {policy}; "
                "set recovery.generations: 0 or choose error / mean_error objectives."
            )
        return self

    @model_validator(mode="after")
    def _seeds_fit(self) -> SearchConfig:
        if self.seed_allocations and not self.allocation_budgets:
            raise ValueError(
                f"search.seed_allocations ({self.seed_allocations}) needs search.allocation_budgets, the FLOPs ratios "
                "to draw them at (e.g. the member budgets: [0.4]); or set seed_allocations: 0."
            )
        seeded = 1 + self.seed_with_l1 + self.seed_allocations * len(self.allocation_budgets)
        if self.seed_allocations and self.algorithm != "roulette" and seeded > self.pop_size:
            raise ValueError(
                f"the first population of search.pop_size {self.pop_size} cannot hold its {seeded} fixed masks (the "
                f"dense one, seed_with_l1 {self.seed_with_l1}, seed_allocations {self.seed_allocations} x "
                f"{len(self.allocation_budgets)} allocation_budgets): raise pop_size or seed fewer."
            )
        above = [b for b in self.allocation_budgets if self.max_flops_ratio is not None and b > self.max_flops_ratio]
        if self.seed_allocations and above:
            raise ValueError(
                f"search.allocation_budgets {above} lie above search.max_flops_ratio {self.max_flops_ratio}: their "
                "seeds would all be infeasible. Draw them at or below the ceiling, or raise max_flops_ratio."
            )
        return self

    @property
    def recovery_from(self) -> int | None:
        """Generations completed before the recovery fitness takes over (None: never)."""
        return self.generations - self.recovery.generations if self.recovery.generations else None


@dataclass
class SearchResult:
    """What a search leaves: the final non-dominated feasible set, every evaluated candidate, and
    per-generation statistics."""

    front_X: np.ndarray
    front_F: np.ndarray
    front_accuracy: np.ndarray
    evaluated_X: np.ndarray
    evaluated_F: np.ndarray
    evaluated_G: np.ndarray
    evaluated_accuracy: np.ndarray
    evaluated_generation: np.ndarray
    generations: list[dict[str, float]] = field(default_factory=list)


def make_algorithm(cfg: SearchConfig, rank: np.ndarray, repair: KeepUnitsPerLayer, seeds: np.ndarray | None = None):
    """pymoo NSGA-II (multi-objective) or GA (first objective only) with roulette operators; ``seeds``
    join the all-ones mask in the first population."""
    common = dict(
        pop_size=cfg.pop_size,
        sampling=RouletteSampling(rank, cfg.roulette_floor, cfg.max_intensity, seeds),
        crossover=TwoPointCrossover(prob=cfg.crossover_prob),
        mutation=RouletteMutation(rank, cfg.roulette_floor, cfg.mutation_rate),
        repair=repair,
        eliminate_duplicates=True,
        evaluator=Evaluator(evaluate_values_of=["F", "G", *EXTRA_VALUES]),
    )
    return NSGA2(**common) if cfg.algorithm == "nsga2" else GA(**common)


def generation_stats(algorithm, cfg: SearchConfig, problem: MaskSearchProblem) -> dict[str, float]:
    """Hypervolume (fixed reference point), front size and best accuracy within FLOPs budgets."""
    pop = algorithm.pop
    feasible = pop.get("CV")[:, 0] <= 0
    stats: dict[str, float] = {"n_eval": float(algorithm.evaluator.n_eval), "feasible": float(feasible.mean())}
    opt = algorithm.opt
    F = opt.get("F") if opt is not None and len(opt) else np.empty((0, problem.n_obj))
    F = F[opt.get("CV")[:, 0] <= 0] if len(F) else F
    stats["front_size"] = float(len(F))
    if problem.n_obj > 1:
        stats["hypervolume"] = float(HV(ref_point=np.full(problem.n_obj, cfg.hv_reference))(F)) if len(F) else 0.0
    accuracy = pop.get("accuracy")[:, -1]
    flops_ratio = pop.get("flops") / problem.layout.dense_flops
    for budget in cfg.budgets:
        within = flops_ratio <= budget
        stats[f"best_accuracy_at_{budget:g}_flops"] = float(accuracy[within].max()) if within.any() else 0.0
    return stats


def _switch_to_recovery(algorithm, problem: MaskSearchProblem, recovered_score, rescore: bool) -> None:
    """Score with ``recovered_score`` from now on; at the switch itself (``rescore``, a population already
    scored the old way) the population is scored again and re-ranked, so old and new candidates compete on one
    scale."""
    if problem.score is recovered_score:
        return
    problem.score = recovered_score
    if not (rescore and algorithm.is_initialized):
        return
    logger.info("mask_search: recovery fitness from generation %d on; scoring the population again", algorithm.n_iter)
    pop = algorithm.pop
    algorithm.evaluator.eval(problem, pop, skip_already_evaluated=False, count_evals=False)
    algorithm.pop = algorithm.survival.do(problem, pop, n_survive=len(pop), random_state=algorithm.random_state)
    algorithm.opt = filter_optimum(algorithm.pop, least_infeasible=True)


def _apply_checkpoint(checkpoint: Checkpoint, algorithm) -> tuple[list[dict], dict[str, list]]:
    """Put a checked checkpoint's population, counters and random state into a set-up algorithm.

    Returns: the per-generation statistics and the log of evaluated candidates so far.
    """
    arrays, meta = checkpoint.arrays, checkpoint.meta
    pop = Population.new(X=arrays["X"])
    for key in POPULATION_KEYS[1:]:
        if key in arrays:
            pop.set(key, arrays[key])
    pop.apply(lambda ind: ind.evaluated.update(["F", "G", "CV", *EXTRA_VALUES]))
    algorithm.pop, algorithm.off = pop, None
    algorithm.opt = filter_optimum(pop, least_infeasible=True)
    algorithm.n_iter, algorithm.is_initialized = meta["n_iter"], True
    algorithm.start_time = time.time()
    algorithm.evaluator.n_eval = meta["n_eval"]
    algorithm.random_state.bit_generator.state = meta["rng"]
    log = {k: [arrays[f"log_{k}"]] for k in LOG_KEYS}
    return meta["generations"], log


def _start_or_resume(
    algorithm, problem: MaskSearchProblem, folder: Path | None, key: str, on_bad: OnBadCheckpoint
) -> tuple[list[dict], dict[str, list]]:
    """Empty statistics and log for a fresh search, or those of this search's checkpoint in ``folder``
    (put into ``algorithm``)."""
    checkpoint = load_for_resume(folder, problem, key, on_bad) if folder is not None else None
    if checkpoint is None:
        return [], {k: [] for k in LOG_KEYS}
    generations, log = _apply_checkpoint(checkpoint, algorithm)
    logger.info("Resuming the mask search from %s after generation %d.", folder / CHECKPOINT_FILE, len(generations))
    return generations, log


def checkpoint_fingerprint(
    base: str | None, problem: MaskSearchProblem, cfg: SearchConfig, seed: int, seeds: np.ndarray | None
) -> str:
    """What a checkpoint must have been written by: the caller's fingerprint (model and data) combined with
    everything ``run_search`` itself knows (settings, seed, problem size and objectives, seed masks)."""
    payload = [base, cfg.model_dump(), seed, problem.n_var, list(problem.objectives), problem.max_accuracy_drop]
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    digest.update(problem.reference_accuracy.astype(np.float64).tobytes())
    if seeds is not None:
        digest.update(np.asarray(seeds, dtype=bool).tobytes())
    return digest.hexdigest()[:16]


def run_search(
    problem: MaskSearchProblem,
    cfg: SearchConfig,
    rank: np.ndarray,
    importance: np.ndarray,
    seed: int,
    checkpoint_dir: str | Path | None = None,
    stop_after: int | None = None,
    seeds: np.ndarray | None = None,
    fingerprint: str | None = None,
    on_bad_checkpoint: OnBadCheckpoint = "restart",
    recovered_score: Callable[[np.ndarray], np.ndarray] | None = None,
) -> SearchResult:
    """Run NSGA-II or GA generation by generation.

    Args:
        problem: the vectorised problem.
        cfg: the search configuration.
        rank, importance: per-bit importance rank (operators) and raw importance (repair).
        seed: drives pymoo's random generator (sampling, selection, crossover, mutation).
        checkpoint_dir: where state is saved (``state.npz``, atomically) every ``cfg.checkpoint_every``
            generations; a checkpoint of this search there is resumed, ending with the same front as an
            uninterrupted run.
        stop_after: stop after this many generations in total (simulates a killed run, for tests).
        seeds: masks put in the first population after the all-ones mask.
        fingerprint: the caller's fingerprint of what the scores depend on (model, data); combined with
            the settings, seed and problem, it must match the checkpoint's.
        on_bad_checkpoint: a checkpoint that is corrupt, torn, old or another search's: ``restart`` warns,
            moves it aside (``state.npz.bad``) and starts afresh; ``stop`` raises ``CheckpointError``.
        recovered_score: the problem's score from ``cfg.recovery_from`` generations on (needed when
            ``cfg.recovery.generations``); the population is scored again with it when it takes over.
    """
    if cfg.recovery_from is not None and recovered_score is None:
        raise ValueError("search.recovery.generations is set, but no recovered_score was given to run_search")
    min_units = problem.layout.min_units(cfg.max_pruning_ratio)
    repair = KeepUnitsPerLayer(problem.layout, importance, min_units, cfg.round_to, cfg.uncapped_below)
    algorithm = make_algorithm(cfg, rank, repair, seeds)
    algorithm.setup(problem, termination=("n_gen", cfg.generations), seed=seed, verbose=False)
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    ckpt_key = checkpoint_fingerprint(fingerprint, problem, cfg, seed, seeds)
    generations, log = _start_or_resume(algorithm, problem, ckpt, ckpt_key, on_bad_checkpoint)
    bar = tqdm(
        total=cfg.generations, initial=len(generations), desc=f"mask_search ({cfg.algorithm})", unit="gen", leave=False
    )
    # Count generations ourselves: a restored algorithm's termination object starts afresh, so
    # `has_next()` alone would run one generation too many after resuming a finished search.
    limit = cfg.generations if stop_after is None else min(stop_after, cfg.generations)
    while len(generations) < limit and algorithm.has_next():
        if cfg.recovery_from is not None and len(generations) >= cfg.recovery_from:
            _switch_to_recovery(algorithm, problem, recovered_score, rescore=len(generations) == cfg.recovery_from)
        algorithm.next()
        off = algorithm.off if algorithm.off is not None else algorithm.pop
        for key in ("X", "F", "G", "accuracy"):
            log[key].append(np.asarray(off.get(key)))
        log["generation"].append(np.full(len(off), algorithm.n_iter - 1))
        generations.append(generation_stats(algorithm, cfg, problem))
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in generations[-1].items() if k in ("hypervolume", "front_size")})
        if ckpt is not None and cfg.checkpoint_every and len(generations) % cfg.checkpoint_every == 0:
            save_checkpoint(ckpt, algorithm, generations, log, ckpt_key)
    bar.close()
    opt = algorithm.opt
    feasible = opt.get("CV")[:, 0] <= 0
    return SearchResult(
        front_X=opt.get("X")[feasible].astype(bool),
        front_F=opt.get("F")[feasible],
        front_accuracy=opt.get("accuracy")[feasible],
        evaluated_X=np.concatenate(log["X"]).astype(bool),
        evaluated_F=np.concatenate(log["F"]),
        evaluated_G=np.concatenate(log["G"]),
        evaluated_accuracy=np.concatenate(log["accuracy"]),
        evaluated_generation=np.concatenate(log["generation"]),
        generations=generations,
    )
