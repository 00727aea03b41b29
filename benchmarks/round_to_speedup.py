"""How much of a FLOPs reduction turns into CPU speed-up, by ``round_to``? (issue 11: "its measured CPU speed-up at
batch 256 is >= 0.7 x its FLOPs reduction")

    .venv/bin/python benchmarks/round_to_speedup.py --env resnet --budget 0.39 --round-to 1 4 8

Builds the dense multi-exit network of ``--env`` (as ``latency_prediction.py`` does: the configuration's
architecture; timings do not depend on the weights), then for each ``--round-to`` draws ``--masks`` masks within
``--budget`` of the FLOPs the way the random baseline prunes (``mask_within_budget`` on random scores, the
configuration's ``max_pruning_ratio``, that ``round_to``) and times each physically pruned network alternately with
the dense one (``measure_masks_ms``: batch ``--batch-size``, channels_last, the process's torch threads,
``--repeats`` pairs). Prints per mask its FLOPs, the channels kept per group, the speed-up (median of dense / pruned
over the pairs) and the speed-up over the FLOPs reduction (1 / FLOPs ratio). ``--allocations`` times given channel
counts per group as well (``--round-to`` with no value: only those).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from latency_prediction import _network
from run_outputs import run_parameters

from evoprune.core.baselines import mask_within_budget
from evoprune.core.latency import LatencySettings, measure_masks_ms
from evoprune.core.models.adapter import input_shape
from evoprune.core.units import build_layout
from evoprune.pipelines.mask_search.nodes import MaskSearchParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="resnet", help="the configuration whose network is timed")
    parser.add_argument("--budget", type=float, default=0.39, help="FLOPs ratio of the dense network")
    parser.add_argument("--round-to", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--masks", type=int, default=4, help="masks per round_to")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--allocations", nargs="*", default=[], help="also time these channel counts per group, e.g. 8,16,8,8,..."
    )
    args = parser.parse_args()
    network = _network(args.env)
    layout = build_layout(network, input_shape(network))
    cap = MaskSearchParams.model_validate(run_parameters(args.env)["mask_search"]).search.max_pruning_ratio
    settings = LatencySettings(batch_size=args.batch_size, threads=None, repeats=args.repeats)
    cpu = torch.device("cpu")
    print(f"# {args.env}: {type(network).__name__}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"# groups: {', '.join(f'{g.name} ({g.size})' for g in layout.groups)}; max_pruning_ratio {cap}")
    print("| round_to | mask | FLOPs % | units per group | speed-up | speed-up / FLOPs reduction |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(args.seed)
    for round_to in args.round_to:
        masks = np.stack(
            [
                mask_within_budget(layout, rng.random(layout.num_bits), args.budget, cap, round_to)
                for _ in range(args.masks)
            ]
        )
        flops = layout.flops_ratio(masks)
        speedups = 1.0 / measure_masks_ms(network, layout, masks, settings, cpu).ratio
        for k, (mask, f, s) in enumerate(zip(masks, flops, speedups, strict=True)):
            counts = ",".join(map(str, layout.units_kept(mask)))
            print(f"| {round_to} | {k + 1} | {100 * f:.1f} | {counts} | {s:.2f}x | {s * f:.2f} |", flush=True)
        shares = [s * f for s, f in zip(speedups, flops, strict=True)]
        print(f"| {round_to} | median | | | {statistics.median(speedups):.2f}x | {statistics.median(shares):.2f} |")
    if args.allocations:  # timings do not depend on which units are kept: the first ones of each group
        masks = np.stack([layout.mask_with_counts([int(c) for c in a.split(",")], np.zeros(layout.num_bits))
                          for a in args.allocations])  # fmt: skip
        speedups = 1.0 / measure_masks_ms(network, layout, masks, settings, cpu).ratio
        for counts, f, s in zip(args.allocations, layout.flops_ratio(masks), speedups, strict=True):
            print(f"| given | | {100 * f:.1f} | {counts} | {s:.2f}x | {s * f:.2f} |", flush=True)


if __name__ == "__main__":
    main()
