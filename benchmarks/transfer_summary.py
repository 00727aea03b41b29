"""Paired statistics over seeds of ``transfer_allocation.py``'s margins over group L1 (issue 14: does a transferred
Scoring Net beat L1 at equal FLOPs?).

Each seed is one run of ``transfer_allocation.py`` (its own dense targets, Scoring Net and masks), saved as a log:

    for s in 42 0 1 2 3; do PYTHONPATH=src .venv/bin/python benchmarks/transfer_allocation.py --data data --seed $s \\
        > transfer_$s.log; done
    .venv/bin/python benchmarks/transfer_summary.py transfer_*.log [--masks net "net counts + l1"]

Prints, per target, mask and budget: the number of seeds, the mean margin over L1 in points with its standard error,
the median, how many seeds the mask won and lost (ties are equal accuracies), and the two-sided Wilcoxon
signed-rank p-value of the paired margins (scipy; zero margins dropped; "–" with fewer than 6 non-zero margins,
where no p-value can fall below 0.05).
"""

from __future__ import annotations

import argparse
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

SEED_LINE = re.compile(r"# seed (-?\d+):")


def read_margins(path: Path) -> tuple[int, dict[tuple[str, str, str], float]]:
    """The seed of one ``transfer_allocation.py`` log and its margin over L1 (pt) per (target, budget, mask)."""
    text = path.read_text().replace("\r", "\n")
    seed = SEED_LINE.search(text)
    if seed is None:
        raise SystemExit(f"{path}: no '# seed S:' line; is it the output of transfer_allocation.py?")
    margins = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 7 and cells[0] != "target" and not cells[0].startswith("-"):
            margins[(cells[0], cells[1], cells[2])] = float(cells[5])
    if not margins:
        raise SystemExit(f"{path}: no table rows; did the run finish?")
    return int(seed.group(1)), margins


def summary_row(margins: np.ndarray) -> str:
    """mean ± standard error, median, won / lost and the Wilcoxon p-value of one cell's paired margins."""
    n, nonzero = len(margins), int(np.count_nonzero(margins))
    se = margins.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    p = f"{wilcoxon(margins).pvalue:.3f}" if nonzero >= 6 else "–"
    won, lost = int((margins > 0).sum()), int((margins < 0).sum())
    return f"{n} | {margins.mean():+.2f} ± {se:.2f} | {np.median(margins):+.2f} | {won} / {lost} | {p}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("logs", nargs="+", type=Path, help="transfer_allocation.py outputs, one per seed")
    parser.add_argument("--masks", nargs="+", default=["net", "net counts + l1", "l1 counts + net", "taylor"])
    args = parser.parse_args()
    by_cell: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    for path in args.logs:
        seed, margins = read_margins(path)
        for cell, margin in margins.items():
            if seed in by_cell[cell]:
                raise SystemExit(f"{path}: seed {seed} appears in two logs")
            by_cell[cell][seed] = margin
    seeds = sorted({s for per_seed in by_cell.values() for s in per_seed})
    print(f"# seeds {seeds}")
    print("| target | mask | budget | seeds | margin over L1, mean ± s.e. (pt) | median | won / lost | Wilcoxon p |")
    print("|---|---|---|---|---|---|---|---|")
    targets = list(dict.fromkeys(t for t, _, _ in by_cell))
    budgets = sorted({b for _, b, _ in by_cell})
    for target in targets:
        for mask in args.masks:
            for budget in budgets:
                per_seed = by_cell.get((target, budget, mask))
                if per_seed:
                    row = summary_row(np.array([per_seed[s] for s in sorted(per_seed)]))
                    print(f"| {target} | {mask} | {budget} | {row} |")


if __name__ == "__main__":
    main()
