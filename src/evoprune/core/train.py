"""Training and evaluation loops over tensors held on the device (no DataLoader, no per-sample work)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn
from tqdm.auto import tqdm

from evoprune.core.data import images_to_float
from evoprune.core.runtime import evaluated_on

logger = logging.getLogger(__name__)


class AugmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hflip: bool = False  # random horizontal flips
    crop_padding: NonNegativeInt = 0  # random translation by up to this many pixels (zero padding)


class TrainConfig(BaseModel):
    """Hyper-parameters of one training run."""

    model_config = ConfigDict(extra="forbid")

    epochs: PositiveInt = 15
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt = 2048
    optimizer: Literal["sgd", "adamw"] = "sgd"
    learning_rate: PositiveFloat = 0.05  # peak learning rate
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # SGD only
    nesterov: bool = True  # SGD only
    weight_decay: NonNegativeFloat = 5e-4
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_fraction: float = Field(0.15, ge=0.0, lt=1.0)  # share of steps spent warming up (onecycle)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train_subset: PositiveInt | None = None  # train on the first N images of the (seeded, shuffled) split; None: all
    # channels_last: NHWC, oneDNN's faster convolutions (on 2 CPU cores: LeNet-5 fine-tune epochs 1.43x, dense
    # epochs 1.23x faster than contiguous; conf/base's finetune sets it). On CPU, a network with a 1x1 convolution
    # trains contiguous all the same (see _training_memory_format). Inputs that are not images stay as they are.
    memory_format: Literal["contiguous", "channels_last"] = "contiguous"
    # on CUDA only (a CPU trains in float32 either way): bfloat16 autocast pays on large layers; on the project's
    # networks it cost time, the casts adding Python work to steps the GPU already waits on: float32 steps were
    # 1.22x (ResNet-20 + 2 exits) and 1.32x (LeNet-5 + exit) faster on an H200 (benchmarks/train_step.py)
    precision: Literal["float32", "bfloat16"] = "float32"


def as_exit_list(output: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """A model's output as a list of logits, one per exit (a plain CNN has one exit)."""
    return list(output) if isinstance(output, (list, tuple)) else [output]


def exits_loss(
    output: torch.Tensor | list[torch.Tensor], labels: torch.Tensor, weights: list[float] | None, smoothing: float
) -> torch.Tensor:
    """Weighted sum of the cross-entropy of every exit (weights default to 1 each)."""
    logits = as_exit_list(output)
    weights = weights or [1.0] * len(logits)
    if len(weights) != len(logits):
        raise ValueError(f"`loss_weights` has {len(weights)} entries but the model has {len(logits)} exits.")
    return sum(w * F.cross_entropy(z, labels, label_smoothing=smoothing) for w, z in zip(weights, logits, strict=True))


_CONTIGUOUS_WARNED: set[str] = set()  # the 1x1 convs already named in the warning below


def _training_memory_format(model: nn.Module, wanted: str, device: torch.device) -> torch.memory_format:
    """``wanted``, except channels_last on CPU for a network with a 1x1 convolution: with torch 2.15, oneDNN's
    channels_last weight gradient of a 1x1 conv (``jit_avx2_1x1_convolution_bwd_weights``) now and then never
    returns (on this 2-core CPU: a width-4 ResNet's DST hung 1 run in 3, and torchvision / factory ResNets'
    fine-tunes in tests/test_prune_session.py), so those train contiguous, with a warning."""
    if wanted != "channels_last":
        return torch.contiguous_format
    pointwise = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    if pointwise and torch.device(device).type == "cpu":
        named = ", ".join(pointwise[:3]) + (", ..." if len(pointwise) > 3 else "")
        # once per set of convs: the recovery fitness trains one pruned copy per candidate (hundreds a search)
        log = logger.debug if named in _CONTIGUOUS_WARNED else logger.warning
        _CONTIGUOUS_WARNED.add(named)
        log(
            "training contiguous, not channels_last: oneDNN's channels_last backward of 1x1 convolutions (%s) can "
            "hang on CPU with this torch",
            named,
        )
        return torch.contiguous_format
    return torch.channels_last


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Learning rate at optimiser step ``step`` (0-based) of ``total_steps``: a pure function."""
    peak = cfg.learning_rate
    if cfg.schedule == "constant":
        return peak
    progress = step / max(total_steps, 1)
    if cfg.schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    warmup = cfg.warmup_fraction
    if progress < warmup:  # onecycle: linear warm-up from peak/10, then linear decay to 0
        return peak * (0.1 + 0.9 * progress / warmup)
    return peak * max(0.0, 1.0 - (progress - warmup) / (1.0 - warmup))


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random flips and translations of a float batch (B, C, H, W), vectorised over the batch."""
    b, _, h, w = x.shape
    if cfg.hflip:
        flip = torch.rand(b, generator=generator, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    p = cfg.crop_padding
    if p > 0:
        padded = F.pad(x, (p, p, p, p), value=-1.0)  # -1 is black after images_to_float
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=x.device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, x.shape[1], h, w + 2 * p)
        x = padded.gather(2, rows)  # (B, C, H, W+2p)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, x.shape[1], h, w)
        x = x.gather(3, cols)  # (B, C, H, W)
    return x


@dataclass(frozen=True)
class TrainingExtras:
    """What a training method adds to the plain loop (e.g. dynamic sparse training's thresholds)."""

    penalty: Callable[[], torch.Tensor] | None = None  # added to the task loss at every step
    # called after each optimiser step with its index (0-based) and the number of steps of the whole training
    after_step: Callable[[int, int], None] | None = None
    after_epoch: Callable[[int], dict[str, float]] | None = None  # values appended to the history per epoch
    no_weight_decay: tuple[nn.Parameter, ...] = ()  # parameters trained without weight decay
    parameters: tuple[nn.Parameter, ...] = ()  # trained too, though not the model's (e.g. thresholds held outside)
    progress: bool = True  # the per-epoch progress bar (off for many short trainings under one bar of their own)


def _make_optimizer(model: nn.Module, cfg: TrainConfig, extras: TrainingExtras | None = None) -> torch.optim.Optimizer:
    extras = extras or TrainingExtras()
    exempt = {id(p) for p in extras.no_weight_decay}
    trainable = list({id(p): p for p in [*model.parameters(), *extras.parameters] if p.requires_grad}.values())
    groups = [
        {"params": [p for p in trainable if id(p) not in exempt], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trainable if id(p) in exempt], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def _autocast(device: torch.device, precision: Literal["float32", "bfloat16"]):
    """bf16 autocast on CUDA when ``precision`` is bfloat16 (no grad scaler needed); a no-op context otherwise."""
    enabled = device.type == "cuda" and precision == "bfloat16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def train(
    model: nn.Module,
    train_split: dict[str, torch.Tensor],
    validation_split: dict[str, torch.Tensor] | None,
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    description: str = "train",
    loss_weights: list[float] | None = None,
    extras: TrainingExtras | None = None,
) -> dict[str, list[float] | float]:
    """Train ``model`` in place.

    Args:
        model: the network, on any device (moved to ``device``).
        train_split / validation_split: ``images`` (N, H, W) uint8 and ``labels`` (N,) int64.
        cfg: hyper-parameters.
        device: where data and model live during training.
        seed: drives shuffling, augmentation and dropout.
        description: label of the progress bar.
        loss_weights: per-exit loss weights for multi-exit models (default: 1 each).
        extras: a penalty added to the loss, per-step and per-epoch callbacks (``TrainingExtras``).

    Returns:
        History: ``train_loss`` and ``val_accuracy`` per epoch (and the ``extras.after_epoch`` values),
        ``train_seconds`` (wall time).

    Raises:
        TrainingDivergedError: the loss became NaN/inf (names the epoch, step and learning rate).
    """
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    fmt = _training_memory_format(model, cfg.memory_format, device)
    model.to(device=device, memory_format=fmt).train()
    keep = slice(0, cfg.train_subset)  # the split is a seeded random permutation: its head is a random subset
    images = train_split["images"][keep].to(device)  # (N, H, W) or (N, C, H, W) uint8, stays uint8 until batched
    labels = train_split["labels"][keep].to(device)
    n = images.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    extras = extras or TrainingExtras()
    optimizer = _make_optimizer(model, cfg, extras)
    history: dict[str, list[float] | float] = {"train_loss": [], "val_accuracy": []}
    start, step = time.perf_counter(), 0
    bar = tqdm(range(cfg.epochs), desc=description, unit="epoch", leave=False, disable=not extras.progress)
    for epoch in bar:
        order = torch.randperm(n, generator=generator, device=device)
        loss_sum = torch.zeros((), device=device)
        for first in range(0, n, cfg.batch_size):
            idx = order[first : first + cfg.batch_size]
            x = augment_batch(images_to_float(images[idx]), cfg.augment, generator)
            x = x.contiguous(memory_format=fmt) if x.dim() == 4 else x
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, cfg)
            with _autocast(device, cfg.precision):
                loss = exits_loss(model(x), labels[idx], loss_weights, cfg.label_smoothing)
                if extras.penalty is not None:
                    loss = loss + extras.penalty()
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"{description}: loss is {loss.item()} at epoch {epoch + 1}, step {step} "
                    f"(lr {lr_at(step, total_steps, cfg):.3g}). Lower `learning_rate` or check the data."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if extras.after_step is not None:
                extras.after_step(step, total_steps)
            loss_sum += loss.detach() * idx.numel()
            step += 1
        history["train_loss"].append(loss_sum.item() / n)
        if extras.after_epoch is not None:
            for key, value in extras.after_epoch(epoch).items():
                history.setdefault(key, []).append(value)
        if validation_split is not None:
            history["val_accuracy"].append(evaluate(model, validation_split, device, cfg.eval_batch_size))
        bar.set_postfix(
            loss=f"{history['train_loss'][-1]:.4f}", val_acc=(history["val_accuracy"] or [float("nan")])[-1]
        )
    history["train_seconds"] = time.perf_counter() - start
    return history


@torch.no_grad()
def predict_exit_logits(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 2048
) -> torch.Tensor:
    """Logits of every exit, (E, N, num_classes), of uint8 images (N, H, W) in eval mode
    (E = 1 for a plain CNN), computed on ``device``; the model's mode and device are restored afterwards."""
    outs = []
    with evaluated_on(model, device):
        for first in range(0, images.shape[0], batch_size):
            x = images_to_float(images[first : first + batch_size].to(device))
            with _autocast(device, "bfloat16"):  # predictions: bf16 on CUDA (training has its own precision)
                outs.append(torch.stack([z.float() for z in as_exit_list(model(x))]))
    return torch.cat(outs, dim=1)


def predict_logits(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 2048
) -> torch.Tensor:
    """Logits (N, num_classes) of the model's last exit."""
    return predict_exit_logits(model, images, device, batch_size)[-1]


def accuracy_per_exit(
    model: nn.Module, split: dict[str, torch.Tensor], device: torch.device, batch_size: int = 2048
) -> list[float]:
    """Top-1 accuracy in [0, 1] of every exit on a split."""
    logits = predict_exit_logits(model, split["images"], device, batch_size)
    hits = logits.argmax(-1).cpu() == split["labels"].cpu()  # (E, N)
    return hits.float().mean(1).tolist()


def evaluate(model: nn.Module, split: dict[str, torch.Tensor], device: torch.device, batch_size: int = 2048) -> float:
    """Top-1 accuracy in [0, 1] of the model's last exit on a split."""
    return accuracy_per_exit(model, split, device, batch_size)[-1]
