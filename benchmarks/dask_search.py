"""Population scoring in this process vs on Dask workers (mask_search.distributed), on one machine.

    .venv/bin/python benchmarks/dask_search.py                       # after `kedro run --pipeline=prune`
    .venv/bin/python benchmarks/dask_search.py --scheduler tcp://host:8786 --workers 8

Scores the same population of random masks (the search's scoring function, adaptive BN off) serially and
on 1 and 2 local workers (or on a running scheduler), checks that every score is identical to the serial
one with the same torch threads per scorer, and prints masks/s and the ratio to the serial run. Worker
start-up (spawning processes, importing torch, rebuilding the evaluator) is timed apart: a search pays it
once, not per generation.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from evoprune.core.masking import SlicedEvaluator
from evoprune.core.models.adapter import input_shape
from evoprune.core.search.distributed import DaskScorer, DistributedConfig, evaluator_recipe
from evoprune.core.units import build_layout
from evoprune.datasets import TensorDictDataset, TorchModelDataset


def _timed(fn, repeats: int) -> tuple[float, dict]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="data/06_models/multi_exit_model.pt")
    parser.add_argument("--data", default="data/05_model_input/fashion_mnist_validation.pt")
    parser.add_argument("--images", type=int, default=2000, help="validation images per candidate")
    parser.add_argument("--population", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scheduler", default="local", help="local or a tcp:// address")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    model = TorchModelDataset(filepath=args.model).load().eval()
    split = {k: v[: args.images] for k, v in TensorDictDataset(filepath=args.data).load().items()}
    layout = build_layout(model, input_shape(model))
    rng = np.random.default_rng(0)
    X = layout.repair(rng.random((args.population, layout.num_bits)) < rng.uniform(0.2, 1.0, (args.population, 1)))
    cores = torch.get_num_threads()
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, {cores} threads here")
    print(f"# {args.population} masks x {args.images} images, best of {args.repeats}; scheduler {args.scheduler}")
    rows, reference = [], {}
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        evaluator = SlicedEvaluator(model, layout, torch.device("cpu"))
        seconds, out = _timed(lambda ev=evaluator: ev.evaluate(X, split), args.repeats)
        reference[threads] = out["accuracy"]
        rows.append((f"this process, {threads} thread(s)", seconds, "", "reference"))
    torch.set_num_threads(cores)
    serial = rows[-1][1]
    recipe = evaluator_recipe(model, split, None, None)
    for workers in args.workers:
        cfg = DistributedConfig(scheduler=args.scheduler, workers=workers, threads_per_worker=1)
        start = time.perf_counter()
        with DaskScorer(cfg, recipe) as score:
            score(X[:workers])  # workers start, fetch the recipe and rebuild the evaluator
            startup = time.perf_counter() - start
            seconds, out = _timed(lambda s=score: s(X), args.repeats)
        same = np.array_equal(out["accuracy"], reference[1])
        rows.append(
            (f"Dask, {workers} worker(s) x 1 thread", seconds, f"{startup:.1f}", "identical" if same else "DIFFERS")
        )
    print(
        "| scorer | s per population | masks/s | vs this process (all threads) | start-up s | scores vs 1-thread serial |"
    )
    print("|---|---|---|---|---|---|")
    for name, seconds, startup, same in rows:
        print(f"| {name} | {seconds:.2f} | {len(X) / seconds:.1f} | {serial / seconds:.2f}x | {startup} | {same} |")


if __name__ == "__main__":
    main()
