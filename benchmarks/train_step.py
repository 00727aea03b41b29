"""Milliseconds per training step of `core.train.train` on a device, under bf16 autocast and in float32
(`training.precision`), and what a wait for the device after every step costs.

    .venv/bin/python benchmarks/train_step.py --device cuda          # on a GPU machine
    .venv/bin/python benchmarks/train_step.py --images 2048          # CPU dry run

On CUDA a small network leaves the GPU waiting on Python (the README's ResNet-20 run took ~13 ms per step on an
H200). Columns, each timed over one epoch after a warm-up epoch, in one process:
- `bfloat16`: bf16 autocast (a cast per layer: Python work that small layers may not win back);
- `bfloat16 + wait per step`: `torch.cuda.synchronize()` after every step too (what a per-step `.item()` costs);
- `float32`: no autocast (the default; on CPU both precisions run float32).
Networks: the `resnet` environment's multi-exit ResNet-20 (16-32-64, exits after layer1/layer2, 32x32 grey) and
the default multi-exit LeNet-5 (28x28), batch 128, channels_last, random images (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import time

import torch

from evoprune.core.exits import attach_exits
from evoprune.core.models import build_model
from evoprune.core.train import TrainConfig, TrainingExtras, train

NETWORKS = {
    "ResNet-20 + 2 exits": ({"name": "resnet_cifar", "depth": 20, "width": 16, "in_channels": 1, "input_size": 32},
                            ["layer1", "layer2"], 32),
    "LeNet-5 + 1 exit": ({"name": "lenet5"}, [1], 28),
}  # fmt: skip


def _epoch_ms_per_step(spec, exits, side, n, device, precision, extras=None) -> float:
    extras = extras or TrainingExtras(progress=False)
    torch.manual_seed(0)
    model = attach_exits(build_model(spec), exits)
    split = {"images": torch.randint(0, 256, (n, side, side), dtype=torch.uint8), "labels": torch.randint(0, 10, (n,))}
    cfg = TrainConfig(epochs=1, batch_size=128, memory_format="channels_last", precision=precision)
    train(model, split, None, cfg, device, 0, "warm-up", extras=extras)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train(model, split, None, cfg, device, 1, "timed", extras=extras)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / -(-n // cfg.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=20_000, help="images per epoch")
    args = parser.parse_args()
    device = torch.device(args.device)
    wait = TrainingExtras(
        after_step=lambda *_: torch.cuda.synchronize() if device.type == "cuda" else None, progress=False
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"# torch {torch.__version__}, {name}; ms per step (batch 128), one epoch of {args.images} images")
    print("| network | bfloat16 | bfloat16 + wait per step | float32 | bfloat16 / float32 |")
    print("|---|---|---|---|---|")
    for label, (spec, exits, side) in NETWORKS.items():
        bf16 = _epoch_ms_per_step(spec, exits, side, args.images, device, "bfloat16")
        waiting = _epoch_ms_per_step(spec, exits, side, args.images, device, "bfloat16", extras=wait)
        fp32 = _epoch_ms_per_step(spec, exits, side, args.images, device, "float32")
        print(f"| {label} | {bf16:.2f} | {waiting:.2f} | {fp32:.2f} | {bf16 / fp32:.2f}x |")


if __name__ == "__main__":
    main()
