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

With ``--time-top K --max-flops F`` it then times, paired with the dense network, the K masks within F of the FLOPs
whose predicted speed-up is the largest share of their FLOPs reduction (FLOPs ratio / predicted latency ratio, what
``mask_search.min_speedup_share`` asks of members), at ``--batch-size`` with ``--threads`` torch threads (default: the process's, as the report's speed-ups are timed):
how close to a speed-up of 0.7 x the FLOPs reduction any network of that FLOPs gets on this machine (issue 11).

    .venv/bin/python benchmarks/latency_room.py --data data/resnet --round-to 8 --time-top 8 --max-flops 0.4 \
        --batch-size 256
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from evoprune.core.exits import input_shape
from evoprune.core.latency import LatencySettings, calibration_masks, measure_masks_ms
from evoprune.core.units import build_layout
from evoprune.datasets import LatencyModelDataset, TorchModelDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data", help="the prune run's outputs folder")
    parser.add_argument("--round-to", type=int, default=1, help="as mask_search.search.round_to of that run")
    parser.add_argument("--masks", type=int, default=20000)
    parser.add_argument("--bin", type=float, default=0.05, help="width of a FLOPs bin (ratio of the dense FLOPs)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-top", type=int, default=0, help="time the K masks of best predicted share")
    parser.add_argument("--max-flops", type=float, default=0.4, help="with --time-top: FLOPs ratio at most")
    parser.add_argument("--batch-size", type=int, default=256, help="with --time-top")
    parser.add_argument("--threads", type=int, default=None, help="with --time-top (default: the process's)")
    parser.add_argument("--repeats", type=int, default=11, help="with --time-top: pairs per mask (median)")
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
    if args.time_top:
        time_best_shares(network, layout, masks, flops / predicted, args)


def time_best_shares(network, layout, masks: np.ndarray, shares: np.ndarray, args: argparse.Namespace) -> None:
    """Time the ``--time-top`` masks of best predicted share (``shares``) within ``--max-flops``."""
    inside = np.flatnonzero(layout.flops_ratio(masks) <= args.max_flops)
    if inside.size == 0:
        raise SystemExit(f"no random mask keeps at most {args.max_flops} of the FLOPs: draw more (--masks)")
    best = inside[np.argsort(-shares[inside])[: args.time_top]]
    timed, flops = masks[best], layout.flops_ratio(masks[best])
    settings = LatencySettings(batch_size=args.batch_size, threads=args.threads, repeats=args.repeats)
    measured = measure_masks_ms(network, layout, timed, settings, torch.device("cpu"))
    threads = args.threads or torch.get_num_threads()
    print(f"\n# timed at batch {args.batch_size}, {threads} torch threads, paired with the dense network "
          f"({measured.dense_ms:.1f} ms); share = speed-up / FLOPs reduction")  # fmt: skip
    print(
        "| network | units per group | FLOPs | predicted share | speed-up | measured share |\n|---|---|---|---|---|---|"
    )
    for k, (mask, f, share, r) in enumerate(zip(timed, flops, shares[best], measured.ratio, strict=True)):
        counts = ",".join(map(str, layout.units_kept(mask)))
        print(f"| top {k + 1} | {counts} | {100 * f:.1f}% | {share:.3f} | {1 / r:.2f}x | {f / r:.3f} |")


if __name__ == "__main__":
    main()
