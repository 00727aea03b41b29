"""Where a transferred Scoring Net wins or loses against group L1: how many units per layer, or which units?

Issue 14 asks the Scoring Net, applied zero-shot to another model and another dataset, to beat L1 at equal FLOPs.
This trains the default Scoring Net (conf/base's ``ScoringNetConfig``, with its extra source networks) on a
finished prune run's multi-exit LeNet-5, then on each target (the digits LeNet-5 and the VGG-style net of
``default_targets()``, plus with ``--resnet`` a ResNet-20 (16-32-64) trained like the VGG target on 12k 28x28
Fashion-MNIST images) scores, at each budget, right after pruning (adaptive BN where there is BatchNorm, no
fine-tuning, like ``criteria_comparison``):

- ``net``, ``l1``, ``taylor``: the Scoring Net's, group L1's and group Taylor's masks (one budget fitting);
- ``net counts + l1``: the Scoring Net's units per layer, group L1's choice of units within each layer;
- ``l1 counts + net``: L1's units per layer, the Scoring Net's choice within each layer;
- ``net counts + taylor`` / ``l1 counts + taylor``: the same with Taylor choosing the units;
- with ``--native``, ``native``: a Scoring Net trained on the target itself (the same config, no extra sources, like
  the pipeline's ``scoring_net_native``): what the criterion reaches there without any transfer.

Dense targets are cached under ``--cache`` like ``scoring_net_transfer_sweep.py`` (same keys, so both scripts share
them). One process per seed; 1 torch thread.

    PYTHONPATH=src .venv/bin/python benchmarks/transfer_allocation.py --data data --seed 42 [--resnet]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from scoring_net_transfer_sweep import _cached

from evoprune.core.baselines import mask_within_budget
from evoprune.core.data import images_to_float
from evoprune.core.importance import GroupL1, GroupTaylor, calibration_batch
from evoprune.core.models.adapter import input_shape
from evoprune.core.scoring_net import ScoringNetConfig, TransferTarget, extra_source_networks, train_scoring_net
from evoprune.core.scoring_net.features import at_budget, split_features
from evoprune.core.scoring_net.gates import hard_mask_accuracy
from evoprune.core.scoring_net.model import mask_at_budget
from evoprune.core.scoring_net.transfer import _target_splits, _trained_model, default_targets
from evoprune.core.units import ChromosomeLayout, build_layout
from evoprune.datasets import TensorDictDataset, TorchModelDataset

BUDGETS = (0.3, 0.5, 0.7)


def with_counts(layout: ChromosomeLayout, counts_from: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The mask keeping, in every group, as many units as ``counts_from`` does: the best by ``scores``."""
    return layout.mask_with_counts(layout.units_kept(counts_from), scores)


def resnet_target() -> TransferTarget:
    vgg = next(t for t in default_targets() if t.name == "fashion_mnist_vgg")
    spec = {"name": "resnet_cifar", "depth": 20, "width": 16, "in_channels": 1, "input_size": 28}
    return vgg.model_copy(update={"name": "fashion_mnist_resnet20", "model": spec})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data", help="a finished prune run's outputs folder")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cache", default="/tmp/scoring_net_sweep")
    parser.add_argument("--resnet", action="store_true", help="also a ResNet-20 target (about 1 min 10 s to train)")
    parser.add_argument("--native", action="store_true", help="also a Scoring Net trained on each target itself")
    args = parser.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    torch.set_num_threads(1)
    seed, cpu = args.seed, torch.device("cpu")
    splits = {
        s: TensorDictDataset(filepath=f"{args.data}/05_model_input/fashion_mnist_{s}.pt").load()
        for s in ("train", "test")
    }
    run_model = TorchModelDataset(filepath=f"{args.data}/06_models/multi_exit_model.pt").load().eval()
    cfg = ScoringNetConfig()
    extras, _ = extra_source_networks(run_model, splits["train"], cfg.extra_sources, seed)
    start = time.perf_counter()
    net = train_scoring_net(run_model, splits["train"], cfg, seed, extra_sources=extras).net
    print(f"# seed {seed}: Scoring Net trained in {time.perf_counter() - start:.1f} s (conf/base's config)")
    targets = [t for t in default_targets() if t.source_classes is None] + ([resnet_target()] if args.resnet else [])
    print(
        "| target | budget | mask | FLOPs | test acc. % | vs l1 (pt) | units per group |\n|---|---|---|---|---|---|---|"
    )
    for target in targets:
        train_split, test_split = _target_splits(target, (splits["train"], splits["test"]), seed)
        model = _cached(
            f"{args.cache}/target_{target.name}_seed{seed}.pt",
            lambda t=target, s=train_split: _trained_model(t, s, 10, seed, cpu, "the dense target"),
        )
        layout = build_layout(model, input_shape(model))
        features = split_features(model, layout, train_split, cfg.feature_images, seed)
        l1 = GroupL1(input_shape(model))(model, layout)
        taylor = GroupTaylor(input_shape(model), calibration_batch(train_split, 256, seed))(model, layout)
        native = train_scoring_net(model, train_split, cfg, seed).net if args.native else None
        images, labels = images_to_float(test_split["images"]), test_split["labels"]
        calibration = [images_to_float(train_split["images"][:512])]
        for budget in BUDGETS:
            net_scores = net.scores(at_budget(features, budget)).double().numpy()
            net_mask, l1_mask = mask_at_budget(net, features, layout, budget), mask_within_budget(layout, l1, budget)
            masks = {
                "net": net_mask,
                "l1": l1_mask,
                "taylor": mask_within_budget(layout, taylor, budget),
                "net counts + l1": with_counts(layout, net_mask, l1),
                "l1 counts + net": with_counts(layout, l1_mask, net_scores),
                "net counts + taylor": with_counts(layout, net_mask, taylor),
                "l1 counts + taylor": with_counts(layout, l1_mask, taylor),
            }
            if native is not None:
                masks["native"] = mask_at_budget(native, features, layout, budget)
            accuracy = {
                k: 100 * hard_mask_accuracy(model, layout, m, images, labels, calibration) for k, m in masks.items()
            }
            for name, mask in masks.items():
                flops = layout.flops_ratio(mask[None])[0]
                print(
                    f"| {target.name} | {budget:.1f} | {name} | {flops:.3f} | {accuracy[name]:.2f} | "
                    f"{accuracy[name] - accuracy['l1']:+.2f} | {','.join(map(str, layout.units_kept(mask)))} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
