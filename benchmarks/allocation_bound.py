"""How close to the dense network can a pruned network at a FLOPs budget get after fine-tuning, whatever its
per-layer allocation? (issue 16: "a member keeps <= 20% of the FLOPs within 1.0 pt of the dense model")

    .venv/bin/python benchmarks/allocation_bound.py --budget 0.2 --epochs 5 15   # after `kedro run --pipeline=prune`

Fine-tunes, with finetune.training's recipe (conf/base) at each of ``--epochs`` epochs, the weights of each
``--variants`` (`keep`: the trained network's; `random`: a fresh initialisation, i.e. the pruned architecture trained
from scratch; any re-init variant of the finetune stage) of

- ``member<id>``: the front member with the most FLOPs within ``--budget`` (`07_model_output/pareto_set.csv`);
- one network per allocation of the first two prunable layers (LeNet-5: conv1 and conv2): for each unit count k
  of the first layer, the most units of the second layer that fit the budget with every other layer kept at
  the member's counts; units chosen by group L1 (``GroupL1``, Torch-Pruning's group magnitude) within each layer;
- ``--allocations``: explicit unit counts per layer, comma-separated in the layout's group order;
- with ``--l1``, ``l1 (global)``: the baselines' own mask at the member's FLOPs (``mask_within_budget`` with group
  L1 and the search's ``max_pruning_ratio`` and ``round_to``), i.e. what the member is compared with in the report;
- with ``--random-allocations N``: N allocations drawn like the random baseline's (random scores, the same limits,
  the member's FLOPs), units chosen by group L1 within each layer: how much the allocation alone moves accuracy.

With ``--without-search`` the run needs only to have reached build_exits (``kedro run --to-nodes=
build_exits.train_exit_heads,build_exits.initial_multi_exit_weights``): no member and no sweep, the other networks
at ``--budget`` itself.

No layer cap (``max_pruning_ratio``) applies to the sweep and ``--allocations``: the point is the best any allocation
can do. The recipe is the run's ``finetune`` (``training`` and the exits' ``loss_weights``, as `kedro run` reads them
from conf/base and conf/local), or that of ``--env``'s run (e.g. ``--env resnet --data data/resnet``: conf/resnet's 5
epochs on 30k images). Prints one row per network and epochs with its FLOPs and test accuracy (final exit) and the
gap to the dense network, in points. With ``--l1``, a second table pairs every network with L1 (same variant and
epochs) on the test images: the margin, the share of images on which exactly one of the two is right, the margin's
standard error over images, and McNemar's exact p: how large a margin one fine-tune seed resolves on this test set.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from run_outputs import run_parameters, run_splits, search_outputs

from evoprune.core.baselines import mask_within_budget, random_allocations
from evoprune.core.exits import input_shape
from evoprune.core.finetune import pruned_variant
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.importance import GroupL1
from evoprune.core.mask_codec import decode_masks
from evoprune.core.train import accuracy_per_exit, predict_exit_logits, train
from evoprune.core.units import ChromosomeLayout, build_layout
from evoprune.datasets import TorchModelDataset
from evoprune.pipelines.mask_search.nodes import MaskSearchParams


def allocations(member: np.ndarray, scores: np.ndarray, layout: ChromosomeLayout, budget: float) -> list[list[int]]:
    """Per unit count of the first group, the most units of the second that fit ``budget`` (others as the member)."""
    base = layout.units_kept(member)
    out = []
    for first in range(1, layout.groups[0].size + 1):
        fitting = [
            second
            for second in range(1, layout.groups[1].size + 1)
            if layout.flops_ratio(layout.mask_with_counts([first, second, *base[2:]], scores)[None])[0] <= budget
        ]
        if fitting:
            out.append([first, max(fitting), *base[2:]])
    return out


def paired_with(reference: np.ndarray, hits: np.ndarray) -> str:
    """Table cells comparing per-image hits (N,) bool with the reference's on the same images: margin (pt), share of
    images on which exactly one is right (%), the margin's standard error over images (pt), McNemar's exact p."""
    diff = hits.astype(float) - reference
    only_this, only_reference = int((diff > 0).sum()), int((diff < 0).sum())
    n = only_this + only_reference
    tail = sum(math.comb(n, k) for k in range(min(only_this, only_reference) + 1)) / 2**n if n else 0.5
    se = 100 * diff.std(ddof=1) / math.sqrt(len(diff))
    return f"{100 * diff.mean():+.2f} | {100 * n / len(diff):.2f} | {se:.2f} | {min(1.0, 2 * tail):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data", help="the prune run's outputs folder")
    parser.add_argument("--budget", type=float, default=0.2, help="FLOPs ratio of the dense network")
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 15])
    parser.add_argument("--allocations", nargs="*", default=[], help="e.g. 2,6,59,61,31 (units per group)")
    parser.add_argument(
        "--no-sweep", action="store_true", help="only the member and --allocations (no per-first-layer sweep)"
    )
    parser.add_argument("--variants", nargs="+", default=["keep"], help="re-init variants: keep, random, rewind, ...")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--env", default=None, help="read finetune, mask_search from conf/<env>")
    parser.add_argument(
        "--l1", action="store_true", help="also the global L1 baseline at the member's FLOPs (or --budget)"
    )
    parser.add_argument("--random-allocations", type=int, default=0, help="N random allocations, L1 within layers")
    parser.add_argument(
        "--without-search", action="store_true", help="a run up to build_exits: no member, L1 etc. at --budget"
    )
    args = parser.parse_args()
    params = run_parameters(args.env)  # what `kedro run [--env=ENV]` sees
    finetune = FinetuneParams.model_validate(params["finetune"])
    search = MaskSearchParams.model_validate(params["mask_search"]).search
    if args.without_search:  # build_exits' network; L1, random and given allocations at --budget itself
        trained, initial = (
            TorchModelDataset(filepath=f"{args.data}/06_models/multi_exit_model{suffix}.pt").load()
            for suffix in ("", "_init")
        )
    else:
        trained, initial, front = search_outputs(args.data)
    train_split, test_split = run_splits(args.data, "train", "test", dataset=args.dataset)
    cpu = torch.device("cpu")
    layout = build_layout(trained, input_shape(trained))
    scores = GroupL1(input_shape(trained))(trained, layout)
    networks, member_flops, sweep = {}, args.budget, []
    if not args.without_search:
        within = front[front["flops_ratio"] <= args.budget]
        if within.empty:
            raise SystemExit(f"no front member within {args.budget:.0%} of the FLOPs in {args.data}")
        row = within.loc[within["flops_ratio"].idxmax()]
        member_mask = decode_masks([row["mask"]], layout.num_bits)[0]
        networks[f"member{int(row['member'])}"], member_flops = member_mask, float(row["flops_ratio"])
        sweep = [] if args.no_sweep else allocations(member_mask, scores, layout, args.budget)
    for counts in [*sweep, *(
        [int(c) for c in a.split(",")] for a in args.allocations
    )]:  # fmt: skip
        try:
            networks[",".join(map(str, counts))] = layout.mask_with_counts(counts, scores)
        except ValueError as bad:  # a wrong --allocations: say so without a traceback, as before
            raise SystemExit(str(bad)) from None
    limits = (search.max_pruning_ratio, search.round_to)
    if args.l1:
        networks["l1 (global)"] = mask_within_budget(layout, scores, member_flops, *limits)
    drawn = random_allocations(
        layout, scores, member_flops, args.random_allocations, np.random.default_rng(args.seed), *limits
    )
    for k, mask in enumerate(drawn):
        networks[f"random allocation {k + 1}: {','.join(map(str, layout.units_kept(mask)))}"] = mask
    dense = 100 * accuracy_per_exit(trained, test_split, cpu)[-1]
    recipe, loss_weights = finetune.training, finetune.exit_loss_weights(trained)
    print(f"# {torch.get_num_threads()} torch threads, torch {torch.__version__}; dense test accuracy {dense:.2f}%")
    print(f"# units per group: {', '.join(f'{g.name} ({g.size})' for g in layout.groups)}")
    print(
        "| network | FLOPs % | weights | epochs | test acc. % | gap to dense (pt) | seconds |\n|---|---|---|---|---|---|---|"
    )
    hits = {}  # (network, variant, epochs) -> per test image: the final exit right
    for name, mask in networks.items():
        flops = 100 * layout.flops_ratio(mask[None])[0]
        for variant in args.variants:
            for epochs in args.epochs:
                start = time.perf_counter()
                model = pruned_variant(trained, initial, layout, mask, variant, args.seed)
                cfg = recipe.model_copy(update={"epochs": epochs})
                train(
                    model, train_split, None, cfg, cpu, args.seed, f"{name} {variant} ({epochs} epochs)", loss_weights
                )
                logits = predict_exit_logits(model, test_split["images"], cpu)[-1]
                hits[name, variant, epochs] = (logits.argmax(-1) == test_split["labels"]).numpy()
                acc = 100 * hits[name, variant, epochs].mean()
                seconds = time.perf_counter() - start
                print(
                    f"| {name} | {flops:.1f} | {variant} | {epochs} | {acc:.2f} | {acc - dense:+.2f} | {seconds:.0f} |",
                    flush=True,
                )
    if args.l1:
        print(
            "\n| network | weights | epochs | vs L1 (pt) | one right (%) | s.e. (pt) | McNemar p |\n|---|---|---|---|---|---|---|"
        )
        for (name, variant, epochs), right in hits.items():
            if name != "l1 (global)":
                print(f"| {name} | {variant} | {epochs} | {paired_with(hits['l1 (global)', variant, epochs], right)} |")


if __name__ == "__main__":
    main()
