"""How many fine-tunes at once (``finetune.parallel``): wall time of the same fine-tunes one after another in this
process and side by side in worker processes, ratios measured in one run.

    .venv/bin/python benchmarks/finetune_workers.py --data data --jobs 3 6 --epochs 1   # after `make prune`

The fine-tunes are those of a default `prune` node: the front member nearest ``--budget`` of the FLOPs (and its
neighbours on the front for further jobs), `keep` weights, finetune.training of conf/base with ``--epochs``.
Each setting runs the same jobs; the wall time includes starting the workers (the first pool of a process also
starts the fork server: run with ``--warm`` to time it apart).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from run_outputs import run_splits, search_outputs

from evoprune.core.exits import input_shape
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.finetune_pool import FinetuneInputs, FinetuneJob, ParallelParams, finetune_jobs
from evoprune.core.mask_codec import decode_masks
from evoprune.core.units import build_layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data", help="outputs folder of a `prune` run")
    parser.add_argument("--jobs", type=int, nargs="+", default=[3, 6], help="fine-tunes per call")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--budget", type=float, default=0.25, help="FLOPs ratio of the first member")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 3, 6])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of the serial run")
    parser.add_argument("--warm", action="store_true", help="start the fork server before timing")
    args = parser.parse_args()

    trained, initial, front = search_outputs(args.data)
    train_split, validation_split = run_splits(args.data, "train", "validation")
    layout = build_layout(trained, input_shape(trained))
    masks = decode_masks(front["mask"], layout.num_bits)
    order = np.argsort(np.abs(layout.flops_ratio(masks) - args.budget), kind="stable")
    params = FinetuneParams()
    cfg = params.training.model_copy(update={"epochs": args.epochs})
    inputs = FinetuneInputs(
        trained, initial, layout, train_split, validation_split, cfg, params.exit_loss_weights(trained),
        torch.device("cpu"),
    )  # fmt: skip
    torch.set_num_threads(args.threads)
    if args.warm:
        finetune_jobs(inputs, [FinetuneJob(masks[order[0]], "keep", 0, "warm-up")] * 2, ParallelParams(workers=2))
    print(
        f"{len(train_split['labels'])} images, {args.epochs} epoch(s) per fine-tune; serial on {args.threads} threads"
    )
    print("| fine-tunes | how | wall s | s per fine-tune | vs serial |")
    print("|---|---|---|---|---|")
    for count in args.jobs:
        jobs = [FinetuneJob(masks[order[k % len(order)]], "keep", 42 + k, f"job {k}") for k in range(count)]
        settings = [("serial", ParallelParams(workers=1))]
        settings += [(f"{w} workers x 1 thread", ParallelParams(workers=w)) for w in args.workers if w <= count]
        serial = None
        for name, parallel in settings:
            start = time.perf_counter()
            finetune_jobs(inputs, jobs, parallel)
            wall = time.perf_counter() - start
            serial = serial or wall
            print(f"| {count} | {name} | {wall:.1f} | {wall / count:.1f} | {serial / wall:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
