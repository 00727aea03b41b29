"""Latency-front vs FLOPs-front members over several fine-tune seeds (issue 17's comparison, one seed at a time
in `latency_vs_flops_front.py`): each run's selected members are fine-tuned again as the run's `finetune`
parameters say (`keep` weights) with every seed, scored on the test split, and all of them timed in this one
process, each paired with the dense network (batch 1000, channels_last, 1 thread, as `latency_profile`).

    .venv/bin/kedro run --pipeline=prune                                             # FLOPs front, data/
    .venv/bin/kedro run --pipeline=prune --env=latency --params "finetune.variants=[keep]"   # data/latency/
    .venv/bin/python benchmarks/front_members_seeds.py --seeds 42 43 44

Prints each member's FLOPs, measured latency ratio and final-exit test accuracy (mean ± std over the seeds,
and the run's own report at its seed, which the same seed on the same machine reproduces), then for every
(latency member, FLOPs member) pair the measured speed-up and the paired accuracy margin (same seed, mean ±
std over seeds): "equal accuracy" where |mean| <= std, the test the report's verdicts use.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from evoprune.core.exits import input_shape
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.finetune_pool import FinetuneInputs, FinetuneJob, finetune_jobs
from evoprune.core.latency import LatencySettings, measure_masks_ms
from evoprune.core.train import evaluate
from evoprune.core.units import build_layout
from evoprune.datasets import PrunedMembersDataset, TensorDictDataset, TorchModelDataset

sys.path.insert(0, str(Path(__file__).parent))
from latency_vs_flops_front import member_report  # noqa: E402
from run_outputs import run_parameters  # noqa: E402


def _run(folder: Path, env: str, seeds: list[int]) -> tuple[pd.DataFrame, torch.nn.Module, object]:
    """One row per (member, seed): the run's member fine-tuned with that seed and scored on the test split;
    the run's trained network and layout."""
    params = FinetuneParams.model_validate(run_parameters(env)["finetune"])
    trained = TorchModelDataset(filepath=str(folder / "06_models/multi_exit_model.pt")).load()
    initial = TorchModelDataset(filepath=str(folder / "06_models/multi_exit_model_init.pt")).load()
    members = PrunedMembersDataset(filepath=str(folder / "06_models/selected_members.pt")).load()
    split = {s: TensorDictDataset(filepath=str(folder / f"05_model_input/fashion_mnist_{s}.pt")).load() for s in ("train", "test")}  # fmt: skip
    layout = build_layout(trained, input_shape(trained))
    inputs = FinetuneInputs(
        trained, initial, layout, split["train"], None, params.training, params.exit_loss_weights(trained),
        torch.device("cpu"),
    )  # fmt: skip
    plan = [(m, mask, s) for m, mask in zip(members["member_ids"], members["masks"], strict=True) for s in seeds]
    jobs = [FinetuneJob(mask, "keep", s, f"{env} member {m} seed {s}") for m, mask, s in plan]
    tuned = finetune_jobs(inputs, jobs, params.parallel)
    own = member_report(folder, "keep")["test_accuracy"].to_dict()
    rows = [
        {
            "front": env,
            "member": int(m),
            "seed": s,
            "flops_ratio": float(layout.flops_ratio(mask[None])[0]),
            "test_accuracy": evaluate(net, split["test"], torch.device("cpu")),
            "report_accuracy": own.get(int(m), float("nan")),
            "mask": mask,
        }
        for (m, mask, s), (net, _) in zip(plan, tuned, strict=True)
    ]
    return pd.DataFrame(rows), trained, layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flops", default="data", help="the FLOPs run's output folder (conf/base)")
    parser.add_argument("--latency", default="data/latency", help="the latency run's output folder (conf/latency)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    args = parser.parse_args()
    flops, network, layout = _run(Path(args.flops), "local", args.seeds)
    latency, _, _ = _run(Path(args.latency), "latency", args.seeds)
    rows = pd.concat([flops, latency], ignore_index=True)
    firsts = rows.drop_duplicates(["front", "member"]).reset_index(drop=True)
    timed = measure_masks_ms(network, layout, np.stack(firsts["mask"]), LatencySettings(), torch.device("cpu"))
    firsts["latency_ratio"] = timed.ratio
    speed = {(r.front, r.member): r.latency_ratio for r in firsts.itertuples()}
    acc = rows.pivot_table(index=["front", "member"], columns="seed", values="test_accuracy")
    print(f"# dense network {timed.dense_ms:.1f} ms per batch of 1000; seeds {args.seeds}")
    print("| front | member | FLOPs | measured latency | test acc. per seed | mean ± std | report (its seed) |")
    print("|---|---|---|---|---|---|---|")
    for r in firsts.itertuples():
        per = acc.loc[(r.front, r.member)]
        print(
            f"| {'FLOPs' if r.front == 'local' else 'latency'} | {r.member} | {r.flops_ratio:.3f} | "
            f"{r.latency_ratio:.3f} | {' / '.join(f'{100 * a:.2f}' for a in per)} | "
            f"{100 * per.mean():.2f} ± {100 * per.std(ddof=1):.2f} | {100 * r.report_accuracy:.2f} |"
        )
    print()
    print("| latency member | FLOPs member | speed-up (measured) | margin, pt (latency - FLOPs, same seed) | equal? |")
    print("|---|---|---|---|---|")
    for fast in latency["member"].unique():
        for slow in flops["member"].unique():
            margin = 100 * (acc.loc[("latency", fast)] - acc.loc[("local", slow)])
            mean, std = statistics.mean(margin), statistics.stdev(margin) if len(margin) > 1 else float("nan")
            up = speed[("local", slow)] / speed[("latency", fast)]
            verdict = "equal" if abs(mean) <= std else ("latency better" if mean > 0 else "FLOPs better")
            print(f"| {fast} | {slow} | {up:.2f}x | {mean:+.2f} ± {std:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
