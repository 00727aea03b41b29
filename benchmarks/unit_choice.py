"""Where does a member's edge over global L1 at its FLOPs come from: how many units it keeps per layer, or which
units? (issue 16: "the best NSGA-II member beats the best Torch-Pruning criterion by >= 0.3 pt")

    .venv/bin/python benchmarks/unit_choice.py --data data --seeds 42 43 44   # after `kedro run --pipeline=prune`

For each member that `select_members` chose (``07_model_output/member_selection.csv``), fine-tunes with
finetune.training's recipe (conf/base), `keep` weights, once per seed, these masks:

- ``member``: the member itself;
- ``l1``: group L1 fitted to the member's FLOPs with the search's per-layer cap, as the report's ``l1`` row;
- ``counts, L1 units``: the member's unit count in every layer, the units chosen by group L1 within each layer;
- ``counts, L1 conv units``: the same in the conv layers only, the member's own units elsewhere;
- ``L1 conv + member fc``, ``member conv + L1 fc``: the conv layers' bits of one mask with the other layers' bits
  of the other (their FLOPs are printed: they can differ from the member's).

Prints test accuracy (final exit) per mask, mean ± std over the seeds and the margin over ``l1`` paired by seed.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch
from run_outputs import run_splits, search_outputs
from torch import nn

from evoprune.core.baselines import mask_within_budget
from evoprune.core.exits import input_shape
from evoprune.core.finetune import pruned_variant
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.importance import GroupL1
from evoprune.core.mask_codec import decode_masks
from evoprune.core.selection import layer_type_bits
from evoprune.core.train import accuracy_per_exit, train
from evoprune.core.units import ChromosomeLayout, build_layout
from evoprune.pipelines.mask_search.nodes import MaskSearchParams


def unit_choice_masks(member: np.ndarray, model: nn.Module, layout: ChromosomeLayout, cap: float) -> dict:
    """name -> mask (see the module docstring)."""
    scores = GroupL1(input_shape(model))(model, layout)
    l1 = mask_within_budget(layout, scores, float(layout.flops_ratio(member[None])[0]), cap)
    by_l1 = layout.mask_with_counts(layout.units_kept(member), scores)
    conv = layer_type_bits(model, layout, nn.Conv2d)
    return {
        "member": member,
        "l1": l1,
        "counts, L1 units": by_l1,
        "counts, L1 conv units": np.where(conv, by_l1, member),
        "L1 conv + member fc": np.where(conv, l1, member),
        "member conv + L1 fc": np.where(conv, member, l1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data", help="the prune run's outputs folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--dataset", default="fashion_mnist")
    args = parser.parse_args()
    trained, initial, front = search_outputs(args.data)
    selection = pd.read_csv(f"{args.data}/07_model_output/member_selection.csv")
    train_split, test_split = run_splits(args.data, "train", "test", dataset=args.dataset)
    cpu = torch.device("cpu")
    layout = build_layout(trained, input_shape(trained))
    recipe = FinetuneParams().training
    cap = MaskSearchParams().search.max_pruning_ratio
    print(f"# {torch.get_num_threads()} torch threads, torch {torch.__version__}; seeds {args.seeds}; cap {cap}")
    print(f"# units per group: {', '.join(f'{g.name} ({g.size})' for g in layout.groups)}")
    print("| member | mask | units per group | FLOPs % | test acc. % per seed | mean ± std | vs l1 (paired) |")
    print("|---|---|---|---|---|---|---|")
    selected = selection[selection["selected"]]
    if "refit_of" in selected:  # a selected refit (finetune.selection_refit): the member it was refit from
        selected = selected.assign(member=selected["member"].where(selected["refit_of"] < 0, selected["refit_of"]))
    for member_id in selected["member"]:
        row = front.loc[front["member"] == member_id].iloc[0]
        masks = unit_choice_masks(decode_masks([row["mask"]], layout.num_bits)[0], trained, layout, cap)
        accuracy = {}  # every mask fine-tuned first: the margins are paired with l1's seeds
        for name, mask in masks.items():
            accuracy[name] = []
            for seed in args.seeds:
                model = pruned_variant(trained, initial, layout, mask, "keep", seed)
                train(model, train_split, None, recipe, cpu, seed, f"member {member_id}: {name}, seed {seed}")
                accuracy[name].append(100 * accuracy_per_exit(model, test_split, cpu)[-1])
        for name, mask in masks.items():
            acc = np.array(accuracy[name])
            margin = acc - np.array(accuracy["l1"])
            counts = ",".join(map(str, layout.units_kept(mask)))
            print(
                f"| {member_id} | {name} | {counts} | {100 * layout.flops_ratio(mask[None])[0]:.2f} "
                f"| {' / '.join(f'{a:.2f}' for a in acc)} | {acc.mean():.2f} ± {acc.std(ddof=1):.2f} "
                f"| {margin.mean():+.2f} ± {margin.std(ddof=1):.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
