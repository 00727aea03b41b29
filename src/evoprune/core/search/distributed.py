"""Scoring a search's population on Dask workers (``mask_search.distributed``).

pymoo's parallel runners (``StarmapParallelization``, ``DaskParallelization``) serve elementwise problems
only; the mask search's problem is vectorised, so its ``_evaluate`` hands the whole population to one
scoring function. ``DaskScorer`` is such a function: it splits the population into one chunk per worker,
scores the chunks on the workers and joins the results in population order.

Every worker rebuilds the sliced evaluator once, from the model's spec + state_dict and the images it
scores on (one task's result, which the workers fetch once); later chunks reuse it.
A worker that dies mid-chunk has its chunk re-run elsewhere by Dask's scheduler (``allowed_failures``),
and a chunk that raises is retried (``retries``); each candidate's score depends only on its own mask, so
the front is the same as the serial search's when the workers use as many torch threads as the serial
run (float sums are reordered by other thread counts, which may flip a near-tie).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt
from torch import nn

from evoprune.core.exits import build_network
from evoprune.core.masking import LSTMEvaluator, SlicedEvaluator, TiledEvaluator, mask_evaluator
from evoprune.core.models.adapter import input_shape, model_spec
from evoprune.core.units import build_layout

logger = logging.getLogger(__name__)


class DistributedConfig(BaseModel):
    """conf/base/parameters_mask_search.yml, key ``mask_search.distributed``."""

    model_config = ConfigDict(extra="forbid")

    # null: score in this process | local: start a LocalCluster of `workers` processes on this machine |
    # "tcp://host:8786": a running scheduler (`dask scheduler`, then `dask worker tcp://host:8786` per machine)
    scheduler: str | None = None
    workers: PositiveInt = 2  # local: worker processes started; remote: at most this many chunks per population
    threads_per_worker: PositiveInt = 1  # torch threads in each worker (torch.set_num_threads)
    connect_timeout_s: PositiveFloat = 10.0  # an unreachable scheduler fails after this long
    retries: int = Field(2, ge=0)  # re-runs of a chunk that raised (a dead worker's chunk is re-run anyway)


class DistributedError(RuntimeError):
    """The Dask scheduler cannot be reached or its workers cannot score."""


@dataclass(frozen=True)
class EvaluatorRecipe:
    """What a worker needs to rebuild the sliced evaluator: no pickled modules, only spec + tensors."""

    key: str  # digest of everything below: a worker's cached evaluator is reused only for the same recipe
    spec: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    validation_split: dict[str, torch.Tensor]
    calibration_images: torch.Tensor | None
    policy: tuple[float, str] | None
    device: str
    evaluator: str = "auto"  # core.masking.mask_evaluator's kind
    precision: str = "float32"


def evaluator_recipe(
    model: nn.Module,
    validation_split: dict[str, torch.Tensor],
    calibration_images: torch.Tensor | None,
    policy: tuple[float, str] | None,
    device: torch.device | str = "cpu",
    evaluator: str = "auto",
    precision: str = "float32",
) -> EvaluatorRecipe:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = hashlib.sha256(repr((model_spec(model), policy, str(device), evaluator, precision)).encode())
    tensors = [*state.values(), *validation_split.values()]
    tensors += [calibration_images] if calibration_images is not None else []
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return EvaluatorRecipe(
        digest.hexdigest()[:16],
        model_spec(model),
        state,
        {k: v.cpu() for k, v in validation_split.items()},
        None if calibration_images is None else calibration_images.cpu(),
        policy,
        str(device),
        evaluator,
        precision,
    )


_WORKER_EVALUATOR: dict[
    str, SlicedEvaluator | TiledEvaluator | LSTMEvaluator
] = {}  # one per worker process: the latest recipe's


def _worker_evaluator(recipe: EvaluatorRecipe) -> SlicedEvaluator | TiledEvaluator | LSTMEvaluator:
    if recipe.key not in _WORKER_EVALUATOR:
        _WORKER_EVALUATOR.clear()
        model = build_network(recipe.spec)
        model.load_state_dict(recipe.state_dict)
        model.eval()
        layout = build_layout(model, input_shape(model))
        _WORKER_EVALUATOR[recipe.key] = mask_evaluator(
            model, layout, torch.device(recipe.device), recipe.calibration_images, recipe.evaluator, recipe.precision
        )
    return _WORKER_EVALUATOR[recipe.key]


def score_chunk(recipe: EvaluatorRecipe, masks: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    """Scores of a chunk of masks (runs on a worker)."""
    torch.set_num_threads(threads)
    evaluator = _worker_evaluator(recipe)
    return evaluator.evaluate(masks, recipe.validation_split, recipe.policy)


def _recipe(recipe: EvaluatorRecipe) -> EvaluatorRecipe:
    return recipe


class DaskScorer:
    """A population scoring function backed by Dask workers; use as a context manager::

    with DaskScorer(cfg, recipe) as score:
        scores = score(X)  # {"accuracy": (K, E), ...}, like SlicedEvaluator.evaluate
    """

    def __init__(self, cfg: DistributedConfig, recipe: EvaluatorRecipe) -> None:
        if cfg.scheduler is None:
            raise ValueError("DaskScorer needs mask_search.distributed.scheduler: local or a tcp:// address")
        self.cfg, self.recipe = cfg, recipe
        self.cluster: Any = None
        self.client: Any = None
        self._recipe_future: Any = None

    def __enter__(self) -> DaskScorer:
        from distributed import Client, LocalCluster

        cfg = self.cfg
        try:
            if cfg.scheduler == "local":
                self.cluster = LocalCluster(
                    n_workers=cfg.workers, threads_per_worker=1, processes=True, dashboard_address=None
                )
                self.client = Client(self.cluster, timeout=cfg.connect_timeout_s)
            else:
                self.client = Client(cfg.scheduler, timeout=cfg.connect_timeout_s)
        except (OSError, TimeoutError) as error:
            self.close()
            raise DistributedError(
                f"cannot reach the Dask scheduler at {cfg.scheduler!r} within {cfg.connect_timeout_s:g} s ({error}). "
                "Start one (`dask scheduler`, then `dask worker <address>` on each machine), or set "
                "mask_search.distributed.scheduler to local (workers on this machine) or null (no Dask)."
            ) from error
        workers = len(self.client.scheduler_info().get("workers", {}))
        if cfg.scheduler != "local" and not workers:
            self.client.wait_for_workers(1, timeout=cfg.connect_timeout_s)
        logger.info("mask_search: scoring on Dask at %s (%s)", self.client.scheduler.address, self.client)
        # The recipe as a task's result, not scattered data: when the worker that holds it dies, the
        # scheduler recomputes it from the task (scattered data would be lost for good).
        self._recipe_future = self.client.submit(_recipe, self.recipe, pure=False)
        return self

    def __call__(self, X: np.ndarray) -> dict[str, np.ndarray]:
        chunks = [c for c in np.array_split(np.asarray(X, dtype=bool), min(self.cfg.workers, len(X))) if len(c)]
        futures = [
            self.client.submit(
                score_chunk,
                self._recipe_future,
                chunk,
                self.cfg.threads_per_worker,
                pure=False,
                retries=self.cfg.retries,
            )
            for chunk in chunks
        ]
        results = self.client.gather(futures)
        return {key: np.concatenate([r[key] for r in results]) for key in results[0]}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    def __exit__(self, *exc: object) -> None:
        self.close()
