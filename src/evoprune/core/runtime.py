"""Device choice and seeding: one seed drives torch (CPU and CUDA) and NumPy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is refused clearly."""
    if name not in DEVICE_CHOICES:
        raise ValueError(f"`device` must be one of {DEVICE_CHOICES}, got '{name}' (conf/base/parameters.yml).")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device: cuda` was asked for but torch sees no GPU; use `device: auto` or `cpu`.")
    return torch.device(name)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch's global RNG (dropout, init) and return a NumPy Generator for explicit use."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


@contextmanager
def evaluated_on(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``model`` in eval mode on ``device`` for the block; its mode and device are restored afterwards (fine-tunes
    hand their networks back on the CPU, and networks loaded from the catalog are there too)."""
    was_training = model.training
    home = next(iter(model.parameters()), None)
    home = None if home is None else home.device
    model.eval().to(device)
    try:
        yield model
    finally:
        model.train(was_training)
        if home is not None:
            model.to(home)
