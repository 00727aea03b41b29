"""Measured speed-up of fine-tuned pruned members vs the dense network, against their FLOPs reduction.

    .venv/bin/python benchmarks/pruned_latency.py                          # after `kedro run --pipeline=prune`
    .venv/bin/python benchmarks/pruned_latency.py --variant rewind --batch-sizes 1 256 1000

Every model of one run is timed in the same process, interleaved (dense, member, dense, member, ...),
so that ratios compare like with like. A fresh process pays page faults on every large activation
(glibc returns big blocks to the OS), which inflates the dense model's time more than a member's; a
long-running process (such as `kedro run`) does not. To time that steady state here:

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 .venv/bin/python benchmarks/pruned_latency.py
 Layouts: ``nchw`` (PyTorch's default) and ``channels_last``
(NHWC, what oneDNN prefers on CPU). The last columns are the speed-up divided by the FLOPs reduction
factor: 1.0 means the wall time falls exactly as the FLOPs do.
"""

from __future__ import annotations

import argparse
import platform

import torch

from evoprune.core.cost import count_flops, interleaved_median_seconds
from evoprune.core.data import images_to_float
from evoprune.core.exits import input_shape
from evoprune.datasets import FinetunedMembersDataset, TensorDictDataset


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _median_ms(fns: dict, repeats: int) -> dict:
    """Median milliseconds of each ``fn()`` in ``inference_mode``, timed interleaved."""
    with torch.inference_mode():
        seconds = interleaved_median_seconds(fns, repeats)
    return {name: 1e3 * s for name, s in seconds.items()}


def _calls(models: dict[str, torch.nn.Module], x: torch.Tensor) -> dict:
    return {n: (lambda m=m: m(x)) for n, m in models.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="keep", help="re-init variant whose fine-tuned members to time")
    parser.add_argument("--members", default="data/06_models/finetuned/{variant}_members.pt")
    parser.add_argument("--data", default="data/05_model_input/fashion_mnist_test.pt")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 1000])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile'd copies (inductor, frozen weights; needs a C++ compiler)",
    )
    args = parser.parse_args()
    loaded = FinetunedMembersDataset(filepath=args.members.format(variant=args.variant)).load()
    images = TensorDictDataset(filepath=args.data).load()["images"]
    dense = loaded["model"].eval()
    shape = input_shape(dense)
    models = {"dense": dense, **{f"member{i}": m for i, m in zip(loaded["member_ids"], loaded["pruned"], strict=True)}}
    flops = {name: count_flops(m, shape) for name, m in models.items()}
    device = torch.device(args.device)
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}"
    )
    print(f"# {args.variant} members, {args.device}; median of {args.repeats} interleaved runs, ms per batch")
    header = [
        "model",
        "FLOPs kept",
        "batch",
        "nchw ms",
        "channels_last ms",
        "speed-up nchw",
        "speed-up ch_last",
        "speed-up/reduction nchw",
        "speed-up/reduction ch_last",
    ]
    rows = []
    for batch in args.batch_sizes:
        x = images_to_float(images[:batch]).to(device)
        layouts = {}
        for layout, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            placed = {n: m.to(device=device, memory_format=fmt) for n, m in models.items()}
            layouts[layout] = _median_ms(_calls(placed, x.contiguous(memory_format=fmt)), args.repeats)
        for name in models:
            ratio = flops[name] / flops["dense"]
            s = {k: layouts[k]["dense"] / layouts[k][name] for k in layouts}
            rows.append(
                [
                    name,
                    f"{ratio:.3f}",
                    str(batch),
                    f"{layouts['nchw'][name]:.2f}",
                    f"{layouts['channels_last'][name]:.2f}",
                ]
                + [
                    f"{s['nchw']:.2f}x",
                    f"{s['channels_last']:.2f}x",
                    f"{s['nchw'] * ratio:.2f}",
                    f"{s['channels_last'] * ratio:.2f}",
                ]
            )
    _print_table(header, rows)
    if hasattr(dense.backbone, "stages"):  # the built-in staged CNNs (LeNet-5, VGG)
        _first_stage_floor(models, flops, images, max(args.batch_sizes), args.repeats, device)
    if args.compile:
        _compiled(models, flops, images, max(args.batch_sizes), args.repeats, device)
    _input_conv_sweep(dense, images, max(args.batch_sizes), args.repeats, device)


def _first_stage_floor(models, flops, images, batch, repeats, device) -> None:
    """How far pruning can speed a network up when its first stage (full-resolution maps, a 1-channel
    input on Fashion-MNIST) barely shrinks: the dense network's time over the member's first-stage time
    bounds the member's speed-up, whatever the later layers cost."""
    x = images_to_float(images[:batch]).to(device).contiguous(memory_format=torch.channels_last)
    placed = {n: m.to(device=device, memory_format=torch.channels_last) for n, m in models.items()}
    fns = _calls(placed, x)
    fns.update({f"{n}.stage1": (lambda m=m: m.backbone.stages[0](x)) for n, m in placed.items()})
    ms = _median_ms(fns, repeats)
    print(f"\n# first backbone stage alone, channels_last, batch {batch}: its share of the time bounds the speed-up")
    header = [
        "model",
        "FLOPs kept",
        "whole ms",
        "stage 1 ms",
        "stage 1 share",
        "max speed-up",
        "max speed-up/reduction",
    ]
    rows = []
    for name in models:
        ratio = flops[name] / flops["dense"]
        stage1 = ms[f"{name}.stage1"]
        bound = ms["dense"] / stage1
        rows.append(
            [name, f"{ratio:.3f}", f"{ms[name]:.2f}", f"{stage1:.2f}", f"{stage1 / ms[name]:.0%}"]
            + [f"{bound:.2f}x", f"{bound * ratio:.2f}"]
        )
    _print_table(header, rows)


def _compiled(models, flops, images, batch, repeats, device) -> None:
    """The same models through torch.compile (inductor, frozen weights), timed interleaved."""
    import copy

    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    x = images_to_float(images[:batch]).to(device)
    compiled = {n: torch.compile(copy.deepcopy(m).to(device)) for n, m in models.items()}
    ms = _median_ms(_calls(compiled, x), repeats)  # the warm-up run compiles
    print(f"\n# torch.compile (inductor, freezing), batch {batch}")
    rows = []
    for name in models:
        ratio = flops[name] / flops["dense"]
        speedup = ms["dense"] / ms[name]
        rows.append([name, f"{ratio:.3f}", f"{ms[name]:.2f}", f"{speedup:.2f}x", f"{speedup * ratio:.2f}"])
    _print_table(["model", "FLOPs kept", "ms", "speed-up", "speed-up/reduction"], rows)


def _input_conv_sweep(dense: torch.nn.Module, images, batch, repeats, device) -> None:
    """The network's first conv alone (same input channels, kernel, padding), with fewer and fewer
    output channels: how much of its time pruning its filters can remove."""
    first = next(m for m in dense.modules() if isinstance(m, torch.nn.Conv2d))
    x = images_to_float(images[:batch]).to(device)
    widths = sorted({1, 2, max(1, first.out_channels // 2), first.out_channels})
    fns = {}
    for c in widths:
        conv = torch.nn.Conv2d(first.in_channels, c, first.kernel_size, first.stride, first.padding).to(device).eval()
        fns[c] = lambda conv=conv: conv(x)
    ms = _median_ms(fns, repeats)
    print(
        f"\n# the first conv alone ({first.in_channels} input channel(s), {first.kernel_size[0]}x{first.kernel_size[1]}), batch {batch}"
    )
    rows = [[str(c), f"{c / first.out_channels:.2f}", f"{ms[c]:.2f}"] for c in widths]
    _print_table(["output channels", "FLOPs vs all", "ms"], rows)


if __name__ == "__main__":
    main()
