"""Training speed of contiguous (NCHW) vs channels_last (NHWC) inputs and weights, in one run on this machine.

    .venv/bin/python benchmarks/training_memory_format.py          # after `kedro run --pipeline=prune`

Times one epoch of the fine-tune (finetune.training's optimiser and batch) of the first selected member and of
the dense multi-exit network, each format in turn, `--repeats` times; prints the median seconds per epoch and the
ratio. The epochs' losses agree to float rounding (the formats sum in other orders).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from evoprune.core.exits import input_shape
from evoprune.core.finetune import pruned_variant
from evoprune.core.train import TrainConfig, train
from evoprune.core.units import build_layout
from evoprune.datasets import PrunedMembersDataset, TensorDictDataset, TorchModelDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", default="data", help="the prune run's outputs folder")
    args = parser.parse_args()
    members = PrunedMembersDataset(filepath=f"{args.data}/06_models/selected_members.pt").load()
    initial = TorchModelDataset(filepath=f"{args.data}/06_models/multi_exit_model_init.pt").load()
    split = TensorDictDataset(filepath=f"{args.data}/05_model_input/fashion_mnist_train.pt").load()
    trained, cpu = members["model"], torch.device("cpu")
    layout = build_layout(trained, input_shape(trained))
    networks = {
        f"member {members['member_ids'][0]}": pruned_variant(trained, initial, layout, members["masks"][0], "keep", 0),
        "dense multi-exit": trained,
    }
    print(f"# {torch.get_num_threads()} torch threads, torch {torch.__version__}; seconds per epoch (median)")
    print("| network | contiguous | channels_last | speed-up |")
    print("|---|---|---|---|")
    for name, network in networks.items():
        seconds: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
        for _ in range(args.repeats):
            for fmt in seconds:
                cfg = TrainConfig(
                    epochs=1, optimizer="sgd", learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                    memory_format=fmt,
                )  # fmt: skip
                start = time.perf_counter()
                train(copy.deepcopy(network), split, None, cfg, cpu, seed=0, description=f"{name} {fmt}")
                seconds[fmt].append(time.perf_counter() - start)
        nchw, nhwc = (statistics.median(seconds[f]) for f in ("contiguous", "channels_last"))
        print(f"| {name} | {nchw:.2f} | {nhwc:.2f} | {nchw / nhwc:.2f}x |")


if __name__ == "__main__":
    main()
