"""Raw vs monotone latency tables, A/B on the same measurements: does making each layer's table non-decreasing
in kept units (``core.latency.monotone_grid``, applied whenever a table is built) predict held-out pruned
networks better or worse than the tables as timed?

    .venv/bin/python benchmarks/latency_monotone.py                       # LeNet-5, round_to 1 and 8
    .venv/bin/python benchmarks/latency_monotone.py --envs vgg --round-to 8

Per environment and ``round_to``: profile the tables once with the raw grids (the calibration timings kept),
build the monotone tables from the same grids and calibrate them on the same timings, time ``--held-out``
random pruned networks once (paired with the dense network), and print both models' errors on those timings.
Batch 1000, channels_last, 1 thread, as ``benchmarks/latency_prediction.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import evoprune.core.latency as latency_module
from evoprune.core.models.adapter import input_shape
from evoprune.core.units import build_layout

sys.path.insert(0, str(Path(__file__).parent))
from latency_prediction import _network  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["base"])
    parser.add_argument("--round-to", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--held-out", type=int, default=30)
    args = parser.parse_args()
    monotone, calibrate = latency_module.monotone_grid, latency_module.calibrate
    timings: dict[str, np.ndarray] = {}

    def keep_timings(sums: np.ndarray, measured_ms: np.ndarray) -> tuple[float, float]:
        timings["calibration"] = np.asarray(measured_ms)
        return calibrate(sums, measured_ms)

    latency_module.monotone_grid = lambda ms: np.asarray(ms, dtype=float)  # the raw grids while profiling
    latency_module.calibrate = keep_timings
    cpu = torch.device("cpu")
    print("| network | round_to | tables | entries changed | within +-10% | median abs. error | worst | dense ms |")
    print("|---|---|---|---|---|---|---|---|")
    for env in args.envs:
        model = _network(env)
        layout = build_layout(model, input_shape(model))
        for round_to in args.round_to:
            settings = latency_module.LatencySettings(round_to=round_to)
            raw = latency_module.profile_latency(model, layout, settings, cpu)
            calibration = np.vstack(
                [
                    np.ones((1, layout.num_bits), dtype=bool),
                    latency_module.calibration_masks(layout, settings.calibration_masks, settings.seed, round_to),
                ]
            )
            tables = tuple(
                latency_module.LayerTable(t.name, t.in_units, t.out_units, monotone(t.ms)) for t in raw.tables
            )
            unfitted = latency_module.LatencyModel(raw.key, tables, 0.0, 1.0, raw.dense_ms)
            fitted = calibrate(unfitted.table_sum(layout, calibration), timings["calibration"])
            smooth = latency_module.LatencyModel(raw.key, tables, *fitted, raw.dense_ms)
            changed = sum(int((monotone(t.ms) != t.ms).sum()) for t in raw.tables)
            held = latency_module.calibration_masks(layout, args.held_out, seed=1000 + round_to, round_to=round_to)
            measured = latency_module.measure_masks_ms(model, layout, held, settings, cpu)
            for name, model_ in (("raw", raw), ("monotone", smooth)):
                e = latency_module.prediction_errors(model_.ratio(layout, held), measured.ratio)
                print(
                    f"| {env} | {round_to} | {name} | {changed} of {sum(t.ms.size for t in raw.tables)} | "
                    f"{e['within_10pct']:.0%} | {e['median_abs_error']:.1%} | {e['max_abs_error']:.1%} | "
                    f"{raw.dense_ms:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
