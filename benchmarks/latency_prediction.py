"""How well the latency model (evoprune.core.latency) predicts measured latency of pruned networks.

    .venv/bin/python benchmarks/latency_prediction.py                           # LeNet-5, VGG-style, ResNet-20
    .venv/bin/python benchmarks/latency_prediction.py --envs base --held-out 60 --round-to 1 --threads 2
    .venv/bin/python benchmarks/latency_prediction.py --runtime onnxruntime torch   # both runtimes, one table
    .venv/bin/python benchmarks/latency_prediction.py --envs lstm --round-to 8     # the LSTM's layer tables

For each environment's multi-exit network (conf/<env>'s train_dense.model and build_exits; weights do not
change latency, so an untrained network of the same shape serves), the tables are profiled here, then
``--held-out`` random pruned networks (other seeds than the calibration's, 20-100% of the units kept,
rounded like the search with ``--round-to``) are built physically and timed whole, each paired with the
dense network (``core.latency.validate_latency``). Prints per network the share predicted within +-10% of
the measured latency relative to the dense network's (what the search's objective uses), the median and
worst of that error, the same share for absolute milliseconds (drift since profiling included), and the
profiling time.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from run_outputs import run_parameters

from evoprune.core.exits import attach_exits
from evoprune.core.latency import (
    LatencySettings,
    calibration_masks,
    prediction_errors,
    profile_latency,
    validate_latency,
)
from evoprune.core.models import build_model
from evoprune.core.models.adapter import input_shape
from evoprune.core.units import build_layout
from evoprune.pipelines.build_exits.nodes import BuildExitsParams
from evoprune.pipelines.train_dense.nodes import TrainDenseParams


def _network(env: str) -> torch.nn.Module:
    params = run_parameters(env)
    dense = TrainDenseParams.model_validate(params["train_dense"])
    exits = BuildExitsParams.model_validate(params["build_exits"])
    torch.manual_seed(0)
    backbone = build_model(dense.model)
    if not exits.exit_after:  # conf/lstm: no early exits, the network alone (as build_exits gives it)
        return backbone.eval()
    return attach_exits(backbone, exits.exit_after, exits.head).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["base", "vgg", "resnet"])
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--round-to", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    parser.add_argument("--grid-points", type=int, nargs="+", default=[5], help="kept-unit counts per dimension")
    parser.add_argument("--runtime", nargs="+", default=["torch"], choices=["torch", "onnxruntime"])
    args = parser.parse_args()
    device = torch.device("cpu")
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}"
    )
    print(
        f"# batch {args.batch_size}, channels_last, {args.threads} thread(s), {args.repeats} paired repeats; "
        f"{args.held_out} held-out pruned nets"
    )
    print(
        "| network | runtime | round_to | grid points | profile s | within +-10% | median abs. error | worst | "
        "ms within +-10% | dense ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for env in args.envs:
        model = _network(env)
        layout = build_layout(model, input_shape(model))
        runs = [(r, g, rt) for rt in args.runtime for r in args.round_to for g in args.grid_points]
        for round_to, grid_points, runtime in runs:
            settings = LatencySettings(
                runtime=runtime,
                grid_points=grid_points,
                batch_size=args.batch_size,
                repeats=args.repeats,
                calibration_masks=args.calibration,
                threads=args.threads,
                round_to=round_to,
            )
            start = time.perf_counter()
            latency = profile_latency(model, layout, settings, device)
            seconds = time.perf_counter() - start
            held = calibration_masks(layout, args.held_out, seed=1000 + round_to, round_to=round_to)
            check = validate_latency(model, layout, latency, held, settings, device)
            errors = prediction_errors(check["predicted_ratio"], check["measured_ratio"])
            ms = prediction_errors(check["predicted_ms"], check["measured_ms"])
            print(
                f"| {env} ({getattr(model, 'backbone', model).spec.get('name')}) | {runtime} | {round_to} | {grid_points} | {seconds:.0f} | "
                f"{errors['within_10pct']:.0%} | {errors['median_abs_error']:.1%} | {errors['max_abs_error']:.1%} | "
                f"{ms['within_10pct']:.0%} | {latency.dense_ms:.1f} |"
            )


if __name__ == "__main__":
    main()
