"""LSTM pruning on row-sequential Fashion-MNIST (issue 15): hidden-state pruning, hidden units removed by
NSGA-II, the L1 baseline at the member's FLOPs, and the CPU latency of the sparse recurrent product.

Needs the dense LSTM of the ``lstm`` environment: ``kedro run --env=lstm --pipeline=prune
--to-nodes=train_dense.evaluate_dense_model`` (about 3 min here), then
``python benchmarks/lstm_pruning.py [--quick]``. Prints markdown tables; all timings in one process.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from evoprune.core.baselines import mask_within_budget
from evoprune.core.exits import build_network
from evoprune.core.finetune import latency_ms
from evoprune.core.hidden_state import calibrate_thresholds, finetune_hidden_state, run_pruned
from evoprune.core.importance import GroupL1
from evoprune.core.masking import prune_physically
from evoprune.core.search.api import search_pruning_masks
from evoprune.core.search.run import SearchConfig
from evoprune.core.train import TrainConfig, evaluate, train
from evoprune.core.units import build_layout

DATA = Path("data/lstm")
CPU = torch.device("cpu")


def _load(path: Path):
    if not path.is_file():
        raise SystemExit(
            f"{path} is missing: run `kedro run --env=lstm --pipeline=prune --to-nodes=train_dense.evaluate_dense_model`"
        )
    return torch.load(path, weights_only=True)


def _table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in columns) + " |")
    return "\n".join(lines)


def hidden_state_rows(dense, splits, sparsities, finetune_cfg, seed):
    rows = []
    for target in [0.0, *sparsities]:
        thresholds = calibrate_thresholds(dense, splits["validation"], target, 4, CPU)
        acc, stats = run_pruned(dense, splits["test"], thresholds, 4, CPU)
        row = {"target": target, "finetuned": "no", "test_acc": acc, "sparsity": stats.sparsity()[0]}
        row["skipped_MACs_share"] = sum(stats.skipped_macs) / sum(stats.dense_macs)
        rows.append(row)
        if target == 0.0:
            continue
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        thresholds, _ = finetune_hidden_state(
            model, splits["train"], splits["validation"], target, 4, finetune_cfg, CPU, seed
        )
        seconds = time.perf_counter() - start
        acc, stats = run_pruned(model, splits["test"], thresholds, 4, CPU)
        rows.append(
            {
                "target": target,
                "finetuned": f"yes ({seconds:.0f} s)",
                "test_acc": acc,
                "sparsity": stats.sparsity()[0],
                "skipped_MACs_share": sum(stats.skipped_macs) / sum(stats.dense_macs),
            }
        )
    return rows


def sparse_product_ms(hidden: int, sparsity: float, batch: int, repeats: int = 50) -> dict[str, float]:
    """U·h at one step: dense (4H x H)·(H x B) against the kept columns only (gathered), the best case
    where the zero pattern is shared by the batch."""
    u = torch.randn(4 * hidden, hidden)
    h = torch.randn(hidden, batch)
    kept = torch.randperm(hidden)[: max(1, round(hidden * (1 - sparsity)))]
    dense_t, sparse_t = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            t = time.perf_counter()
            u @ h
            dense_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            u.index_select(1, kept) @ h.index_select(0, kept)
            sparse_t.append(time.perf_counter() - t)
    return {"dense_us": 1e6 * statistics.median(dense_t), "gathered_us": 1e6 * statistics.median(sparse_t)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small search and 1 fine-tune epoch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    checkpoint = _load(DATA / "06_models/dense_model.pt")
    dense = build_network(checkpoint["spec"])
    dense.load_state_dict(checkpoint["state_dict"])
    dense.eval()
    splits = {s: _load(DATA / f"05_model_input/fashion_mnist_{s}.pt") for s in ("train", "validation", "test")}
    dense_acc = evaluate(dense, splits["test"], CPU)
    print(f"dense LSTM: test accuracy {dense_acc:.4f}, {sum(p.numel() for p in dense.parameters())} parameters\n")

    epochs = 1 if args.quick else 3
    cfg = TrainConfig(epochs=epochs, optimizer="adamw", learning_rate=1e-3, weight_decay=1e-4, schedule="onecycle")
    print("## Hidden-state pruning (groups of 4; thresholds from validation, accuracy on test)\n")
    print(
        _table(
            hidden_state_rows(dense, splits, [0.5] if args.quick else [0.3, 0.5, 0.7], cfg, args.seed),
            ["target", "finetuned", "test_acc", "sparsity", "skipped_MACs_share"],
        )
    )

    print("\n## Hidden units removed (NSGA-II member vs L1 at its FLOPs, fine-tuned alike)\n")
    layout = build_layout(dense, (1, 28, 28))
    search = SearchConfig(
        pop_size=16 if args.quick else 32, generations=3 if args.quick else 12, max_accuracy_drop=0.03
    )
    val = {k: v[:2000] for k, v in splits["validation"].items()}
    start = time.perf_counter()
    outcome = search_pruning_masks(dense, val, None, search, seed=args.seed, device=CPU)
    search_s = time.perf_counter() - start
    front_x, front_f = outcome.result.front_X, outcome.result.front_F
    half = front_x.sum(1) <= layout.num_bits // 2
    pick = np.flatnonzero(half)[front_f[half, 0].argmin()] if half.any() else front_x.sum(1).argmin()
    member_mask = front_x[pick]
    flops_ratio = layout.cost(member_mask[None])["flops"][0] / layout.dense_flops
    l1_mask = mask_within_budget(layout, GroupL1((1, 28, 28))(dense, layout), flops_ratio)
    ft = TrainConfig(epochs=epochs + 2, optimizer="adamw", learning_rate=2e-3, weight_decay=1e-4, schedule="onecycle")
    rows = [
        {"model": "dense", "kept_units": layout.num_bits, "flops_ratio": 1.0, "test_acc": dense_acc}
        | _latency(dense, dense, splits)
    ]
    for name, mask in (("nsga2 member", member_mask), ("l1", l1_mask)):
        model = prune_physically(dense, layout, mask, (1, 28, 28))
        train(model, splits["train"], splits["validation"], ft, CPU, args.seed, f"finetune {name}")
        rows.append(
            {
                "model": name,
                "kept_units": int(mask.sum()),
                "flops_ratio": float(layout.cost(mask[None])["flops"][0] / layout.dense_flops),
                "test_acc": evaluate(model, splits["test"], CPU),
            }
            | _latency(model, dense, splits)
        )
    print(f"search: {search_s:.0f} s, front of {len(front_x)}\n")
    print(
        _table(
            rows,
            [
                "model",
                "kept_units",
                "flops_ratio",
                "test_acc",
                "latency_ms_batch1",
                "latency_ms_batch256",
                "speedup_batch256",
            ],
        )
    )

    print("\n## Sparse recurrent product U·h (one step, hidden 128), median of 50\n")
    prod = []
    for sparsity in (0.0, 0.5, 0.7):
        for batch in (1, 256):
            prod.append({"sparsity": sparsity, "batch": batch} | sparse_product_ms(128, sparsity, batch))
    print(_table(prod, ["sparsity", "batch", "dense_us", "gathered_us"]))


def _latency(model, dense, splits) -> dict[str, float]:
    out = latency_ms(model, splits["test"]["images"], (1, 256), 15, CPU, reference=dense, memory_format="contiguous")
    return {k: out[k] for k in ("latency_ms_batch1", "latency_ms_batch256", "speedup_batch256")}


if __name__ == "__main__":
    main()
