"""Zero-shot transfer margins over group L1 for Scoring Net variants (issue 14: beat L1 in every cell).

For each variant, a Scoring Net is trained (``train_scoring_net``, as the scoring_net pipeline does) on the
multi-exit LeNet-5 of a finished prune run (plus, for ``multi<N>`` variants, N extra source LeNet-5s trained
here by ``extra_source_networks`` as the pipeline does, with conf/base's recipe unless the variant sets
``extra_sources``), then applied unchanged to the three ``default_targets()``: the digits LeNet-5, the
VGG-style net on 12k Fashion-MNIST images, and a LeNet-5 of classes 5-9 (whose net is trained, with the same
variant, on a LeNet-5 of classes 0-4, plus for ``multi<N>`` N more of classes 0-4). Masks are scored right
after pruning (``criteria_comparison``: adaptive BN where there is BatchNorm, no fine-tuning). Dense target
models and the class-split source are cached under ``--cache`` (keyed by seed), so variants differ only by
the Scoring Net and its extra sources.

    PYTHONPATH=src .venv/bin/python benchmarks/scoring_net_transfer_sweep.py --variant base prior1 --seed 0 \\
        [--data /work/run1/data] [--cache /tmp/scoring_net_sweep]

Prints, per variant, the in-domain hard-mask accuracies (``eval_budgets`` after each stage), the training
seconds of each net and a markdown table of zero-shot accuracy and margin over L1 per target and budget.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch

from evoprune.core.scoring_net import (
    ScoringNetConfig,
    TransferTarget,
    criteria_comparison,
    extra_source_networks,
    train_scoring_net,
)
from evoprune.core.scoring_net import features as features_module
from evoprune.core.scoring_net.sources import first_images
from evoprune.core.scoring_net.transfer import _target_splits, _trained_model, class_subset, default_targets
from evoprune.datasets import TensorDictDataset, TorchModelDataset

BUDGETS = (0.3, 0.5, 0.7)
NO_ACTIVATION = ["mean_activation", "apoz"]
# extra source networks: 12k images x 3 epochs each (the first sweep), 4k x 2 (conf/base since: 1/5 of the time)
_SOURCE_TRAINING = {"batch_size": 64, "optimizer": "adamw", "learning_rate": 3e-3, "weight_decay": 1e-4}
LARGE_SOURCES = {"train_images": 12000, "training": {**_SOURCE_TRAINING, "epochs": 3}}
SMALL_SOURCES = {"train_images": 4000, "training": {**_SOURCE_TRAINING, "epochs": 2}}
WIDTHS = [
    {"name": "lenet5", "conv_channels": c, "fc_features": f}
    for c, f in (((12, 32), [120, 84]), ((4, 12), [64, 32]), ((8, 24), [120, 84]), ((6, 16), [64, 32]))
]
WIDE_SOURCES = {**SMALL_SOURCES, "model": WIDTHS}  # LeNet-5s of four widths
ONE_EPOCH_SOURCES = {"train_images": 12000, "training": {**_SOURCE_TRAINING, "epochs": 1}}
# variant -> (ScoringNetConfig overrides, extra source LeNet-5s, per-layer normalisation of the unit features)
VARIANTS: dict[str, tuple[dict[str, Any], int, str]] = {
    "base": ({}, 0, "zscore"),
    "prior0.5": ({"l1_prior": 0.5}, 0, "zscore"),
    "prior1": ({"l1_prior": 1.0}, 0, "zscore"),
    "prior2": ({"l1_prior": 2.0}, 0, "zscore"),
    "noact": ({"ignored_features": NO_ACTIVATION}, 0, "zscore"),
    "rank": ({}, 0, "rank"),
    "multi2": ({"extra_sources": LARGE_SOURCES}, 2, "zscore"),
    "prior1_noact": ({"l1_prior": 1.0, "ignored_features": NO_ACTIVATION}, 0, "zscore"),
    "prior1_multi2": ({"l1_prior": 1.0, "extra_sources": LARGE_SOURCES}, 2, "zscore"),
    "prior2_multi2": ({"l1_prior": 2.0, "extra_sources": LARGE_SOURCES}, 2, "zscore"),
    "noact_multi2": ({"ignored_features": NO_ACTIVATION, "extra_sources": LARGE_SOURCES}, 2, "zscore"),
    "rank_multi2": ({"extra_sources": LARGE_SOURCES}, 2, "rank"),
    "prior1_rank": ({"l1_prior": 1.0}, 0, "rank"),
    "nobn": ({"ignored_features": ["bn_gamma"]}, 0, "zscore"),
    "noact_nobn": ({"ignored_features": ["bn_gamma", *NO_ACTIVATION]}, 0, "zscore"),
    "prior3_nobn": ({"l1_prior": 3.0, "ignored_features": ["bn_gamma"]}, 0, "zscore"),
    "nobn_multi2": ({"ignored_features": ["bn_gamma"], "extra_sources": LARGE_SOURCES}, 2, "zscore"),
    "noact_nobn_multi2": (
        {"ignored_features": ["bn_gamma", *NO_ACTIVATION], "extra_sources": LARGE_SOURCES},
        2,
        "zscore",
    ),
    "noapoz_nobn": ({"ignored_features": ["bn_gamma", "apoz"]}, 0, "zscore"),
    "prior1_noact_nobn": ({"l1_prior": 1.0, "ignored_features": ["bn_gamma", *NO_ACTIVATION]}, 0, "zscore"),
    "long_nobn": (
        {
            "ignored_features": ["bn_gamma"],
            "stages": [{"stage": "gates", "steps": 400}, {"stage": "refine", "steps": 200}],
        },
        0,
        "zscore",
    ),
    "prior1_nobn": ({"l1_prior": 1.0, "ignored_features": ["bn_gamma"]}, 0, "zscore"),
    "winner": ({"l1_prior": 1.0, "extra_sources": SMALL_SOURCES}, 4, "zscore"),  # = conf/base's Scoring Net
    "prior1_multi4": ({"l1_prior": 1.0, "extra_sources": LARGE_SOURCES}, 4, "zscore"),
    "prior1_multi8": ({"l1_prior": 1.0, "extra_sources": LARGE_SOURCES}, 8, "zscore"),
    "prior1_multi4_small": ({"l1_prior": 1.0, "extra_sources": SMALL_SOURCES}, 4, "zscore"),
    "prior1_multi8_small": ({"l1_prior": 1.0, "extra_sources": SMALL_SOURCES}, 8, "zscore"),
    "prior1_multi4_small_noapoz": (
        {"l1_prior": 1.0, "ignored_features": ["apoz"], "extra_sources": SMALL_SOURCES},
        4,
        "zscore",
    ),
    "prior1_multi4_small_noact": (
        {"l1_prior": 1.0, "ignored_features": NO_ACTIVATION, "extra_sources": SMALL_SOURCES},
        4,
        "zscore",
    ),
    "prior1_multi4_small_drop0.7": (
        {
            "l1_prior": 1.0,
            "extra_sources": SMALL_SOURCES,
            "stages": [{"stage": "gates", "feature_dropout": 0.7}, {"stage": "refine", "feature_dropout": 0.7}],
        },
        4,
        "zscore",
    ),
    "prior1_multi4_widths": ({"l1_prior": 1.0, "extra_sources": WIDE_SOURCES}, 4, "zscore"),
    "prior1_multi8_widths": ({"l1_prior": 1.0, "extra_sources": WIDE_SOURCES}, 8, "zscore"),
    "prior2_multi4_small": ({"l1_prior": 2.0, "extra_sources": SMALL_SOURCES}, 4, "zscore"),
    "prior1.5_multi4_small": ({"l1_prior": 1.5, "extra_sources": SMALL_SOURCES}, 4, "zscore"),
    "prior1_multi4_1epoch": ({"l1_prior": 1.0, "extra_sources": ONE_EPOCH_SOURCES}, 4, "zscore"),
    "prior0.5_multi4": ({"l1_prior": 0.5, "extra_sources": LARGE_SOURCES}, 4, "zscore"),
    "prior1_nobn_multi2": (
        {"l1_prior": 1.0, "ignored_features": ["bn_gamma"], "extra_sources": LARGE_SOURCES},
        2,
        "zscore",
    ),
}
_ZSCORE = features_module._zscore


def _rank_z(x: torch.Tensor) -> torch.Tensor:
    """Columns of (size, k) replaced by their z-scored ranks (ties share their mean rank); constant -> 0."""
    ranks = torch.zeros_like(x)
    for j in range(x.shape[1]):
        order = x[:, j].argsort(stable=True)
        r = torch.empty_like(x[:, j])
        r[order] = torch.arange(x.shape[0], dtype=x.dtype)
        for value in x[:, j].unique():  # ties: mean rank
            tied = x[:, j] == value
            r[tied] = r[tied].mean()
        ranks[:, j] = r
    return _ZSCORE(ranks)


def _cached(path: str, build) -> torch.nn.Module:
    """The model saved at ``path`` (spec + weights, loaded weights-only), else ``build()`` saved there."""
    dataset = TorchModelDataset(filepath=path)
    if os.path.exists(path):
        return dataset.load().eval()
    model = build()
    dataset.save(model)
    return model


def _lenet(split, seed: int, name: str, cache: str, classes: list[int] | None = None) -> torch.nn.Module:
    """A LeNet-5 on ``classes`` of ``split`` (12k images, 3 epochs: the class-split target's recipe)."""
    target = TransferTarget(name=name, classes=classes, train_images=12000)
    data = class_subset(split, classes) if classes else split
    data = first_images(data, target.train_images, seed)
    n = len(classes) if classes else 10
    model = _cached(
        f"{cache}/{name}_seed{seed}.pt", lambda: _trained_model(target, data, n, seed, torch.device("cpu"), name)
    )
    return model, data


def _margins(net, model, train_split, test_split, seed: int) -> list[dict[str, float]]:
    rows = criteria_comparison({"net": net}, model, train_split, test_split, BUDGETS, seed)
    l1 = {r["budget"]: r["test_accuracy"] for r in rows if r["method"] == "l1"}
    units = {r["budget"]: r["units_kept"] for r in rows if r["method"] == "l1"}
    return [
        {
            **r,
            "margin": 100 * (r["test_accuracy"] - l1[r["budget"]]),
            "l1": l1[r["budget"]],
            "l1_units": units[r["budget"]],
        }
        for r in rows
        if r["method"] == "net"
    ]


def run_variant(name: str, seed: int, data: str, cache: str) -> None:
    overrides, extra, normalisation = VARIANTS[name]
    features_module._zscore = _rank_z if normalisation == "rank" else _ZSCORE
    cfg = ScoringNetConfig(**{"l1_prior": 0.0, **overrides})  # the variants start from no prior
    splits = {
        s: TensorDictDataset(filepath=f"{data}/05_model_input/fashion_mnist_{s}.pt").load()
        for s in ("train", "validation", "test")
    }
    fashion = (splits["train"], splits["test"])
    run_model = TorchModelDataset(filepath=f"{data}/06_models/multi_exit_model.pt").load().eval()
    sources = cfg.extra_sources.model_copy(update={"count": extra})
    extras, extra_seconds = extra_source_networks(run_model, splits["train"], sources, seed)
    print(f"{name}: {extra} extra source networks trained in {extra_seconds:.1f} s")

    start = time.perf_counter()
    result = train_scoring_net(run_model, splits["train"], cfg, seed, splits["validation"], extra_sources=extras)
    seconds = time.perf_counter() - start
    in_domain = [{b: round(100 * a, 2) for b, a in st["accuracy_at_budget"].items()} for st in result.history["stages"]]
    print(
        f"\n## {name} seed {seed}: net trained in {seconds:.1f} s; in-domain hard-mask accuracy per stage {in_domain}"
    )

    table = []
    for target in default_targets():
        train_split, test_split = _target_splits(target, fashion, seed)
        n = len(target.classes) if target.classes is not None else 10
        model = _cached(
            f"{cache}/target_{target.name}_seed{seed}.pt",
            lambda t=target, s=train_split, k=n: _trained_model(t, s, k, seed, torch.device("cpu"), "the dense target"),
        )
        net = result.net
        if target.source_classes is not None:
            source, source_split = _lenet(splits["train"], seed, "source_classes_0_4", cache, target.source_classes)
            more, _ = extra_source_networks(source, class_subset(splits["train"], target.source_classes), sources, seed)
            start = time.perf_counter()
            net = train_scoring_net(source, source_split, cfg, seed, extra_sources=more).net
            print(f"{target.name}: source net trained in {time.perf_counter() - start:.1f} s")
        for r in _margins(net, model, train_split, test_split, seed):
            units = f"{r['units_kept']}/{r['l1_units']}"
            table.append((target.name, r["budget"], r["test_accuracy"], r["l1"], units, r["margin"]))
    print(
        "\n| variant | seed | target | budget | net acc. | L1 acc. | units net/L1 | margin (pt) |\n|---|---|---|---|---|---|---|---|"
    )
    for t, b, a, l1, u, m in table:
        print(f"| {name} | {seed} | {t} | {b:.1f} | {100 * a:.2f} | {100 * l1:.2f} | {u} | {m:+.2f} |")
    wins = sum(m > 0 for *_, m in table)
    print(
        f"summary {name} seed {seed}: "
        + " ".join(f"{m:+.2f}" for *_, m in table)
        + f" | wins {wins}/9 | mean {np.mean([m for *_, m in table]):+.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", nargs="+", default=["base"], choices=sorted(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="/work/run1/data", help="a finished prune run's outputs folder")
    parser.add_argument("--cache", default="/tmp/scoring_net_sweep")
    args = parser.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    torch.set_num_threads(1)
    for name in args.variant:
        run_variant(name, args.seed, args.data, args.cache)


if __name__ == "__main__":
    main()
