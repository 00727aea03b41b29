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
counts per group as well (``--round-to`` with no value: only those); ``--per-conv`` then also times every conv of the
dense network and of each given allocation on its own (forward hooks, median of ``--repeats`` forwards) and prints
its kept channels, milliseconds and GFLOP/s: where the time the FLOPs cut does not save goes.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from latency_prediction import _network
from run_outputs import run_parameters

from evoprune.core.baselines import mask_within_budget
from evoprune.core.latency import LatencySettings, measure_masks_ms, steady_allocator
from evoprune.core.masking import prune_physically
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
    parser.add_argument("--per-conv", action="store_true", help="with --allocations: time every conv on its own")
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime"], help="what runs the networks")
    parser.add_argument("--threads", type=int, default=None, help="threads while timing (default: the process's)")
    args = parser.parse_args()
    network = _network(args.env)
    layout = build_layout(network, input_shape(network))
    cap = MaskSearchParams.model_validate(run_parameters(args.env)["mask_search"]).search.max_pruning_ratio
    settings = LatencySettings(
        batch_size=args.batch_size, threads=args.threads, repeats=args.repeats, runtime=args.runtime
    )
    cpu = torch.device("cpu")
    threads = args.threads or torch.get_num_threads()
    print(f"# {args.env}: {type(network).__name__}, {args.runtime}, {threads} threads, torch {torch.__version__}")
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
        if args.per_conv:
            dense = conv_times(network, args.batch_size, args.repeats)
            for counts, mask in zip(args.allocations, masks, strict=True):
                pruned = conv_times(prune_physically(network, layout, mask, input_shape(network)), args.batch_size,
                                    args.repeats)  # fmt: skip
                print(f"\n# {counts}: each conv timed alone in the forward, batch {args.batch_size}")
                print("| conv | dense ms | dense GFLOP/s | kept in -> out | ms | GFLOP/s | FLOPs kept | time kept |")
                print("|---|---|---|---|---|---|---|---|")
                for name, (ms, gflop, *_) in dense.items():
                    p_ms, p_gflop, p_in, p_out = pruned[name]
                    print(f"| {name} | {ms:.2f} | {gflop / ms * 1e3:.0f} | {p_in} -> {p_out} | {p_ms:.2f} | "
                          f"{p_gflop / p_ms * 1e3:.0f} | {p_gflop / gflop:.2f} | {p_ms / ms:.2f} |")  # fmt: skip
                total, p_total = sum(v[0] for v in dense.values()), sum(v[0] for v in pruned.values())
                print(f"| all convs | {total:.1f} | | | {p_total:.1f} | | | {p_total / total:.2f} |")


def conv_times(network: torch.nn.Module, batch_size: int, repeats: int) -> dict[str, tuple[float, float, int, int]]:
    """Per conv of ``network`` (eval, channels_last, inference mode, steady allocator): median milliseconds of its
    own forward within whole-network forwards at ``batch_size``, GFLOP per forward, input and output channels.
    Times a copy: ``network`` keeps no hooks."""
    steady_allocator()
    network = copy.deepcopy(network).eval().to(memory_format=torch.channels_last)
    x = torch.rand(batch_size, *input_shape(network)).contiguous(memory_format=torch.channels_last)
    started, seconds, shapes = {}, {}, {}
    convs = {n: m for n, m in network.named_modules() if isinstance(m, torch.nn.Conv2d)}

    def finished(name: str, output: torch.Tensor) -> None:  # returns None: the output stays as it is
        seconds.setdefault(name, []).append(time.perf_counter() - started[name])
        shapes[name] = output.shape

    for name, conv in convs.items():
        conv.register_forward_pre_hook(lambda m, i, n=name: started.__setitem__(n, time.perf_counter()))
        conv.register_forward_hook(lambda m, i, o, n=name: finished(n, o))
    with torch.inference_mode():
        for _ in range(2):
            network(x)
        seconds.clear()
        for _ in range(repeats):
            network(x)
    out = {}
    for name, conv in convs.items():
        n, c, h, w = shapes[name]
        gflop = 2 * n * c * h * w * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1] / 1e9
        out[name] = (1e3 * statistics.median(seconds[name]), gflop, conv.in_channels, conv.out_channels)
    return out


if __name__ == "__main__":
    main()
