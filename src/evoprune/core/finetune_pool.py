"""Fine-tunes side by side in worker processes (``finetune.parallel``).

A pruned LeNet-5 is too small to keep the cores of a CPU busy: its convolutions have a few channels, and a
second torch thread speeds one fine-tune up far less than twice. Several fine-tunes, each on one thread in its
own process, use the cores better (``benchmarks/finetune_workers.py`` prints the table). Every node that
fine-tunes more than one network (member selection, the re-init variants, the baselines, the other methods)
hands its fine-tunes to ``finetune_jobs``.

Reproducible: with ``workers > 1`` every fine-tune runs on ``threads_per_worker`` torch threads, whichever worker
runs it and however many fine-tunes a call has (a single one runs in this process on as many threads), so the
same seed on the same machine gives the same networks. Workers receive the networks as spec + serialised
state_dict (no pickled modules, loaded with ``weights_only=True``) and the data once, through shared memory; they
start from a fork server that imported the project once per Python process, so a pool costs about a second after
the first. Measuring (latency timing) stays in the calling process, after the workers are gone. On CUDA the
fine-tunes run one after another here.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as torch_mp
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn
from tqdm.auto import tqdm

from evoprune.core.exits import build_network
from evoprune.core.finetune import pruned_variant
from evoprune.core.masking import prune_physically
from evoprune.core.models.adapter import input_shape, model_spec
from evoprune.core.train import TrainConfig, TrainingExtras, train
from evoprune.core.units import ChromosomeLayout

Split = dict[str, torch.Tensor]
logger = logging.getLogger(__name__)


class ParallelParams(BaseModel):
    """How many fine-tunes run at once (conf/base/parameters_finetune.yml, ``finetune.parallel``)."""

    model_config = ConfigDict(extra="forbid")

    # processes fine-tuning at once; 1: one after another in this process, on its torch threads
    workers: PositiveInt = 3
    threads_per_worker: PositiveInt = 1  # torch threads of each fine-tune when workers > 1

    def threads(self, device: torch.device | str) -> int:
        """The torch threads a fine-tune on ``device`` runs on under these settings (part of what decides it)."""
        if self.workers > 1 and torch.device(device).type == "cpu":
            return self.threads_per_worker
        return torch.get_num_threads()


@dataclass(frozen=True)
class FinetuneJob:
    """One fine-tune: a mask of the shared trained network, its weights and its seed."""

    mask: np.ndarray
    variant: str | None  # re-init variant (core/reinit.py); None: the trained weights pruned as they are
    seed: int
    description: str  # progress and log label


@dataclass(frozen=True)
class FinetuneInputs:
    """What every job of one call shares."""

    trained: nn.Module
    initial: nn.Module | None  # θ0 (variants other than keep need it)
    layout: ChromosomeLayout
    train_split: Split
    validation_split: Split | None
    cfg: TrainConfig
    loss_weights: list[float] | None
    device: torch.device


def run_job(inputs: FinetuneInputs, job: FinetuneJob, progress: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The pruned, fine-tuned network of ``job`` (on CPU, eval mode) and its training history."""
    if job.variant is None:
        model = prune_physically(inputs.trained, inputs.layout, job.mask, input_shape(inputs.trained))
    else:
        model = pruned_variant(inputs.trained, inputs.initial, inputs.layout, job.mask, job.variant, job.seed)
    history = train(
        model, inputs.train_split, inputs.validation_split, inputs.cfg, inputs.device, job.seed, job.description,
        inputs.loss_weights, TrainingExtras(progress=progress),
    )  # fmt: skip
    return model.cpu().eval(), history


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def finetune_jobs(
    inputs: FinetuneInputs, jobs: Sequence[FinetuneJob], parallel: ParallelParams
) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Every job's pruned, fine-tuned network and history, in the order of ``jobs``.

    Raises:
        RuntimeError: a worker process died (killed, out of memory); names the fix.
    """
    if not jobs:
        return []
    if parallel.workers == 1 or inputs.device.type != "cpu":
        if parallel.workers > 1:
            logger.info("finetune.parallel: %d workers apply on CPU only; fine-tuning one after another on %s",
                        parallel.workers, inputs.device)  # fmt: skip
        return [run_job(inputs, job) for job in jobs]
    threads = parallel.threads(inputs.device)
    if len(jobs) == 1:
        with _torch_threads(threads):
            return [run_job(inputs, jobs[0])]
    workers = min(parallel.workers, len(jobs))
    recipe = _recipe(inputs)
    context = _context()
    label = f"{len(jobs)} fine-tunes, {workers} workers x {threads} thread{'s' * (threads > 1)}"
    try:
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(recipe, threads)
        ) as pool:
            results = list(tqdm(pool.map(_run_in_worker, jobs), total=len(jobs), desc=label, unit="fine-tune"))
    except (BrokenProcessPool, BrokenPipeError) as error:  # the latter: one died while its start was being sent
        raise RuntimeError(
            f"a fine-tune worker process died ({label}), e.g. killed or out of memory. Lower "
            "finetune.parallel.workers, or set it to 1 to fine-tune in this process."
        ) from error
    for job, (_, history) in zip(jobs, results, strict=True):
        logger.info("%s: %.1f s in a worker", job.description, history["train_seconds"])
    return results


# --- worker side -------------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


Portable = tuple[dict[str, Any], bytes]  # a network as spec + its state_dict serialised by torch.save


def _recipe(inputs: FinetuneInputs) -> tuple[FinetuneInputs, Portable, Portable | None]:
    """``inputs`` for a worker: the networks apart as spec + serialised state_dict (no pickled modules), the rest
    as it is, on CPU (the splits' few tensors go through shared memory).

    A state_dict's tensors are not shared one by one: each would be a file descriptor handed to the fork server
    with the worker's start, and it accepts at most 256 (a multi-exit ResNet-20 and its θ0 hold 272 tensors:
    "ValueError: too many fds"). One bytes object per network is copied instead; networks are small next to data.
    """

    def portable(model: nn.Module | None) -> Portable | None:
        if model is None:
            return None
        buffer = io.BytesIO()
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buffer)
        return model_spec(model), buffer.getvalue()

    shared = replace(inputs, trained=None, initial=None, device=torch.device("cpu"))
    return shared, portable(inputs.trained), portable(inputs.initial)


def _rebuilt(portable: Portable | None) -> nn.Module | None:
    if portable is None:
        return None
    spec, state = portable
    model = build_network(spec)
    model.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
    return model.eval()


def _start_worker(recipe: tuple[FinetuneInputs, Portable, Portable | None], threads: int) -> None:
    torch.set_num_threads(threads)
    shared, trained, initial = recipe
    _WORKER["inputs"] = replace(shared, trained=_rebuilt(trained), initial=_rebuilt(initial))


def _run_in_worker(job: FinetuneJob) -> tuple[nn.Module, dict[str, Any]]:
    return run_job(_WORKER["inputs"], job, progress=False)  # one bar in the calling process, none per worker


def _context() -> torch_mp.context.BaseContext:
    """A fork server that imported this module once: workers fork from it and start in about a second (where
    there is no fork server, on Windows, workers are spawned: each imports the project itself)."""
    if "forkserver" not in torch_mp.get_all_start_methods():
        return torch_mp.get_context("spawn")
    context = torch_mp.get_context("forkserver")
    # not "__main__": CPython 3.11's fork server never preloads a main script (it looks for a key that
    # get_preparation_data does not write), so each worker imports it (`kedro`: about a second, one log line)
    context.set_forkserver_preload([__name__])
    return context
