"""Which cheap score ranks masks of equal FLOPs by their accuracy after the fine-tune? (issue 16, part 3)

    .venv/bin/python benchmarks/finetune_proxies.py          # after `kedro run --pipeline=prune`

The search ranks masks by their accuracy before any fine-tuning; select_members exists because that ranks
LeNet-5's members poorly after it. This measures candidate fitness functions on the masks the search actually
has to tell apart: at each budget (``--budgets``, ratios of the dense FLOPs) the front member with the most
FLOPs within it, ``--neighbours`` masks around it at the same FLOPs (its units ranked first with noise, refitted
by the baselines' ``mask_within_budget``: what the GA's offspring look like) and the budget-fit masks of the
l1, taylor and lamp criteria and of ``--randoms`` random draws. Every mask is scored by

- ``steps0``: final-exit validation accuracy of the pruned network (the search's fitness today),
- ``steps<k>``: the same after k SGD steps of the fine-tune (finetune.training's optimiser and schedule squeezed
  into k steps of the first k * batch training images),
- ``probe_logits`` / ``probe_fc``: validation accuracy of a ridge-regression probe (closed form, one-hot targets,
  ``--probe-images`` training images) on the pruned network's features at the input of the final exit's logit
  layer / of the first Linear layer (the flattened conv features): how much a mask leaves linearly decodable,
  whatever the damage to the layers after it,

and fine-tuned exactly as the members are (``finetune.training``, all exits) with ``--truth-seeds`` seeds; the
truth is the mean final-exit validation accuracy after that. Prints one row per mask and Spearman's rank
correlation of each score with the truth per budget, with the seconds each score costs per mask.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from run_outputs import run_splits, search_outputs
from scipy.stats import spearmanr

from evoprune.core.baselines import BaselinePruner, mask_within_budget
from evoprune.core.data import images_to_float
from evoprune.core.exits import input_shape
from evoprune.core.finetune import finetune_member, pruned_variant
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.importance import calibration_batch
from evoprune.core.models.adapter import logit_layers
from evoprune.core.train import accuracy_per_exit, train
from evoprune.core.units import build_layout


def _masks_at(budget: float, front, trained, layout, train_split, neighbours: int, randoms: int, seed: int):
    """name -> mask at about ``budget`` FLOPs (see the module docstring)."""
    within = front[front["flops_ratio"] <= budget]
    member = within.loc[within["flops_ratio"].idxmax()]
    member_mask = np.array([c == "1" for c in member["mask"]])
    flops = float(member["flops_ratio"])
    out = {f"member{int(member['member'])}": member_mask}
    rng = np.random.default_rng(seed)
    for k in range(neighbours):
        scores = member_mask + 1.3 * rng.random(layout.num_bits)
        out[f"neighbour{k}"] = mask_within_budget(layout, scores, flops, 0.7)
    calibration = calibration_batch(train_split, 256, seed)
    shape = input_shape(trained)
    for criterion in ("l1", "taylor", "lamp"):
        pruner = BaselinePruner(criterion, "budget_fit", shape, calibration, max_pruning_ratio=0.7)
        out[criterion] = pruner.masks(trained, layout, np.array([flops]), seed)[0]
    for k in range(randoms):
        pruner = BaselinePruner("random", "budget_fit", shape, None, max_pruning_ratio=0.7)
        out[f"random{k}"] = pruner.masks(trained, layout, np.array([flops]), seed + k)[0]
    return out


def _inputs_of(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, d) float64 inputs of ``layer`` when ``model`` (eval) reads uint8 ``images``, flattened per sample."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().flatten(1)))
    try:
        with torch.inference_mode():
            for first in range(0, images.shape[0], 1000):
                model.eval()(images_to_float(images[first : first + 1000]))
    finally:
        handle.remove()
    return torch.cat(seen).double()


def probe_accuracy(model, layer, train_split, val_split, images: int, ridge: float = 1e-3) -> float:
    """Validation accuracy (%) of a ridge-regression probe on ``layer``'s inputs, fitted on ``images`` training
    images to one-hot labels (closed form; features standardised on the training images)."""
    x = _inputs_of(model, layer, train_split["images"][:images])
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    y = torch.nn.functional.one_hot(train_split["labels"][:images], int(train_split["labels"].max()) + 1).double()
    weights = torch.linalg.solve(x.T @ x + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)
    v = (_inputs_of(model, layer, val_split["images"]) - mean) / std
    v = torch.cat([v, torch.ones(len(v), 1, dtype=v.dtype)], 1)
    return 100 * float(((v @ weights).argmax(1) == val_split["labels"]).double().mean())


def _first_linear(model: torch.nn.Module) -> torch.nn.Module:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Linear))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data", help="the prune run's outputs folder")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.45])
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 100, 400])
    parser.add_argument("--neighbours", type=int, default=6)
    parser.add_argument("--randoms", type=int, default=2)
    parser.add_argument("--truth-seeds", type=int, default=1)
    parser.add_argument("--probe-images", type=int, default=5000, help="training images the ridge probes fit")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    trained, initial, front = search_outputs(args.data)
    train_split, val_split = run_splits(args.data, "train", "validation")
    cpu = torch.device("cpu")
    layout = build_layout(trained, input_shape(trained))
    finetune = FinetuneParams().training
    print(f"# {torch.get_num_threads()} torch threads, torch {torch.__version__}; validation accuracy (final exit) %")
    print(f"# truth: {finetune.epochs}-epoch fine-tune, mean of {args.truth_seeds} seed(s)")
    names = ["steps0", *(f"steps{k}" for k in args.steps), "probe_logits", "probe_fc"]
    for budget in args.budgets:
        masks = _masks_at(budget, front, trained, layout, train_split, args.neighbours, args.randoms, args.seed)
        scores = {n: [] for n in [*names, "truth"]}
        seconds = {n: 0.0 for n in scores}
        print(f"\n## budget {budget:.2f}\n| mask | FLOPs % | {' | '.join(scores)} |\n|---|---|{'---|' * len(scores)}")
        for name, mask in masks.items():
            start = time.perf_counter()
            pruned = pruned_variant(trained, initial, layout, mask, "keep", args.seed)
            scores["steps0"].append(100 * accuracy_per_exit(pruned, val_split, cpu)[-1])
            seconds["steps0"] += time.perf_counter() - start
            for probe, layer in (("probe_logits", logit_layers(pruned)[0]), ("probe_fc", _first_linear(pruned))):
                start = time.perf_counter()
                scores[probe].append(probe_accuracy(pruned, layer, train_split, val_split, args.probe_images))
                seconds[probe] += time.perf_counter() - start
            for k in args.steps:
                start = time.perf_counter()
                cfg = finetune.model_copy(update={"epochs": 1, "train_subset": k * finetune.batch_size})
                model = pruned_variant(trained, initial, layout, mask, "keep", args.seed)
                train(model, train_split, None, cfg, cpu, args.seed, f"{name} steps{k}")
                scores[f"steps{k}"].append(100 * accuracy_per_exit(model, val_split, cpu)[-1])
                seconds[f"steps{k}"] += time.perf_counter() - start
            start, truth = time.perf_counter(), []
            for s in range(args.truth_seeds):
                _, history = finetune_member(
                    trained, initial, layout, mask, "keep", train_split, val_split, finetune, cpu, args.seed + s,
                    None, f"{name} fine-tune seed {args.seed + s}",
                )  # fmt: skip
                truth.append(100 * history["val_accuracy"][-1])
            scores["truth"].append(float(np.mean(truth)))
            seconds["truth"] += time.perf_counter() - start
            flops = 100 * layout.flops_ratio(mask[None])[0]
            print(f"| {name} | {flops:.1f} | {' | '.join(f'{v[-1]:.2f}' for v in scores.values())} |", flush=True)
        rho = {n: spearmanr(scores[n], scores["truth"]).statistic for n in names}
        print(f"| Spearman vs truth | | {' | '.join(f'{rho[n]:+.2f}' for n in names)} | |")
        print(f"| seconds per mask | | {' | '.join(f'{seconds[n] / len(masks):.2f}' for n in scores)} |")


if __name__ == "__main__":
    main()
