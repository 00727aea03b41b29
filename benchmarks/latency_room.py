"""How much can a latency objective gain over a FLOPs objective? The spread of predicted latency among pruned
networks of equal FLOPs (issue 17: "the member chosen on the latency front is measured >= 1.2x faster than the
member chosen on the FLOPs front, at equal accuracy after fine-tuning").

    .venv/bin/python benchmarks/latency_room.py --data data --round-to 1            # after `kedro run --pipeline=prune`
    .venv/bin/python benchmarks/latency_room.py --data data/resnet --round-to 8     # after `--env=resnet`

Equal accuracy after fine-tuning means about equal FLOPs, so the gain is bounded by how far apart the predicted
latencies of networks with the same FLOPs lie. Draws ``--masks`` random masks the way the latency profile draws
its calibration masks (``latency.calibration_masks``, rounded like the search), predicts each latency ratio with
the run's own ``latency_model.pt`` and prints, per FLOPs bin, the min / median / max predicted latency ratio, with
max/min (the most any objective could gain within the bin) and median/min (the gain over a typical network).
No timing runs: the tables were measured by the run's ``latency_profile`` node.
"""

from __future__ import annotations

import argparse

import numpy as np

from evoprune.core.exits import input_shape
from evoprune.core.latency import calibration_masks
from evoprune.core.units import build_layout
from evoprune.datasets import LatencyModelDataset, TorchModelDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data", help="the prune run's outputs folder")
    parser.add_argument("--round-to", type=int, default=1, help="as mask_search.search.round_to of that run")
    parser.add_argument("--masks", type=int, default=20000)
    parser.add_argument("--bin", type=float, default=0.05, help="width of a FLOPs bin (ratio of the dense FLOPs)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    network = TorchModelDataset(filepath=f"{args.data}/06_models/multi_exit_model.pt").load().eval()
    latency = LatencyModelDataset(filepath=f"{args.data}/06_models/latency_model.pt").load()
    layout = build_layout(network, input_shape(network))
    masks = calibration_masks(layout, args.masks, args.seed, args.round_to)
    flops, predicted = layout.flops_ratio(masks), latency.ratio(layout, masks)
    print(f"# {args.data}: {args.masks} random masks (round_to {args.round_to}), predicted latency ratio")
    print("| FLOPs bin | masks | min | median | max | max/min | median/min |\n|---|---|---|---|---|---|---|")
    for low in np.arange(0.0, 1.0, args.bin):
        inside = predicted[(flops >= low) & (flops < low + args.bin)]
        if inside.size >= 5:
            lo, mid, hi = inside.min(), np.median(inside), inside.max()
            print(
                f"| {100 * low:.0f}-{100 * (low + args.bin):.0f}% | {inside.size} | {lo:.3f} | {mid:.3f} | {hi:.3f} "
                f"| {hi / lo:.2f} | {mid / lo:.2f} |"
            )


if __name__ == "__main__":
    main()
