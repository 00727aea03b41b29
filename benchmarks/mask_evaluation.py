"""Candidate evaluations per second: one-at-a-time masked evaluation of the dense network vs batched
schemes, measured in one run on the same population and validation images (ratios in the last column).

    .venv/bin/python benchmarks/mask_evaluation.py                       # LeNet-5 + exit, random weights
    .venv/bin/python benchmarks/mask_evaluation.py --model data/06_models/multi_exit_model.pt \
        --data data/05_model_input/fashion_mnist_validation.pt           # the trained model, real images

Schemes (all exact: identical accuracies are asserted, except bf16):
  masked, K=1       the dense network with activation masks, one candidate per forward (baseline)
  masked, K=k       k candidates per forward, the batch tiled k times, each tile with its own mask
  tiled evaluator   the search's TiledEvaluator (the same tiling, policy and exits included; what CUDA gets)
  tiled, bf16       the same under bf16 autocast: the largest accuracy difference to float32 is printed
  sliced            each candidate on its own sliced weights (cost follows its FLOPs), input layer cached
The last columns: images scored per second (candidates x images) and that as a share of one large-batch dense
forward's images per second on the same device (issue 17 asks >= 50% on a GPU).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from evoprune.core.exits import attach_exits, input_shape
from evoprune.core.importance import own_filter_l1
from evoprune.core.masking import SlicedEvaluator, TiledEvaluator, population_accuracy
from evoprune.core.models import build_model
from evoprune.core.search.operators import RouletteSampling, rank_within_layers
from evoprune.core.units import build_layout


def _population(layout, model, size: int, seed: int) -> np.ndarray:
    from pymoo.core.problem import Problem

    rank = rank_within_layers(own_filter_l1(model, layout), layout)
    problem = Problem(n_var=layout.num_bits, xl=0, xu=1, vtype=bool)
    X = RouletteSampling(rank).do(problem, size, random_state=np.random.default_rng(seed)).get("X")
    return layout.repair(X)


def _rate(fn, n: int, repeats: int) -> tuple[float, np.ndarray]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return n / float(np.median(times)), out


@torch.no_grad()
def _dense_images_per_second(model, split, device, repeats: int) -> float:
    """Images per second of the unpruned network's forward on the whole split in one batch."""
    from evoprune.core.data import images_to_float

    x = images_to_float(split["images"].to(device))
    rate, _ = _rate(lambda: model(x), len(x), repeats)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="TorchModelDataset checkpoint (default: LeNet-5 + one exit, random weights)")
    parser.add_argument("--data", help="TensorDictDataset split (default: random images)")
    parser.add_argument("--images", type=int, default=2000, help="validation images per candidate")
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--tiles", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: the CPU, and CUDA too when present")
    args = parser.parse_args()
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for name in devices:
        run(args, torch.device(name))


def run(args: argparse.Namespace, device: torch.device) -> None:
    """One table on one device."""
    torch.manual_seed(0)
    if args.model:
        from evoprune.datasets import TorchModelDataset

        model = TorchModelDataset(filepath=args.model).load()
    else:
        model = attach_exits(build_model({"name": "lenet5"}), [1])
    model.eval().to(device)
    if args.data:
        from evoprune.datasets import TensorDictDataset

        split = {k: v[: args.images] for k, v in TensorDictDataset(filepath=args.data).load().items()}
    else:
        split = {
            "images": torch.randint(0, 256, (args.images, 28, 28), dtype=torch.uint8),
            "labels": torch.randint(0, 10, (args.images,)),
        }
    spec = model.backbone.spec if hasattr(model, "backbone") else model.spec
    layout = build_layout(model, input_shape(model))
    masks = _population(layout, model, args.population, seed=0)
    flops = layout.flops_ratio(masks)
    rows = []
    base, reference = _rate(
        lambda: np.vstack([population_accuracy(model, layout, m[None], split, device, 1, args.images) for m in masks]),
        len(masks),
        args.repeats,
    )
    rows.append(("masked, K=1 (one at a time)", base))
    for k in args.tiles:
        rate, acc = _rate(
            lambda k=k: population_accuracy(model, layout, masks, split, device, k, max(args.images // k, 1)),
            len(masks),
            args.repeats,
        )
        assert np.array_equal(acc, reference), f"tiled K={k} differs from one-at-a-time"
        rows.append((f"masked, K={k} (tiled batch)", rate))
    for k in args.tiles:
        tiled = TiledEvaluator(model, layout, device, candidates_per_pass=k)
        rate, acc = _rate(lambda t=tiled: t.accuracy(masks, split), len(masks), args.repeats)
        assert np.array_equal(acc, reference), f"tiled evaluator K={k} differs from one-at-a-time"
        rows.append((f"tiled evaluator, K={k}", rate))
    k = max(args.tiles)
    tiled = TiledEvaluator(model, layout, device, candidates_per_pass=k, precision="bfloat16")
    rate, acc = _rate(lambda: tiled.accuracy(masks, split), len(masks), args.repeats)
    bf16_gap = float(np.abs(acc - reference).max())
    rows.append((f"tiled evaluator, K={k}, bf16", rate))
    evaluator = SlicedEvaluator(model, layout, device)
    rate, acc = _rate(lambda: evaluator.accuracy(masks, split), len(masks), args.repeats)
    assert np.array_equal(acc, reference), "sliced evaluation differs from one-at-a-time"
    rows.append(("sliced (per-candidate weights)", rate))
    dense = _dense_images_per_second(model, split, device, args.repeats)
    print(
        f"model {spec['name']} ({'multi-exit' if hasattr(model, 'exit_heads') else 'single exit'}), {layout.num_bits} units, "
        f"{args.images} images per candidate, population {len(masks)} (roulette sampling, mean FLOPs ratio {flops.mean():.2f})"
    )
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads), torch {torch.__version__}"
    )
    print(f"dense forward, batch {len(split['labels'])}: {dense:,.0f} images/s; bf16 vs float32: largest accuracy "
          f"difference {100 * bf16_gap:.2f} pt")  # fmt: skip
    print(f"{'scheme':34s} {'evals/s':>9s} {'vs K=1':>7s} {'images/s':>11s} {'of dense':>8s}")
    for name, rate in rows:
        images = rate * len(split["labels"])
        print(f"{name:34s} {rate:9.2f} {rate / base:6.2f}x {images:11,.0f} {images / dense:7.1%}")
    print()


if __name__ == "__main__":
    main()
