"""Members chosen on the latency front vs on the FLOPs front, after the same fine-tuning (issue 17's comparison).

    .venv/bin/kedro run --pipeline=prune                 # the FLOPs front (conf/base), artifacts under data/
    .venv/bin/kedro run --pipeline=prune --env=latency   # the predicted-latency front, under data/latency/
    .venv/bin/python benchmarks/latency_vs_flops_front.py [--flops data] [--latency data/latency]

Reads each run's report (test accuracy of the final exit after fine-tuning, the `keep` variant, the run's seed)
and its `latency_validation.csv` (each member timed paired with the dense network at the latency profile's
settings: batch 1000, channels_last, 1 thread, steady allocator). With `--retime`, the members of both runs are
timed again here instead, all in this one process (use it when a run's own timing shared the CPU with other
work: latency does not depend on the weights, so the unpruned network cut to each member's mask is timed). Prints both runs' members, then for each FLOPs-front
member the fastest latency-front member at least as accurate (within `--tolerance` points): the measured
speed-up of one over the other. Measured latencies are ratios of each run's own dense network (the two dense
networks are the same model when both runs used the same seed on the same machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from evoprune.core.exits import input_shape
from evoprune.core.latency import LatencySettings, measure_masks_ms
from evoprune.core.mask_codec import decode_masks
from evoprune.core.units import build_layout
from evoprune.datasets import TorchModelDataset


def member_report(folder: Path, variant: str) -> pd.DataFrame:
    """A run's report rows of its members fine-tuned with ``variant`` at the run's own seed, indexed by member."""
    report = pd.read_csv(folder / "08_reporting/report_table.csv")
    report = report[(report["kind"] == "member") & (report["method"] == variant)]
    if "seed" in report.columns:  # report.seeds > 1: the run's own seed, the one the other run fine-tuned with
        report = report[report["seed"] == report["seed"].min()]
    return report.set_index("member")


def members(folder: Path, variant: str, retime: LatencySettings | None) -> pd.DataFrame:
    """One row per member: FLOPs, predicted and measured latency ratio, test accuracy after fine-tuning."""
    report = member_report(folder, variant)
    chosen = pd.read_csv(folder / "07_model_output/chosen_members.csv", dtype={"mask": str})
    if retime is None:
        validation = pd.read_csv(folder / "08_reporting/latency_validation.csv")
        measured = validation[validation["kind"] == "member"]["measured_ratio"].to_numpy()
    else:
        network = TorchModelDataset(filepath=str(folder / "06_models/multi_exit_model.pt")).load().eval()
        layout = build_layout(network, input_shape(network))
        measured = measure_masks_ms(network, layout, decode_masks(chosen["mask"]), retime, torch.device("cpu")).ratio
    table = chosen[["member", "flops_ratio", "latency_ratio"]].assign(measured_ratio=measured)
    table = table[table["member"].isin(report.index)].set_index("member")
    return table.assign(test_accuracy=report["test_accuracy"]).rename(columns={"latency_ratio": "predicted_ratio"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flops", type=Path, default=Path("data"))
    parser.add_argument("--latency", type=Path, default=Path("data/latency"))
    parser.add_argument("--variant", default="keep")
    parser.add_argument("--tolerance", type=float, default=0.1, help="accuracy points a match may lose")
    parser.add_argument("--retime", action="store_true", help="time every member again here (paired with dense)")
    parser.add_argument("--repeats", type=int, default=21, help="pairs per member with --retime")
    args = parser.parse_args()
    retime = LatencySettings(repeats=args.repeats) if args.retime else None  # batch 1000, channels_last, 1 thread
    runs = {
        "FLOPs front": members(args.flops, args.variant, retime),
        "latency front": members(args.latency, args.variant, retime),
    }
    print("| front | member | FLOPs | predicted latency | measured latency | test acc. |")
    print("|---|---|---|---|---|---|")
    for name, table in runs.items():
        for member, row in table.iterrows():
            print(
                f"| {name} | {member} | {row['flops_ratio']:.3f} | {row['predicted_ratio']:.3f} | "
                f"{row['measured_ratio']:.3f} | {100 * row['test_accuracy']:.2f}% |"
            )
    print()
    print("| FLOPs-front member (acc.) | fastest latency-front member at least as accurate | speed-up |")
    print("|---|---|---|")
    latency = runs["latency front"]
    for member, row in runs["FLOPs front"].iterrows():
        fits = latency[latency["test_accuracy"] >= row["test_accuracy"] - args.tolerance / 100]
        if fits.empty:
            print(f"| {member} ({100 * row['test_accuracy']:.2f}%) | none | - |")
            continue
        best = fits["measured_ratio"].idxmin()
        match = fits.loc[best]
        print(
            f"| {member} ({100 * row['test_accuracy']:.2f}%) | {best} ({100 * match['test_accuracy']:.2f}%) | "
            f"{row['measured_ratio'] / match['measured_ratio']:.2f}x |"
        )


if __name__ == "__main__":
    main()
