"""A multi-exit network judged exit by exit and as an early-exit policy: per-exit accuracy and cost, the
confidence-threshold sweep on validation and test data, and the operating point chosen on validation data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from evoprune.core.early_exit import choose_operating_point, exit_costs, sweep_thresholds
from evoprune.core.exits import MultiExitNet
from evoprune.core.train import predict_exit_logits

Split = dict[str, torch.Tensor]


@dataclass
class ExitEvaluation:
    summary: pd.DataFrame  # one row per exit: exit, after, val/test accuracy, flops, flops_policy, params
    table: pd.DataFrame  # one row per threshold: accuracy, expected FLOPs, test FLOPs saving, exit shares
    operating_point: dict[str, object]  # threshold, its test figures and the criterion
    metrics: dict[str, float]  # exit<k>.<figure> and operating.<figure>


def summarise_exits(
    model: MultiExitNet | nn.Module,
    validation_split: Split,
    test_split: Split,
    thresholds: Sequence[float],
    criterion: str,
    max_accuracy_drop: float,
    device: torch.device,
) -> ExitEvaluation:
    """Per-exit accuracy and cost, the threshold sweep and the operating point: the cheapest threshold whose
    validation accuracy stays within ``max_accuracy_drop`` of the final exit's.

    The ``after`` column names where each exit hangs (the module an early exit follows), the last one ``output``.
    A network without early exits (``build_exits.exit_after: []``) has that one row and the threshold 1.0.
    """
    costs = exit_costs(model)
    policy_flops = [c["flops_policy"] for c in costs]
    logits = {
        name: predict_exit_logits(model, s["images"], device)
        for name, s in (("val", validation_split), ("test", test_split))
    }
    labels = {"val": validation_split["labels"], "test": test_split["labels"]}
    acc = {n: (logits[n].argmax(-1).cpu() == labels[n]).double().mean(1).tolist() for n in logits}
    after = model.exit_points if isinstance(model, MultiExitNet) else ["output"]
    num_exits = len(after)
    summary = pd.DataFrame(
        [
            {
                "exit": e + 1,
                "after": after[e],
                "val_accuracy": acc["val"][e],
                "test_accuracy": acc["test"][e],
                **costs[e],
            }
            for e in range(num_exits)
        ]
    )
    sweep = {n: sweep_thresholds(logits[n], labels[n], list(thresholds), criterion, policy_flops) for n in logits}
    table = pd.DataFrame(
        [
            {
                "threshold": v["threshold"],
                "val_accuracy": v["accuracy"],
                "test_accuracy": t["accuracy"],
                "val_expected_flops": v["expected_flops"],
                "test_expected_flops": t["expected_flops"],
                "test_flops_saving": 1.0 - t["expected_flops"] / costs[-1]["flops"],
                **{k.replace("share", "test_share"): t[k] for k in t if k.startswith("share")},
            }
            for v, t in zip(sweep["val"], sweep["test"], strict=True)
        ]
    )
    chosen = choose_operating_point(sweep["val"], acc["val"][-1], max_accuracy_drop)
    row = table.loc[table["threshold"] == chosen["threshold"]].iloc[0]
    operating = {
        "threshold": float(row["threshold"]),
        "test_accuracy": float(row["test_accuracy"]),
        "test_expected_flops": float(row["test_expected_flops"]),
        "test_flops_saving": float(row["test_flops_saving"]),
        "test_accuracy_drop": acc["test"][-1] - float(row["test_accuracy"]),
        "criterion": criterion,
    }
    metrics = {
        f"exit{e + 1}.{k}": summary.iloc[e][k]
        for e in range(num_exits)
        for k in ("val_accuracy", "test_accuracy", "flops", "flops_policy", "params")
    }
    metrics.update({f"operating.{k}": v for k, v in operating.items() if k != "criterion"})
    return ExitEvaluation(summary, table, operating, metrics)
