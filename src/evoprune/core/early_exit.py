"""Cost and accuracy of early-exit policies: cost per exit, threshold sweep, operating point, latency."""

from __future__ import annotations

import torch
from torch import nn

from evoprune.core.cost import count_flops, count_params, interleaved_median_seconds
from evoprune.core.data import images_to_float
from evoprune.core.exits import Criterion, MultiExitNet, confidence, input_shape
from evoprune.core.runtime import evaluated_on


def exit_costs(model: MultiExitNet | nn.Module) -> list[dict[str, float]]:
    """FLOPs and params of each exit, counted by torch's FlopCounterMode on the modules involved.

    Returns one dict per exit with
        ``flops``: backbone prefix + this exit's head (the exit used alone),
        ``flops_policy``: what a sample leaving at this exit costs under early exiting
            (``flops`` + the earlier exit heads it was evaluated by),
        ``params``: parameters of the prefix + head.
    """
    image = input_shape(model)
    if not isinstance(model, MultiExitNet):  # a network without early exits: its output is the one exit
        return [{"flops": (f := count_flops(model, image)), "flops_policy": f, "params": count_params(model)}]
    head_flops = [
        count_flops(head, shape) for shape, head in zip(model.feature_shapes(), model.exit_heads, strict=True)
    ]
    rows = []
    for e in range(model.num_exits):
        path = model.exit_path(e)
        flops = count_flops(path, image)
        rows.append({"flops": flops, "flops_policy": flops + sum(head_flops[:e]), "params": count_params(path)})
    return rows


def simulate_early_exit(
    exit_logits: torch.Tensor, threshold: float, criterion: Criterion
) -> tuple[torch.Tensor, torch.Tensor]:
    """Early-exit decisions from the logits of every exit (E, N, C): same rule as
    ``MultiExitNet.early_exit_predict``, for sweeping thresholds without re-running the network.

    Returns:
        Predicted classes (N,) and the 0-based exit used (N,).
    """
    passes = confidence(exit_logits, criterion) >= threshold  # (E, N)
    if threshold >= 1.0:
        passes[:-1] = False
    passes[-1] = True
    used = passes.int().argmax(0)  # first exit that passes
    preds = exit_logits.argmax(-1).gather(0, used[None]).squeeze(0)
    return preds, used


def sweep_thresholds(
    exit_logits: torch.Tensor,
    labels: torch.Tensor,
    thresholds: list[float],
    criterion: Criterion,
    policy_flops: list[float],
) -> list[dict[str, float]]:
    """Accuracy, expected FLOPs per sample and share of samples per exit for each threshold."""
    rows = []
    costs = torch.tensor(policy_flops, dtype=torch.float64)
    for t in thresholds:
        preds, used = simulate_early_exit(exit_logits, t, criterion)
        shares = torch.bincount(used.cpu(), minlength=exit_logits.shape[0]).double() / used.numel()
        row = {"threshold": t, "accuracy": (preds.cpu() == labels.cpu()).double().mean().item()}
        row["expected_flops"] = float((shares * costs).sum())
        row.update({f"share_exit{e + 1}": float(s) for e, s in enumerate(shares)})
        rows.append(row)
    return rows


def choose_operating_point(
    val_rows: list[dict[str, float]], final_accuracy: float, max_accuracy_drop: float
) -> dict[str, float]:
    """The cheapest threshold whose validation accuracy is within ``max_accuracy_drop`` of the final exit's."""
    admissible = [r for r in val_rows if r["accuracy"] >= final_accuracy - max_accuracy_drop - 1e-12]
    if not admissible:  # threshold 1.0 (no early exit) is always admissible when swept
        return max(val_rows, key=lambda r: r["accuracy"])
    return min(admissible, key=lambda r: (r["expected_flops"], -r["accuracy"]))


@torch.no_grad()
def early_exit_latency(
    model: MultiExitNet | nn.Module,
    images: torch.Tensor,
    threshold: float,
    criterion: Criterion,
    device: torch.device,
    batch_size: int,
    repeats: int,
) -> dict[str, float]:
    """Median seconds per batch of the dense backbone vs real early-exit inference on the same batch (a
    network without early exits is timed once: both are its own time). Timed on ``device``; the model's mode and
    device are restored afterwards."""
    x = images_to_float(images[:batch_size].to(device))
    with evaluated_on(model, device):
        if isinstance(model, MultiExitNet):
            seconds = interleaved_median_seconds(
                {
                    "dense": lambda: model.backbone(x),
                    "early": lambda: model.early_exit_predict(x, threshold, criterion),
                },
                repeats,
            )
            dense, early = seconds["dense"], seconds["early"]
        else:
            dense = early = interleaved_median_seconds({"dense": lambda: model(x)}, repeats)["dense"]
    return {"dense_seconds": dense, "early_exit_seconds": early, "speedup": dense / early}
