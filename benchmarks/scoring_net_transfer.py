"""Zero-shot transfer of a trained Scoring Net against group L1 at equal FLOPs (issue 14, item 5).

Reads the Scoring Net a `kedro run --pipeline=scoring_net` saved (trained on the LeNet-5 of that run) and
applies it unchanged to
  (a) another dataset: a LeNet-5 trained here on scikit-learn's bundled digits (8x8 upsampled to 28x28);
  (b) another model: the VGG-style net (conf/vgg's widths) trained here on a Fashion-MNIST subset.
Both criteria pick a mask at each budget with the same budget fitting; the masks are scored right after
pruning (no fine-tuning; adaptive BN where there is BatchNorm), so only the rankings are compared.

``python benchmarks/scoring_net_transfer.py [--net data/06_models/scoring_net.pt] [--budgets 0.3 0.5 0.7]``;
prints markdown tables.
"""

from __future__ import annotations

import argparse
import time

import torch

from evoprune.core.models import build_model
from evoprune.core.scoring_net import criteria_comparison, digits_split
from evoprune.core.train import TrainConfig, accuracy_per_exit, train
from evoprune.datasets import ScoringNetDataset, TensorDictDataset

VGG = {"name": "vgg", "stages": [[32], [64], [128]], "fc_features": [256]}


def _trained(spec: dict, train_split, epochs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(spec)
    cfg = TrainConfig(epochs=epochs, batch_size=64, optimizer="adamw", learning_rate=3e-3, weight_decay=1e-4)
    train(model, train_split, None, cfg, torch.device("cpu"), seed, f"train {spec['name']}")
    return model.eval()


def _print(title: str, rows: list[dict], dense: float) -> None:
    print(f"\n### {title} (dense {100 * dense:.2f}%)\n")
    print("| budget | scoring_net acc. | L1 acc. | scoring_net FLOPs | L1 FLOPs | margin (pt) |")
    print("|---|---|---|---|---|---|")
    for b in sorted({r["budget"] for r in rows}):
        s, l1 = (next(r for r in rows if r["budget"] == b and r["method"] == m) for m in ("scoring_net", "l1"))
        print(
            f"| {b:.2f} | {100 * s['test_accuracy']:.2f}% | {100 * l1['test_accuracy']:.2f}% | "
            f"{100 * s['flops_ratio']:.1f}% | {100 * l1['flops_ratio']:.1f}% | "
            f"{100 * (s['test_accuracy'] - l1['test_accuracy']):+.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", default="data/06_models/scoring_net.pt")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--splits", default="data/05_model_input", help="the prune run's Fashion-MNIST splits")
    parser.add_argument("--digits-epochs", type=int, default=30)
    parser.add_argument("--vgg-epochs", type=int, default=2)
    parser.add_argument("--vgg-images", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    net = ScoringNetDataset(filepath=args.net).load()

    start = time.perf_counter()
    train_split, test_split = digits_split(seed=args.seed)
    lenet = _trained({"name": "lenet5"}, train_split, args.digits_epochs, args.seed)
    dense = accuracy_per_exit(lenet, test_split, torch.device("cpu"))[-1]
    rows = criteria_comparison({"scoring_net": net}, lenet, train_split, test_split, args.budgets, args.seed)
    _print(f"(a) LeNet-5 on scikit-learn digits ({time.perf_counter() - start:.0f} s)", rows, dense)

    start = time.perf_counter()
    full = TensorDictDataset(filepath=f"{args.splits}/fashion_mnist_train.pt").load()
    fmnist_test = TensorDictDataset(filepath=f"{args.splits}/fashion_mnist_test.pt").load()
    pick = torch.randperm(len(full["labels"]), generator=torch.Generator().manual_seed(args.seed))[: args.vgg_images]
    fmnist_train = {k: v[pick] for k, v in full.items()}
    vgg = _trained(VGG, fmnist_train, args.vgg_epochs, args.seed)
    dense = accuracy_per_exit(vgg, fmnist_test, torch.device("cpu"))[-1]
    rows = criteria_comparison({"scoring_net": net}, vgg, fmnist_train, fmnist_test, args.budgets, args.seed)
    _print(f"(b) VGG-style net on Fashion-MNIST ({time.perf_counter() - start:.0f} s)", rows, dense)


if __name__ == "__main__":
    main()
