"""One entry point for a whole mask search on a trained network (what the Kedro node calls)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from evoprune.core.masking import SlicedEvaluator
from evoprune.core.search.operators import l1_importance, rank_within_layers
from evoprune.core.search.problem import MaskSearchProblem
from evoprune.core.search.roulette_branch import RouletteBranchConfig, roulette_branch_search
from evoprune.core.search.run import SearchConfig, SearchResult, run_search
from evoprune.core.units import ChromosomeLayout, build_layout


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


def _fingerprint(model: nn.Module, cfg: SearchConfig, seed: int, n_val: int) -> str:
    digest = hashlib.sha256(
        json.dumps([cfg.model_dump(), seed, n_val, getattr(model, "spec", None)], sort_keys=True, default=str).encode()
    )
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


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
) -> SearchOutcome:
    """Layout, importance, batched evaluator, then NSGA-II/GA (resumable), random contrast masks and,
    optionally, the roulette branch method on the same evaluator."""
    spec = model.backbone.spec if hasattr(model, "backbone") else model.spec
    layout = build_layout(model, (spec["in_channels"], spec["input_size"], spec["input_size"]))
    evaluator = SlicedEvaluator(model, layout, device, calibration_images)
    importance = l1_importance(model, layout)
    rank = rank_within_layers(importance, layout)
    reference = evaluator.accuracy(np.ones((1, layout.num_bits), dtype=bool), validation_split)[0]
    problem = MaskSearchProblem(
        layout, lambda X: evaluator.accuracy(X, validation_split), cfg.objectives, reference, cfg.max_accuracy_drop
    )
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir) / _fingerprint(model, cfg, seed, int(validation_split["labels"].numel()))
    start = time.perf_counter()
    result = run_search(problem, cfg, rank, importance, seed, checkpoint_dir)
    seconds = time.perf_counter() - start
    rng = np.random.default_rng(seed + 1)
    keep = rng.uniform(0.15, 1.0, size=(random_masks, 1))
    random_X = layout.repair(rng.random((random_masks, layout.num_bits)) < keep)
    random_accuracy = evaluator.accuracy(random_X, validation_split) if random_masks else np.empty((0, len(reference)))
    branch = None
    if roulette is not None:
        branch = roulette_branch_search(
            layout,
            lambda X: evaluator.accuracy(X, validation_split),
            rank,
            importance,
            float(reference[-1]),
            cfg.max_accuracy_drop,
            cfg.roulette_floor,
            roulette,
            seed,
        )
    return SearchOutcome(layout, reference, result, random_X, random_accuracy, branch, seconds, len(result.evaluated_X))
