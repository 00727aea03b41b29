"""One entry point for a whole mask search on a trained network (what the Kedro node calls)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from torch import nn

from evoprune.core.atomic import is_temporary
from evoprune.core.baselines import mask_within_budget, random_allocations
from evoprune.core.exits import input_shape
from evoprune.core.importance import GroupL1, own_filter_l1
from evoprune.core.latency import LatencyModel, LatencySettings, latency_key
from evoprune.core.masking import mask_evaluator
from evoprune.core.search.checkpoint import CHECKPOINT_FILES, OnBadCheckpoint
from evoprune.core.search.distributed import DaskScorer, DistributedConfig, evaluator_recipe
from evoprune.core.search.operators import rank_within_layers
from evoprune.core.search.problem import LATENCY_OBJECTIVES, POLICY_OBJECTIVES, MaskSearchProblem, why_infeasible
from evoprune.core.search.recovery import recovered_accuracy
from evoprune.core.search.roulette_branch import RouletteBranchConfig, roulette_branch_search
from evoprune.core.search.run import SearchConfig, SearchResult, run_search
from evoprune.core.units import ChromosomeLayout, build_layout

logger = logging.getLogger(__name__)


@dataclass
class SearchOutcome:
    layout: ChromosomeLayout
    reference_accuracy: np.ndarray  # (E,) unpruned network on the validation subset
    result: SearchResult
    random_X: np.ndarray  # contrast: random masks over the same FLOPs range
    random_accuracy: np.ndarray
    roulette: dict[str, np.ndarray] | None
    seconds: float
    evaluations: int
    objectives: list[str]
    latency: LatencyModel | None = None  # the target's latency model, when one with tables was given

    def predicted_latency_ratio(self, X: np.ndarray) -> np.ndarray | None:
        """(K,) predicted latency of masks relative to the dense network's, or None without a latency model."""
        return None if self.latency is None else self.latency.ratio(self.layout, X)

    def cost_ratio(self, X: np.ndarray, axis: str = "flops_ratio") -> np.ndarray:
        """(K,) cost of masks relative to the dense network's on ``axis``: FLOPs, or the predicted latency (FLOPs
        when there is no latency model)."""
        latency = self.predicted_latency_ratio(X) if axis == "latency_ratio" else None
        return latency if latency is not None else self.layout.flops_ratio(X)

    def roulette_path(self, axis: str = "flops_ratio") -> tuple[list[float], list[float]] | None:
        """The roulette branch path as (FLOPs or predicted latency ratios, accuracies), or None when the
        branch did not run."""
        if self.roulette is None:
            return None
        cost = self.cost_ratio(self.roulette["path_X"], axis)
        return cost.tolist(), self.roulette["path_accuracy"].tolist()


def _hash_tensor(digest: Any, tensor: torch.Tensor | None) -> None:
    """Feed a tensor's dtype, shape and bytes (or a marker for None) into ``digest``."""
    if tensor is None:
        digest.update(b"none|")
        return
    value = tensor.detach().cpu().contiguous()
    digest.update(f"{value.dtype}|{tuple(value.shape)}|".encode())
    digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, bfloat16 included


def search_fingerprint(
    model: nn.Module,
    cfg: SearchConfig,
    seed: int,
    validation_split: dict[str, torch.Tensor],
    calibration_images: torch.Tensor | None,
    policy: tuple | None,
    device: torch.device | str = "cpu",
    latency: LatencyModel | None = None,
    recovery_split: dict[str, torch.Tensor] | None = None,
    seed_masks: np.ndarray | None = None,
) -> str:
    """16 hex digits naming everything a candidate's score depends on: every search setting, the seed, the
    early-exit policy, the model's spec and weights, the validation images and labels it is scored on, the
    calibration images of adaptive BatchNorm (their contents, not just their count) and the kind of device
    (CPU and CUDA kernels round differently). Another value of any of them gives another checkpoint folder,
    so an old front is never resumed on new inputs. A recovery search also depends on the training images and
    labels its candidates train on (``recovery_split``); a search seeded with another method's masks, on them
    (``seed_masks``: its checkpoints never overwrite the unseeded search's)."""
    kind = torch.device(device).type
    payload = [cfg.model_dump(), seed, getattr(model, "spec", None), policy, sorted(validation_split), kind]
    if latency is not None:  # a latency_ratio search depends on the tables it was scored with
        payload.append([latency.key, latency.intercept_ms, latency.slope, [t.ms.tolist() for t in latency.tables]])
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        _hash_tensor(digest, tensor)
    for name in sorted(validation_split):
        _hash_tensor(digest, validation_split[name])
    _hash_tensor(digest, calibration_images)
    for name in sorted(recovery_split or {}):
        _hash_tensor(digest, recovery_split[name])
    if seed_masks is not None:
        _hash_tensor(digest, torch.as_tensor(np.asarray(seed_masks, dtype=bool)))
    return digest.hexdigest()[:16]


def _branch_result(problem: MaskSearchProblem, branch: dict[str, np.ndarray]) -> SearchResult:
    """The roulette branch method's candidates as a search result: its front is their non-dominated
    feasible set under the problem's objectives."""
    X = np.vstack([branch["path_X"][:1], branch["X"]])
    out = problem.evaluate(X, return_values_of=["F", "G", "accuracy"], return_as_dictionary=True)
    feasible = np.flatnonzero((out["G"] <= 0).all(1))
    front = feasible[NonDominatedSorting().do(out["F"][feasible], only_non_dominated_front=True)]
    return SearchResult(
        front_X=X[front],
        front_F=out["F"][front],
        front_accuracy=out["accuracy"][front],
        evaluated_X=X,
        evaluated_F=out["F"],
        evaluated_G=out["G"],
        evaluated_accuracy=out["accuracy"],
        evaluated_generation=np.concatenate([[0], branch["level"]]).astype(int),
        generations=[],
    )


def _is_checkpoint_folder(folder: Path) -> bool:
    """A folder holding only a search checkpoint's files: ``state.npz`` (and the old layout's
    ``state.json``), a set-aside ``state.npz.bad``, or a temporary file a killed write left behind."""
    return folder.is_dir() and all(f.name in CHECKPOINT_FILES or is_temporary(f.name) for f in folder.iterdir())


def remove_old_checkpoints(current: Path, kept: int) -> list[Path]:
    """Delete the checkpoint folders beside ``current`` (other searches' fingerprints) except the
    ``kept - 1`` most recently written; ``current`` itself always stays. Only folders holding nothing but a
    checkpoint's files (``state.npz``, an old layout's ``state.json``, ``state.npz.bad``, temporary files
    of an interrupted write) are touched. Returns the folders deleted."""
    if kept < 1:
        raise ValueError(f"checkpoints_kept must be >= 1 (the running search's own), got {kept}")
    if not current.parent.is_dir():
        return []
    others = [d for d in current.parent.iterdir() if d.name != current.name and _is_checkpoint_folder(d)]
    others.sort(key=lambda d: max((f.stat().st_mtime for f in d.iterdir()), default=d.stat().st_mtime), reverse=True)
    removed = others[kept - 1 :]
    for d in removed:
        shutil.rmtree(d)
    return removed


def _recovery_split(
    cfg: SearchConfig, train_split: dict[str, torch.Tensor] | None, distributed: DistributedConfig | None
) -> dict[str, torch.Tensor] | None:
    """The training images and labels the recovery fitness reads (None when it is off), checked."""
    if not cfg.recovery.generations:
        return None
    if train_split is None:
        raise ValueError("search.recovery.generations is set: the search needs the training split (train_split)")
    if distributed is not None and distributed.scheduler is not None:
        raise ValueError(
            "search.recovery trains every candidate in this process; it does not run on Dask workers yet. Set "
            "mask_search.distributed.scheduler: null or search.recovery.generations: 0."
        )
    return {k: train_split[k][: cfg.recovery.images_needed()] for k in ("images", "labels")}


def _recovered(model, layout, recovery_split, validation_split, cfg: SearchConfig, device, seed):
    """The problem's score under the recovery fitness: every exit's accuracy after the recovery steps."""

    def score(X: np.ndarray) -> dict[str, np.ndarray]:
        accuracy = recovered_accuracy(model, layout, X, recovery_split, validation_split, cfg.recovery, device, seed)
        return {"accuracy": accuracy}

    return score


def _checked_seed_masks(seed_masks: np.ndarray, num_bits: int) -> np.ndarray:
    """``seed_masks`` as a boolean (n, num_bits) array, or a ValueError saying what is wrong with them."""
    masks = np.asarray(seed_masks)
    if masks.ndim != 2 or masks.shape[1] != num_bits:
        raise ValueError(
            f"seed masks must be (n, {num_bits}) unit masks of this network's layout, got shape {masks.shape}: they "
            "come from another network (re-run the method that made them on this one)."
        )
    if not np.isin(masks, (0, 1)).all():
        raise ValueError("seed masks must hold 0/1 (or boolean) keep bits.")
    return masks.astype(bool)


def _heuristic_seeds(
    model: nn.Module, layout: ChromosomeLayout, cfg: SearchConfig, seed: int, latency: LatencyModel | None = None
) -> np.ndarray:
    """The first population's masks from heuristics: global L1 at ``seed_with_l1`` budgets evenly spread over
    [0.1, 0.9], then ``seed_allocations`` random allocations (units by L1 within layers) at each of
    ``allocation_budgets`` (with ``allocation_pool`` > 1: the fastest for their FLOPs of that many times more, by
    the ``latency`` model); the per-layer cap binds at budgets from ``uncapped_below`` on, as for the baselines."""
    if cfg.allocation_pool > 1 and cfg.seed_allocations and latency is None:
        raise ValueError(
            f"search.allocation_pool ({cfg.allocation_pool}) keeps the allocations predicted fastest for their FLOPs: "
            "it needs the latency model's tables (run latency_profile), or set allocation_pool: 1."
        )
    seeds = [np.zeros((0, layout.num_bits), dtype=bool)]
    if not (cfg.seed_with_l1 or cfg.seed_allocations):
        return seeds[0]
    scores = GroupL1(input_shape(model))(model, layout)  # the l1 baseline's criterion

    def cap(budget: float) -> float:
        return cfg.max_pruning_ratio if budget >= cfg.uncapped_below else 1.0

    for budget in np.linspace(0.1, 0.9, cfg.seed_with_l1):
        seeds.append(mask_within_budget(layout, scores, budget, cap(budget), cfg.round_to)[None])
    rng = np.random.default_rng(seed)
    count = cfg.seed_allocations * cfg.allocation_pool
    for budget in cfg.allocation_budgets:  # seed_allocations 0: (0, num_bits) each
        pool = random_allocations(layout, scores, budget, count, rng, cap(budget), cfg.round_to)
        if latency is not None and cfg.allocation_pool > 1:
            share = layout.flops_ratio(pool) / latency.ratio(layout, pool)  # predicted speed-up / FLOPs reduction
            pool = pool[np.argsort(-share, kind="stable")[: cfg.seed_allocations]]
        seeds.append(pool)
    return np.vstack(seeds)


def search_pruning_masks(
    model: nn.Module,
    validation_split: dict[str, torch.Tensor],
    calibration_images: torch.Tensor | None,
    cfg: SearchConfig,
    seed: int,
    device: torch.device,
    random_masks: int = 0,
    roulette: RouletteBranchConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    policy: tuple[float, str] | None = None,
    checkpoints_kept: int = 3,
    on_bad_checkpoint: OnBadCheckpoint = "restart",
    distributed: DistributedConfig | None = None,
    latency: LatencyModel | None = None,
    latency_settings: LatencySettings | None = None,
    train_split: dict[str, torch.Tensor] | None = None,
    seed_masks: np.ndarray | None = None,
) -> SearchOutcome:
    """Layout, importance, exact sliced evaluator, then NSGA-II / GA (resumable) or the roulette branch
    method, random masks for contrast and, when configured, the roulette branch path for comparison.

    Args:
        policy: (threshold, criterion) of the early-exit policy, needed by the policy objectives.
        checkpoint_dir: checkpoints go to ``<checkpoint_dir>/<search_fingerprint(...)>/state.npz``.
        checkpoints_kept: searches (fingerprint folders under ``checkpoint_dir``) whose checkpoints are
            kept, this one included, most recently written first; older ones are deleted.
        on_bad_checkpoint: ``restart`` (warn, set the file aside, start afresh) or ``stop`` (raise
            ``CheckpointError``) on a corrupt, torn, old or foreign checkpoint.
        distributed: with a ``scheduler``, the populations of NSGA-II / GA are scored on Dask workers
            (``evoprune.core.search.distributed``); the random masks and the roulette branch stay here.
        latency: the target's latency model (``evoprune.core.latency``), for the ``latency_ratio`` objective
            (and the outcome's predicted latency); one without tables counts as none unless the objective
            needs it, which then fails saying why the network has no tables.
        latency_settings: the settings ``latency`` should have been measured with: its key is checked against
            them, this network and this device before searching (``LatencyKeyError`` on any difference).
        train_split: the training data of ``cfg.recovery`` (its first ``recovery.images_needed()`` images are
            read); needed when ``cfg.recovery.generations`` is set.
        seed_masks: (n, num_bits) unit masks another method found (e.g. dynamic sparse training's structured
            masks), put in NSGA-II's / GA's first population after the all-ones mask and the heuristic seeds
            (``_heuristic_seeds``).
    """
    if latency is not None and latency_settings is not None:
        latency.check_key(latency_key(model, latency_settings, device))
    timed = [o for o in cfg.objectives if o in LATENCY_OBJECTIVES]
    needs_latency = bool(timed) or cfg.min_speedup_share is not None
    if latency is not None and not latency.available:
        if timed:
            raise ValueError(f"the {' and '.join(timed)} objective needs latency tables: {latency.unavailable}")
        if cfg.min_speedup_share is not None:
            raise ValueError(f"search.min_speedup_share needs latency tables: {latency.unavailable}")
        latency = None
    layout = build_layout(model, input_shape(model))
    if cfg.max_flops_ratio is not None:  # one unit a layer is the least any mask keeps
        floor = layout.flops_ratio(layout.repair(np.zeros((1, layout.num_bits), dtype=bool)))
        if cfg.max_flops_ratio < floor[0]:
            raise ValueError(
                f"search.max_flops_ratio {cfg.max_flops_ratio} lies below what any mask of this network keeps "
                f"({floor[0]:.4f} of the FLOPs with one unit a layer): no candidate could be feasible. Raise it."
            )
    seed_masks = None if seed_masks is None else _checked_seed_masks(seed_masks, layout.num_bits)
    evaluator = mask_evaluator(model, layout, device, calibration_images, cfg.evaluator, cfg.precision)
    uses_policy = any(o in POLICY_OBJECTIVES for o in cfg.objectives)
    if uses_policy and (policy is None or not hasattr(model, "exit_heads")):
        raise ValueError(
            f"objectives {cfg.objectives} judge the early-exit policy: they need a multi-exit model and "
            "build_exits' operating point (run build_exits first, or choose error / mean_error / *_ratio objectives)."
        )
    policy = policy if uses_policy else None
    recovery_split = _recovery_split(cfg, train_split, distributed)

    scorer = (
        contextlib.nullcontext()
        if distributed is None or distributed.scheduler is None
        else DaskScorer(
            distributed,
            evaluator_recipe(model, validation_split, calibration_images, policy, device, cfg.evaluator, cfg.precision),
        )
    )
    with scorer as remote:  # None: score in this process

        def score(X: np.ndarray) -> dict[str, np.ndarray]:
            return remote(X) if remote is not None else evaluator.evaluate(X, validation_split, policy)

        importance = own_filter_l1(model, layout)  # drives the roulette wheel and the repair
        rank = rank_within_layers(importance, layout)
        reference = score(np.ones((1, layout.num_bits), dtype=bool))
        uses_latency = latency is not None and needs_latency
        predicted = (lambda X: latency.ratio(layout, X)) if uses_latency else None
        problem = MaskSearchProblem(
            layout, score, cfg.objectives, reference, cfg.max_accuracy_drop, predicted, cfg.min_speedup_share,
            cfg.max_flops_ratio,
        )  # fmt: skip
        fingerprint = None
        if checkpoint_dir is not None:
            fingerprint = search_fingerprint(
                model,
                cfg,
                seed,
                validation_split,
                calibration_images,
                policy,
                device,
                latency if uses_latency else None,
                recovery_split,
                seed_masks,
            )
            checkpoint_dir = Path(checkpoint_dir) / fingerprint
            remove_old_checkpoints(checkpoint_dir, checkpoints_kept)
        start = time.perf_counter()
        branch = None
        if roulette is not None or cfg.algorithm == "roulette":
            branch = roulette_branch_search(
                layout,
                lambda X: evaluator.accuracy(X, validation_split),
                rank,
                importance,
                float(reference["accuracy"][0, -1]),
                cfg.max_accuracy_drop,
                cfg.roulette_floor,
                roulette or RouletteBranchConfig(),
                seed,
            )
        if cfg.algorithm == "roulette":
            result = _branch_result(problem, branch)
        else:
            seeds = np.vstack(
                [_heuristic_seeds(model, layout, cfg, seed, latency), *([] if seed_masks is None else [seed_masks])]
            )
            result = run_search(
                problem,
                cfg,
                rank,
                importance,
                seed,
                checkpoint_dir,
                seeds=seeds if len(seeds) else None,
                fingerprint=fingerprint,
                on_bad_checkpoint=on_bad_checkpoint,
                recovered_score=None
                if recovery_split is None
                else _recovered(model, layout, recovery_split, validation_split, cfg, device, seed),
            )
        seconds = time.perf_counter() - start
    if not len(result.front_X):
        logger.warning(
            "mask_search: the search kept no feasible candidate (%s). Loosen the setting most candidates broke alone, "
            "or search longer (search.generations).", why_infeasible(problem.constraint_settings, result.evaluated_G),
        )  # fmt: skip
    rng = np.random.default_rng(seed + 1)
    keep = rng.uniform(0.15, 1.0, size=(random_masks, 1))
    random_X = layout.repair(rng.random((random_masks, layout.num_bits)) < keep, round_to=cfg.round_to, rng=rng)
    random_accuracy = (
        evaluator.accuracy(random_X, validation_split)
        if random_masks
        else np.empty((0, reference["accuracy"].shape[1]))
    )
    return SearchOutcome(
        layout,
        reference["accuracy"][0],
        result,
        random_X,
        random_accuracy,
        branch,
        seconds,
        len(result.evaluated_X),
        list(cfg.objectives),
        latency,
    )
