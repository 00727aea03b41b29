"""How well FLOPs predict the measured latency of pruned networks, and what part no mask removes.

    .venv/bin/python benchmarks/latency_model.py                                   # after `make prune`
    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \\
        .venv/bin/python benchmarks/latency_model.py --model data/vgg/06_models/multi_exit_model.pt

Random masks (each layer keeps at least 30% of its units, as `max_pruning_ratio: 0.7`) are pruned
physically and timed interleaved (channels_last). Two least-squares fits on the first masks are checked
on the held-out rest: latency = a + b * FLOPs, and a per-layer model (FLOPs and output activation size
of every conv/linear layer). The intercept ``a`` is time no mask removes; with an affine latency the
speed-up of a member keeping a share r of the FLOPs is at most (a + bF) / (a + b r F), which the last
table turns into the best speed-up / FLOPs-reduction ratio reachable at a few FLOPs shares. Set the
malloc variables above to time the steady state of a long-running process such as `kedro run`.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from evoprune.core.cost import interleaved_seconds
from evoprune.core.exits import input_shape
from evoprune.core.masking import prune_physically
from evoprune.core.units import build_layout
from evoprune.datasets import TorchModelDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="data/06_models/multi_exit_model.pt")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--masks", type=int, default=40)
    parser.add_argument("--held-out", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = TorchModelDataset(filepath=args.model).load().eval()
    shape = input_shape(model)
    layout = build_layout(model, shape)
    rng = np.random.default_rng(args.seed)
    keep = rng.uniform(0.25, 1.0, size=(args.masks, 1))
    masks = layout.repair(rng.random((args.masks, layout.num_bits)) < keep, min_units=layout.min_units(0.7))
    masks[0] = True  # the dense network
    x = torch.randn(args.batch, *shape).contiguous(memory_format=torch.channels_last)
    fns = {}
    for i, mask in enumerate(masks):
        pruned = prune_physically(model, layout, mask, shape).to(memory_format=torch.channels_last)
        fns[i] = lambda m=pruned: m(x)
    with torch.inference_mode():
        times = interleaved_seconds(fns, args.repeats)
    ms = np.array([1e3 * statistics.median(times[i]) for i in range(args.masks)])
    flops, _, padded = layout._layer_costs(masks)
    flops = flops.numpy() / 1e6  # MFLOPs per image, per layer
    acts = (
        np.stack(
            [
                padded[:, torch.as_tensor(layer.out_bits)].sum(1).numpy()
                * layer.flops_per_pair
                / (2 * layer.weight_per_pair)
                for layer in layout.layers
            ],
            1,
        )
        / 1e3
    )  # thousands of output values per image, per layer
    ones = np.ones((args.masks, 1))
    designs = {
        "a + b * FLOPs": np.hstack([ones, flops.sum(1, keepdims=True)]),
        "per-layer FLOPs + activations": np.hstack([ones, flops, acts]),
    }
    fit, test = np.arange(args.masks - args.held_out), np.arange(args.masks - args.held_out, args.masks)
    print(f"# {args.model}: {args.masks} masks ({args.held_out} held out), batch {args.batch}, channels_last")
    print(f"# dense {ms[0]:.1f} ms; measured latencies {ms.min():.1f}-{ms.max():.1f} ms")
    print("| model | held-out mean error | held-out correlation |")
    print("|---|---|---|")
    coefs = {}
    for name, design in designs.items():
        coefs[name], *_ = np.linalg.lstsq(design[fit], ms[fit], rcond=None)
        predicted = design[test] @ coefs[name]
        error = np.mean(np.abs(predicted - ms[test]) / ms[test])
        print(f"| {name} | {100 * error:.1f}% | {np.corrcoef(predicted, ms[test])[0, 1]:.3f} |")
    a, b = coefs["a + b * FLOPs"]
    dense_flops = flops[0].sum()
    print(
        f"\n# affine fit: {a:.1f} ms + {b:.2f} ms per MFLOP per image; the fixed part is {a / (a + b * dense_flops):.0%} of the dense time"
    )
    print("| FLOPs kept | best speed-up | best speed-up / FLOPs reduction |")
    print("|---|---|---|")
    for share in (0.15, 0.25, 0.35, 0.5):
        speedup = (a + b * dense_flops) / (a + b * share * dense_flops)
        print(f"| {share:.2f} | {speedup:.2f}x | {speedup * share:.2f} |")


if __name__ == "__main__":
    main()
