"""Hidden-state pruning at run time (E-LSTM, DAC 2019; Liu, HKU 2020).

At every step, the hidden state h_t of LSTM layer k is cut into groups of ``group`` consecutive units
(the paper's 4); a group whose largest |h| lies below the layer's threshold is set to zero before h_t is
used anywhere (the recurrence U·h_t of the next step, the next layer's input, the head). The products with
zero groups could be skipped: ``HiddenStateStats`` counts those multiply-adds per sequence. Thresholds are
chosen on validation data for a target share of zeroed elements per layer (``calibrate_thresholds``).
Without retraining the network loses accuracy fast; ``finetune_hidden_state`` trains it with the pruning in
its forward (gradients flow through the kept elements) and chooses the thresholds again afterwards.

The forward is ``core.lstm.unrolled_lstm_forward`` with the zeroing applied to every step's h_t; it equals
``nn.LSTM`` with thresholds 0 (tested).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from evoprune.core.data import images_to_float
from evoprune.core.lstm import GATES, lstm_modules, unrolled_lstm_forward
from evoprune.core.runtime import evaluated_on
from evoprune.core.train import TrainConfig, TrainingExtras, train


@dataclass
class HiddenStateStats:
    """Counts over the sequences run so far, per LSTM layer (all LSTMs of the model, in order)."""

    elements: list[int] = field(default_factory=list)  # hidden-state elements produced (B * T * H)
    zeroed: list[int] = field(default_factory=list)  # of which set to zero
    skipped_macs: list[int] = field(default_factory=list)  # multiply-adds with zeroed elements (U·h, next W·h)
    dense_macs: list[int] = field(default_factory=list)  # multiply-adds of the layer's gates, dense
    sequences: int = 0
    group_maxima: list[list[torch.Tensor]] = field(default_factory=list)  # per layer, before zeroing (recorded)

    def sparsity(self) -> list[float]:
        return [z / e if e else 0.0 for z, e in zip(self.zeroed, self.elements, strict=True)]

    def per_sequence(self, counts: list[int]) -> float:
        return float(sum(counts)) / max(self.sequences, 1)


def _group_maxima(h: torch.Tensor, group: int) -> torch.Tensor:
    """(B, H) -> (B, ceil(H / group)) largest |h| in each group of consecutive units."""
    pad = (-h.shape[1]) % group
    return nn.functional.pad(h.abs(), (0, pad)).view(h.shape[0], -1, group).amax(-1)


def thresholded_lstm_forward(
    lstm: nn.LSTM,
    x: torch.Tensor,
    thresholds: Sequence[float],
    group: int = 4,
    stats: HiddenStateStats | None = None,
    layer_offset: int = 0,
    record: bool = False,
    activity: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``lstm``'s output sequence with hidden-state groups below ``thresholds[k]`` zeroed in layer k.

    Args:
        x: (B, T, F) if ``lstm.batch_first`` else (T, B, F).
        stats: counts are added at index ``layer_offset + k``; ``record`` also keeps the group maxima.
        activity: while gradients are on, every step's mean |h| after zeroing is appended (for a penalty).
    """
    if len(thresholds) != lstm.num_layers:
        raise ValueError(f"{len(thresholds)} thresholds for an LSTM of {lstm.num_layers} layers")
    if any(t < 0 for t in thresholds):
        raise ValueError(f"hidden-state thresholds must be >= 0 (|h| below it is zeroed), got {list(thresholds)}")
    if group < 1:
        raise ValueError(f"hidden-state group must be >= 1 unit, got {group}")
    hidden = lstm.hidden_size
    zeroed = [0] * lstm.num_layers
    maxima: list[list[torch.Tensor]] = [[] for _ in range(lstm.num_layers)]

    def prune(k: int, h: torch.Tensor) -> torch.Tensor:
        peak = _group_maxima(h, group)  # (B, G)
        if record:
            maxima[k].append(peak.flatten().cpu())
        keep = (peak >= thresholds[k]).repeat_interleave(group, dim=1)[:, :hidden]
        zeroed[k] += int((~keep).sum())
        kept = h * keep
        if activity is not None and torch.is_grad_enabled():
            activity.append(kept.abs().mean())
        return kept

    out = unrolled_lstm_forward(lstm, x, prune)
    if stats is not None:
        b, steps = (x.shape[0], x.shape[1]) if lstm.batch_first else (x.shape[1], x.shape[0])
        for k in range(lstm.num_layers):
            j = layer_offset + k
            while len(stats.elements) <= j:
                for counts in (stats.elements, stats.zeroed, stats.skipped_macs, stats.dense_macs):
                    counts.append(0)
                stats.group_maxima.append([])
            readers = GATES * hidden * (2 if k + 1 < lstm.num_layers else 1)  # U·h (+ next layer's W·h)
            inputs = lstm.input_size if k == 0 else hidden
            stats.elements[j] += b * steps * hidden
            stats.zeroed[j] += zeroed[k]
            stats.skipped_macs[j] += zeroed[k] * readers
            stats.dense_macs[j] += b * steps * GATES * hidden * (inputs + hidden)
            stats.group_maxima[j] += maxima[k]
    return out


@contextmanager
def hidden_state_pruning(
    model: nn.Module,
    thresholds: Sequence[float],
    group: int = 4,
    stats: HiddenStateStats | None = None,
    record: bool = False,
    activity: list[torch.Tensor] | None = None,
) -> Iterator[None]:
    """While active, every LSTM of ``model`` runs ``thresholded_lstm_forward``; ``thresholds`` lists one per
    LSTM layer, all LSTMs in order, and is read at every forward (a list changed in place takes effect).
    Contexts nest: the previous forward comes back on exit."""
    lstms = [m for _, m in lstm_modules(model)]
    total = sum(m.num_layers for m in lstms)
    if not lstms:
        raise ValueError("hidden-state pruning needs a model with an nn.LSTM")
    if len(thresholds) != total:
        raise ValueError(f"{len(thresholds)} hidden-state thresholds given; the model's LSTMs have {total} layers")
    offset = 0
    previous = [lstm.__dict__.get("forward") for lstm in lstms]
    for lstm in lstms:

        def forward(x, hx=None, lstm=lstm, offset=offset):
            if hx is not None:
                raise ValueError("hidden-state pruning runs from a zero initial state")
            if stats is not None:
                stats.sequences += x.shape[0 if lstm.batch_first else 1] if offset == 0 else 0
            own = [thresholds[offset + k] for k in range(lstm.num_layers)]
            out = thresholded_lstm_forward(lstm, x, own, group, stats, offset, record, activity)
            return out, (None, None)

        lstm.forward = forward
        offset += lstm.num_layers
    try:
        yield
    finally:
        for lstm, before in zip(lstms, previous, strict=True):
            if before is None:
                del lstm.forward
            else:
                lstm.forward = before


@torch.no_grad()
def run_pruned(
    model: nn.Module,
    split: dict[str, torch.Tensor],
    thresholds: Sequence[float],
    group: int,
    device: torch.device,
    batch_size: int = 2000,
    record: bool = False,
) -> tuple[float, HiddenStateStats]:
    """Accuracy of ``model`` on ``split`` with hidden-state pruning, and the counts, computed on ``device`` (the
    model's mode and device are restored afterwards)."""
    stats = HiddenStateStats()
    images, labels = split["images"], split["labels"].to(device)
    correct = 0
    with evaluated_on(model, device), hidden_state_pruning(model, thresholds, group, stats, record):
        for b in range(0, images.shape[0], batch_size):
            logits = model(images_to_float(images[b : b + batch_size].to(device)))
            correct += int((logits.argmax(-1) == labels[b : b + batch_size]).sum())
    return correct / labels.numel(), stats


def calibrate_thresholds(
    model: nn.Module,
    split: dict[str, torch.Tensor],
    sparsity: float,
    group: int,
    device: torch.device,
    rounds: int = 3,
) -> list[float]:
    """Per-layer thresholds that zero about ``sparsity`` of each layer's hidden-state elements on ``split``:
    each round sets every threshold to the ``sparsity`` quantile of the group maxima seen with the previous
    round's thresholds (earlier layers' pruning changes later layers' states)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"target hidden-state sparsity must lie in [0, 1), got {sparsity}")
    layers = sum(m.num_layers for _, m in lstm_modules(model))
    thresholds = [0.0] * layers
    for _ in range(rounds):
        _, stats = run_pruned(model, split, thresholds, group, device, record=True)
        thresholds = [
            float(np.quantile(torch.cat(m).numpy(), sparsity)) if sparsity > 0 else 0.0 for m in stats.group_maxima
        ]
    return thresholds


def _row(model: nn.Module, test_split, thresholds: list[float], group: int, device: torch.device) -> dict[str, float]:
    accuracy, stats = run_pruned(model, test_split, thresholds, group, device)
    row = {"test_accuracy": accuracy, "hidden_sparsity": float(np.mean(stats.sparsity()))}
    for k, (t, s) in enumerate(zip(thresholds, stats.sparsity(), strict=True)):
        row[f"threshold_l{k}"] = t
        row[f"hidden_sparsity_l{k}"] = s
    row["skipped_macs_per_sequence"] = stats.per_sequence(stats.skipped_macs)
    row["lstm_macs_per_sequence"] = stats.per_sequence(stats.dense_macs)
    return row


def hidden_state_sweep(
    model: nn.Module,
    splits: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]],
    sparsities: Sequence[float],
    group: int,
    cfg: TrainConfig | None,
    device: torch.device,
    seed: int,
    activity_l1: float = 0.0,
) -> list[dict[str, float]]:
    """Per target sparsity: hidden-state pruning of ``model`` as it is, and (with ``cfg``) of a copy fine-tuned
    with the pruning in its forward; thresholds from validation, figures on test. ``model`` is not modified.

    Args:
        splits: (train, validation, test).
    Returns:
        One row per (sparsity, fine-tuned or not): target_sparsity, finetuned, test_accuracy, hidden_sparsity
        (mean over layers, and per layer), thresholds, multiply-adds skipped and of the LSTM per sequence,
        finetune_seconds.
    """
    train_split, validation_split, test_split = splits
    if any(not 0.0 < s < 1.0 for s in sparsities):
        raise ValueError(f"hidden_state.sparsities must lie in (0, 1), got {list(sparsities)}")
    rows = []
    for target in sparsities:
        thresholds = calibrate_thresholds(model, validation_split, target, group, device)
        rows.append(
            {"target_sparsity": target, "finetuned": False, **_row(model, test_split, thresholds, group, device)}
        )
        if cfg is None:
            continue
        tuned = copy.deepcopy(model)
        start = time.perf_counter()
        thresholds, _ = finetune_hidden_state(
            tuned, train_split, validation_split, target, group, cfg, device, seed, activity_l1=activity_l1
        )
        seconds = time.perf_counter() - start
        row = {"target_sparsity": target, "finetuned": True, **_row(tuned, test_split, thresholds, group, device)}
        rows.append(row | {"finetune_seconds": seconds})
    return rows


def finetune_hidden_state(
    model: nn.Module,
    train_split: dict[str, torch.Tensor],
    validation_split: dict[str, torch.Tensor],
    sparsity: float,
    group: int,
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    calibration_size: int = 2000,
    activity_l1: float = 0.0,
) -> tuple[list[float], dict]:
    """Train ``model`` in place with hidden-state pruning in its forward. The target sparsity ramps up
    linearly over the first half of the epochs (the thresholds chosen again after each epoch on
    ``calibration_size`` validation images), then holds; the final thresholds come from the whole split.
    ``activity_l1`` > 0 adds that weight times the mean |h| of the kept hidden state (ours: an activity penalty
    that pushes small elements toward zero, so zeroing them later costs less).

    Returns:
        The thresholds for the trained model, and the training history (with ``hidden_sparsity_target``).
    """
    if activity_l1 < 0:
        raise ValueError(f"hidden_state.activity_l1 must be >= 0, got {activity_l1}")
    calibration = {k: v[:calibration_size] for k, v in validation_split.items()}
    ramp_epochs = max(1, math.ceil(cfg.epochs / 2))

    def target(epoch: int) -> float:
        return sparsity * min(1.0, (epoch + 1) / ramp_epochs)

    thresholds = calibrate_thresholds(model, calibration, target(0), group, device)

    def after_epoch(epoch: int) -> dict[str, float]:
        thresholds[:] = calibrate_thresholds(model, calibration, target(epoch + 1), group, device)
        return {"hidden_sparsity_target": target(epoch + 1)}

    activity: list[torch.Tensor] = []

    def penalty() -> torch.Tensor:
        value = activity_l1 * torch.stack(activity).mean()
        activity.clear()
        return value

    with hidden_state_pruning(model, thresholds, group, activity=activity if activity_l1 > 0 else None):
        history = train(
            model,
            train_split,
            validation_split,
            cfg,
            device,
            seed,
            f"hidden-state {sparsity:.0%}",
            extras=TrainingExtras(penalty=penalty if activity_l1 > 0 else None, after_epoch=after_epoch),
        )
    return calibrate_thresholds(model, validation_split, sparsity, group, device), history


def report_rows(rows: list[dict[str, float]], dense_flops: float, dense_accuracy: float) -> list[dict[str, object]]:
    """``hidden_state_sweep`` rows as report rows: ``flops_ratio`` counts the skipped products as saved (2 FLOPs
    per multiply-add; a dense kernel still runs them), no parameter is removed."""
    out = []
    for row in rows:
        label = f"hidden_state@{round(100 * row['target_sparsity'])}%" + ("" if row["finetuned"] else " (no fine-tune)")
        out.append(
            {
                "method": label,
                "member": -1,
                "flops_ratio": (dense_flops - 2 * row["skipped_macs_per_sequence"]) / dense_flops,
                "params_ratio": 1.0,
                "test_accuracy": row["test_accuracy"],
                "accuracy_drop_pt": 100 * (dense_accuracy - row["test_accuracy"]),
                **row,
            }
        )
    return out
