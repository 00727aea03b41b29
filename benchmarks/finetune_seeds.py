"""Seed-to-seed spread of the member-vs-L1 comparison: each selected member and the global-L1 mask at its
FLOPs, both fine-tuned with the `keep` weights, the configured schedule and several seeds.

    .venv/bin/python benchmarks/finetune_seeds.py --seeds 1 2 3      # after `kedro run --pipeline=prune`

One run of `prune` compares at one seed; a difference smaller than the spread printed here is noise.
Prints the final-exit accuracy drop vs the dense network, in points, per seed and on average.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from evoprune.core.baselines import mask_within_budget
from evoprune.core.exits import input_shape
from evoprune.core.finetune import finetune_member
from evoprune.core.importance import GroupL1
from evoprune.core.train import TrainConfig, accuracy_per_exit
from evoprune.core.units import build_layout
from evoprune.datasets import PrunedMembersDataset, TensorDictDataset, TorchModelDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=5, help="fine-tune epochs (as finetune.training.epochs)")
    parser.add_argument("--max-pruning-ratio", type=float, default=0.7, help="as mask_search.search.max_pruning_ratio")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument(
        "--members", default="data/06_models/selected_members.pt", help="the members fine-tuned by `finetune`"
    )
    args = parser.parse_args()
    members = PrunedMembersDataset(filepath=args.members).load()
    initial = TorchModelDataset(filepath="data/06_models/multi_exit_model_init.pt").load()
    splits = {
        s: TensorDictDataset(filepath=f"data/05_model_input/{args.dataset}_{s}.pt").load()
        for s in ("train", "validation", "test")
    }
    model, cpu = members["model"], torch.device("cpu")
    layout = build_layout(model, input_shape(model))
    dense = accuracy_per_exit(model, splits["test"], cpu)[-1]
    scores = GroupL1(input_shape(model))(model, layout)
    cfg = TrainConfig(epochs=args.epochs)
    print(f"# dense final-exit test accuracy {100 * dense:.2f}%; drops in points; keep weights, {args.epochs} epochs")
    print("| member | FLOPs kept | seed | member drop | L1 drop | member better by |")
    print("|---|---|---|---|---|---|")
    for member, mask in zip(members["member_ids"], members["masks"], strict=True):
        ratio = float(layout.flops_ratio(mask[None])[0])
        l1 = mask_within_budget(layout, scores, ratio, args.max_pruning_ratio)
        margins = []
        for seed in args.seeds:
            drops = []
            for m in (mask, l1):
                tuned, _ = finetune_member(
                    model, initial, layout, m, "keep", splits["train"], splits["validation"], cfg, cpu, seed
                )
                drops.append(100 * (dense - accuracy_per_exit(tuned, splits["test"], cpu)[-1]))
            margins.append(drops[1] - drops[0])
            print(f"| {member} | {ratio:.3f} | {seed} | {drops[0]:.2f} | {drops[1]:.2f} | {margins[-1]:+.2f} |")
        print(f"| {member} | {ratio:.3f} | mean | | | {statistics.mean(margins):+.2f} |")


if __name__ == "__main__":
    main()
