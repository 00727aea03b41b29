"""Zero-shot transfer of the Scoring Net against group L1 for several ``feature_dropout`` values (issue 14).

For each value, a Scoring Net is trained (the conf/base stages with that dropout, seed ``--seed``) on the
multi-exit network of a finished ``prune`` run, then applied unchanged to the digits (LeNet-5) and to the
VGG-style net on Fashion-MNIST, exactly as the ``transfer_scoring_net`` node does (``core.scoring_net.transfer``;
no adaptation, no native net). Prints one markdown row per value: the margin over L1 in points per target and
budget, and their mean.

    .venv/bin/python benchmarks/scoring_net_dropout.py --dropout 0 0.3 0.5 0.7 [--data data]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from evoprune.core.scoring_net import (
    ScoringNetConfig,
    TransferConfig,
    TransferTarget,
    train_scoring_net,
    transfer_scoring_net,
)
from evoprune.datasets import TensorDictDataset, TorchModelDataset

TRAINING = {"epochs": 2, "batch_size": 64, "optimizer": "adamw", "learning_rate": 0.003, "weight_decay": 0.0001}
TARGETS = [
    TransferTarget(name="digits", dataset="digits", training={**TRAINING, "epochs": 30}),
    TransferTarget(
        name="vgg",
        model={"name": "vgg", "stages": [[32], [64], [128]], "fc_features": [256]},
        train_images=12000,
        training=TRAINING,
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--data", default="data", help="the prune run's outputs folder")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    model = TorchModelDataset(filepath=f"{args.data}/06_models/multi_exit_model.pt").load()
    splits = tuple(
        TensorDictDataset(filepath=f"{args.data}/05_model_input/fashion_mnist_{s}.pt").load() for s in ("train", "test")
    )
    cfg = TransferConfig(adaptation_steps=0, native_reference=False, targets=TARGETS)
    rows_out = []
    for p in args.dropout:
        base = ScoringNetConfig()
        stages = [stage.model_copy(update={"feature_dropout": p}) for stage in base.stages]
        config = base.model_copy(update={"stages": stages})
        torch.manual_seed(args.seed)
        net = train_scoring_net(model, splits[0], config, args.seed).net
        rows = [r for r in transfer_scoring_net(net, config, splits, cfg, args.seed) if r["method"] != "l1"]
        rows_out.append((p, rows))
    cells = [(r["target"], r["budget"]) for r in rows_out[0][1]]
    print("| feature_dropout | " + " | ".join(f"{t} {100 * b:.0f}%" for t, b in cells) + " | mean | beats L1 |")
    print("|---" * (len(cells) + 3) + "|")
    for p, rows in rows_out:
        margins = [r["margin_vs_l1_pt"] for r in rows]
        wins = sum(m > 0 for m in margins)
        print(
            f"| {p:g} | "
            + " | ".join(f"{m:+.2f}" for m in margins)
            + f" | {np.mean(margins):+.2f} | {wins}/{len(margins)} |"
        )


if __name__ == "__main__":
    main()
