"""Dynamic sparse training vs global magnitude pruning at the same sparsity and the same total epochs, over
seeds, on a plain (single-exit) network.

    .venv/bin/python benchmarks/dst_seeds.py --model lenet5 --seeds 1 2 3       # needs data/05_model_input
    .venv/bin/python benchmarks/dst_seeds.py --model lenet300 --target-kept 0.04
    .venv/bin/python benchmarks/dst_seeds.py --target-kept 0.045 --ramp 0.5 --learning-rate 0.05 --schedule cosine \
        --weight-decay 5e-4 --epochs 35

Per seed: θ0 from the seed; the dense network trained from θ0 as conf/base's train_dense says (its epochs: E_d);
DST for E epochs (conf/base's dst.unstructured, or a sparsity controller with --target-kept, its target ramped
with --ramp) from θ0, or from the dense network with --start-from trained; global magnitude pruning
(torch.nn.utils.prune) of the dense network to DST's share of weights, fine-tuned with conf/base's finetune
recipe for E - E_d epochs from θ0, E epochs from the trained network (total epochs equal). Prints test accuracy
and weights kept per seed and as mean ± std.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
from kedro.config import OmegaConfigLoader

from evoprune import settings
from evoprune.core.models import build_model
from evoprune.core.sparse import ControllerConfig, SparseTrainingConfig, train_sparse, weight_sparsity
from evoprune.core.sparse.magnitude import magnitude_baseline
from evoprune.core.train import TrainConfig, evaluate, train
from evoprune.datasets import TensorDictDataset

MODELS = {"lenet5": {"name": "lenet5"}, "lenet300": {"name": "lenet300"}}


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="lenet5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--target-kept", type=float, default=None, help="share of weights kept (controller on)")
    parser.add_argument("--ramp", type=float, default=0.0, help="controller: share of training to ramp the target")
    parser.add_argument("--epochs", type=int, default=None, help="DST epochs (default: conf/base dst)")
    parser.add_argument("--learning-rate", type=float, default=None, help="DST peak learning rate (default: conf)")
    parser.add_argument("--schedule", choices=["constant", "cosine", "onecycle"], default=None)
    parser.add_argument("--weight-decay", type=float, default=None, help="DST weight decay (default: conf)")
    parser.add_argument("--start-from", choices=["init", "trained"], default="init")
    parser.add_argument("--data", default="data/05_model_input/fashion_mnist_{split}.pt")
    args = parser.parse_args()
    params = OmegaConfigLoader("conf", env="base", **settings.CONFIG_LOADER_ARGS)["parameters"]
    dense_cfg = TrainConfig.model_validate(params["train_dense"]["training"])
    dst_cfg = SparseTrainingConfig.model_validate(params["dst"]["unstructured"])
    if args.epochs:
        dst_cfg.training.epochs = args.epochs
    if args.learning_rate:
        dst_cfg.training.learning_rate = args.learning_rate
    if args.schedule:
        dst_cfg.training.schedule = args.schedule
    if args.weight_decay is not None:
        dst_cfg.training.weight_decay = args.weight_decay
    if args.target_kept:
        dst_cfg.controller = ControllerConfig(target_kept=args.target_kept, ramp=args.ramp)
    splits = {s: TensorDictDataset(filepath=args.data.format(split=s)).load() for s in ("train", "validation", "test")}
    cpu = torch.device("cpu")
    from_trained = args.start_from == "trained"
    finetune_epochs = dst_cfg.training.epochs if from_trained else max(1, dst_cfg.training.epochs - dense_cfg.epochs)
    magnitude_cfg = TrainConfig.model_validate({**params["finetune"]["training"], "epochs": finetune_epochs})
    print(f"# {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}")
    print(
        f"# dense {dense_cfg.epochs} epochs; DST {dst_cfg.training.epochs} epochs from {args.start_from} (alpha "
        f"{dst_cfg.alpha}, controller {dst_cfg.controller}, lr {dst_cfg.training.learning_rate} "
        f"{dst_cfg.training.schedule}, weight decay {dst_cfg.training.weight_decay}); magnitude: dense + {finetune_epochs} fine-tune epochs"
    )
    print("| seed | dense acc | DST acc | DST kept | magnitude acc | DST - magnitude (pt) | DST - dense (pt) | DST s |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        initial = build_model(MODELS[args.model])
        dense = copy.deepcopy(initial)
        train(dense, splits["train"], None, dense_cfg, cpu, seed, "dense")
        start = time.perf_counter()
        result = train_sparse(
            copy.deepcopy(dense if from_trained else initial), splits["train"], None, dst_cfg, cpu, seed
        )
        seconds = time.perf_counter() - start
        kept = 1.0 - weight_sparsity(result.model)["total"]
        magnitude, _ = magnitude_baseline(dense, kept, splits["train"], None, magnitude_cfg, cpu, seed)
        accs = [100 * evaluate(m, splits["test"], cpu) for m in (dense, result.model, magnitude)]
        rows.append((*accs, 100 * kept))
        print(
            f"| {seed} | {accs[0]:.2f} | {accs[1]:.2f} | {100 * kept:.2f}% | {accs[2]:.2f} | "
            f"{accs[1] - accs[2]:+.2f} | {accs[1] - accs[0]:+.2f} | {seconds:.0f} |",
            flush=True,
        )
    columns = list(zip(*rows, strict=True))
    print(
        f"| mean ± std | {_mean_std(list(columns[0]))} | {_mean_std(list(columns[1]))} | "
        f"{_mean_std(list(columns[3]))}% | {_mean_std(list(columns[2]))} | "
        f"{_mean_std([d - m for d, m in zip(columns[1], columns[2], strict=True)])} | "
        f"{_mean_std([d - e for d, e in zip(columns[1], columns[0], strict=True)])} | |"
    )


if __name__ == "__main__":
    main()
