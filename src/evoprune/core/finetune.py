"""From a chosen Pareto member to a measured, fine-tuned, physically smaller network (issue 6 core).

variant weights (reinit) -> physical pruning (torch-pruning) -> fine-tuning (train) -> measurements
"""

from __future__ import annotations

import copy
import json
import statistics
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from evoprune.core.cost import count_flops, count_params, interleaved_seconds, paired_speedup
from evoprune.core.data import images_to_float
from evoprune.core.early_exit import exit_costs, sweep_thresholds
from evoprune.core.exits import MultiExitNet, build_network, input_shape
from evoprune.core.latency import timing_threads
from evoprune.core.masking import prune_physically
from evoprune.core.reinit import reinit_model
from evoprune.core.runtime import evaluated_on
from evoprune.core.train import TrainConfig, accuracy_per_exit, predict_exit_logits, train
from evoprune.core.units import ChromosomeLayout


def pruned_variant(
    trained: nn.Module, initial: nn.Module, layout: ChromosomeLayout, mask: np.ndarray, variant: str, seed: int
) -> nn.Module:
    """The member ``mask`` of ``trained`` with the weights of ``variant``, physically pruned."""
    model = reinit_model(trained, initial, lambda: build_network(trained.spec), variant, seed)
    return prune_physically(model.eval(), layout, mask, input_shape(trained))


MemoryFormat = Literal["channels_last", "contiguous"]


def latency_ms(
    model: nn.Module,
    images: torch.Tensor,
    batch_sizes: tuple[int, ...],
    repeats: int,
    device: torch.device,
    reference: nn.Module | None = None,
    memory_format: MemoryFormat = "channels_last",
    threads: int | None = None,
) -> dict[str, float]:
    """Median milliseconds per batch of uint8 ``images`` at each batch size (eval, ``inference_mode``), with
    ``threads`` torch threads (None: the process's; restored after).

    With a ``reference`` (the dense model), both are timed in turn within every repeat and the result
    also holds ``dense_latency_ms_batch<b>`` and ``speedup_batch<b>`` (the median over repeats of the
    reference's time over the model's, each pair timed moments apart).
    ``memory_format``: layout of the inputs and conv weights while timed (``channels_last`` = NHWC, which
    oneDNN runs fastest on CPU: measured 33 vs 53 ms for the dense LeNet-5 at batch 1000, 274 vs 424 ms for
    the VGG-style net; ``benchmarks/pruned_latency.py`` prints both). The models are timed as copies, so
    the originals keep their layout.
    """
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    models = {"": model} if reference is None else {"": model, "dense_": reference}
    timed = {k: copy.deepcopy(m).eval().to(device=device, memory_format=fmt) for k, m in models.items()}
    out = {}
    with torch.inference_mode(), timing_threads(threads):
        for b in batch_sizes:
            x = images_to_float(images[:b].to(device)).contiguous(memory_format=fmt)
            times = interleaved_seconds({k: (lambda m=m, x=x: m(x)) for k, m in timed.items()}, repeats, warmup=2)
            out.update({f"{k}latency_ms_batch{b}": 1e3 * statistics.median(t) for k, t in times.items()})
            if reference is not None:
                out[f"speedup_batch{b}"] = paired_speedup(times["dense_"], times[""])
    return out


def measure(
    model: nn.Module,
    test_split: dict[str, torch.Tensor],
    policy: tuple[float, str] | None,
    device: torch.device,
    batch_sizes: tuple[int, ...] = (1, 1000),
    repeats: int = 7,
    reference: nn.Module | None = None,
    memory_format: MemoryFormat = "channels_last",
    threads: int | None = None,
) -> dict[str, float]:
    """Per-exit test accuracy, early-exit accuracy and exit shares, FLOPs, params and latency (with a
    ``reference`` model: also its latency, timed alternately with ``model``, and the speed-up)."""
    shape = input_shape(model)
    with evaluated_on(model, device):  # fine-tunes hand their networks back on CPU: measured where they will run
        metrics = {f"exit{e + 1}.test_accuracy": a for e, a in enumerate(accuracy_per_exit(model, test_split, device))}
        if policy is not None and isinstance(model, MultiExitNet):
            logits = predict_exit_logits(model, test_split["images"], device)
            policy_flops = [c["flops_policy"] for c in exit_costs(model)]
            (row,) = sweep_thresholds(logits, test_split["labels"], [policy[0]], policy[1], policy_flops)
            metrics["early_exit.test_accuracy"] = row["accuracy"]
            metrics["early_exit.expected_flops"] = row["expected_flops"]
            metrics.update({f"early_exit.{k}": v for k, v in row.items() if k.startswith("share_exit")})
        metrics["flops"], metrics["params"] = count_flops(model, shape), count_params(model)
    images = test_split["images"]
    metrics.update(latency_ms(model, images, batch_sizes, repeats, device, reference, memory_format, threads))
    return metrics


def finetune_member(
    trained: nn.Module,
    initial: nn.Module,
    layout: ChromosomeLayout,
    mask: np.ndarray,
    variant: str,
    train_split: dict[str, torch.Tensor],
    validation_split: dict[str, torch.Tensor],
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    loss_weights: list[float] | None = None,
    description: str | None = None,
) -> tuple[nn.Module, dict[str, list[float] | float]]:
    """Re-initialise, prune and fine-tune one member; returns the pruned model (on CPU) and its history.

    ``loss_weights``: per-exit weights of the training loss (default 1 each); ``description``: progress bar label.
    """
    model = pruned_variant(trained, initial, layout, mask, variant, seed)
    history = train(
        model, train_split, validation_split, cfg, device, seed, description or f"finetune[{variant}]", loss_weights
    )
    return model.cpu().eval(), history


def finetune_settings(
    variant: str,
    seed: int,
    cfg: TrainConfig,
    loss_weights: list[float] | None,
    device: torch.device,
    threads: int | None = None,
) -> str:
    """What decides a ``finetune_member`` result besides the trained network and the mask, as one string:
    two fine-tunes of the same member with equal settings give the same model (same machine). ``threads``: the
    torch threads it ran on (floats sum in another order on another count)."""
    settings = {
        "variant": variant,
        "seed": seed,
        "training": cfg.model_dump(mode="json"),
        "loss_weights": loss_weights,
        "device": torch.device(device).type,
        "threads": threads,
    }
    return json.dumps(settings, sort_keys=True)


@dataclass
class ReusableFinetunes:
    """Fine-tuned members that a later fine-tune with the same ``settings`` takes instead of repeating it
    (select_members' fine-tunes of the chosen members are the selection variant's first seed)."""

    settings: str  # finetune_settings of the runs that made them
    # member id -> (pruned fine-tuned model, its history)
    members: dict[int, tuple[nn.Module, dict[str, object]]] = field(default_factory=dict)

    def get(self, member: int, settings: str) -> tuple[nn.Module, dict[str, object]] | None:
        """The member's fine-tune when it was made with ``settings``, else None."""
        return self.members.get(member) if settings == self.settings else None

    def as_members(self, trained: nn.Module, masks: np.ndarray, member_ids: list[int]) -> dict[str, object]:
        """In the fine-tuned members format (``FinetunedMembersDataset``), given every member's mask by id."""
        done = list(self.members)
        return {
            "model": trained,
            "masks": np.asarray(masks, dtype=bool)[[member_ids.index(m) for m in done]],
            "member_ids": done,
            "pruned": [self.members[m][0] for m in done],
            "histories": [self.members[m][1] for m in done],
            "finetune_settings": self.settings,
        }

    @classmethod
    def from_members(cls, members: dict[str, object]) -> ReusableFinetunes:
        """Back from ``as_members``' format; a file without settings gives nothing to reuse."""
        pairs = zip(members["member_ids"], members["pruned"], members.get("histories", []), strict=False)
        return cls(str(members.get("finetune_settings", "")), {int(m): (p, h) for m, p, h in pairs})
