"""What removing LSTM hidden units and zeroing hidden-state elements buy on this CPU (issue 15).

1. The row-sequential LSTM classifier (28 steps of 28 pixels) with H hidden units, fused kernel (oneDNN),
   timed against H = 128 in turn within every repeat, at batch 1 and 256.
2. One step's recurrent product U·h (4H x H times H x B) dense, and with the zero elements skipped by
   gathering the kept columns, the best case for hidden-state pruning (the same zero pattern for the whole
   batch; a real batch has one pattern per sequence).

``python benchmarks/lstm_latency.py``; prints markdown tables, all timings in one process.
"""

from __future__ import annotations

import statistics
import time

import torch

from evoprune.core.cost import interleaved_seconds, paired_speedup
from evoprune.core.models import build_model


def _table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in columns) + " |")
    return "\n".join(lines)


def hidden_size_rows(sizes: list[int], batches: list[int], repeats: int) -> list[dict]:
    torch.manual_seed(0)
    models = {h: build_model({"name": "lstm_seq", "hidden_size": h}).eval() for h in sizes}
    rows = []
    with torch.inference_mode():
        for batch in batches:
            x = torch.rand(batch, 1, 28, 28)
            times = interleaved_seconds({h: (lambda m=m, x=x: m(x)) for h, m in models.items()}, repeats, warmup=3)
            for h in sizes:
                rows.append(
                    {
                        "hidden": h,
                        "batch": batch,
                        "ms": 1e3 * statistics.median(times[h]),
                        "speedup_vs_128": paired_speedup(times[sizes[0]], times[h]),
                    }
                )
    return rows


def recurrent_product_rows(hidden: int, sparsities: list[float], batches: list[int], repeats: int) -> list[dict]:
    torch.manual_seed(0)
    u = torch.randn(4 * hidden, hidden)
    rows = []
    with torch.inference_mode():
        for batch in batches:
            h = torch.randn(hidden, batch)
            for sparsity in sparsities:
                kept = torch.randperm(hidden)[: max(1, round(hidden * (1 - sparsity)))]
                times = interleaved_seconds(
                    {
                        "dense": lambda h=h: u @ h,
                        "gathered": lambda k=kept, h=h: u.index_select(1, k) @ h.index_select(0, k),
                    },
                    repeats,
                    warmup=5,
                )
                rows.append(
                    {
                        "sparsity": sparsity,
                        "batch": batch,
                        "dense_us": 1e6 * statistics.median(times["dense"]),
                        "gathered_us": 1e6 * statistics.median(times["gathered"]),
                        "speedup": paired_speedup(times["dense"], times["gathered"]),
                    }
                )
    return rows


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("## Row-sequential LSTM classifier, fused kernel, by hidden size\n")
    rows = hidden_size_rows([128, 96, 64, 48, 32], [1, 256], repeats=21)
    print(_table(rows, ["hidden", "batch", "ms", "speedup_vs_128"]))
    print("\n## One step's U·h (hidden 128): dense vs the kept columns only\n")
    rows = recurrent_product_rows(128, [0.0, 0.5, 0.7, 0.9], [1, 256], repeats=200)
    print(_table(rows, ["sparsity", "batch", "dense_us", "gathered_us", "speedup"]))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"\n{time.perf_counter() - start:.0f} s")
