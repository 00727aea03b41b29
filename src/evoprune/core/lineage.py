"""Where a model came from: content digests of the inputs it was made from.

A model file records, for each input of the stage that made it (the model it started from, the data it was
trained on), a digest of that input's content. Before a run reuses the file, the digests are compared with the
inputs on disk: a file of the same architecture but from another run (another dense model, other data) is then
refused instead of being searched or fine-tuned as if it belonged here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

DIGEST_LENGTH = 16  # hex characters: 64 bits, ample to tell runs apart


def is_digestible(value: Any) -> bool:
    """Whether ``value`` is something a model is made from: a model, a tensor, or a mapping of them."""
    if isinstance(value, nn.Module | torch.Tensor | np.ndarray):
        return True
    return isinstance(value, Mapping) and bool(value) and all(is_digestible(v) for v in value.values())


def content_digest(value: Any) -> str:
    """A digest of a model's state_dict (names, dtypes, shapes, values) or of tensors (a mapping of them).

    Independent of memory format and device: a model saved and loaded again, or kept channels_last, has the
    digest it had in memory.
    """
    hasher = hashlib.blake2b(digest_size=DIGEST_LENGTH // 2)
    _update(hasher, value)
    return hasher.hexdigest()


def _update(hasher: Any, value: Any) -> None:
    if isinstance(value, nn.Module):
        value = value.state_dict()
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            hasher.update(f"<{key}>".encode())
            _update(hasher, value[key])
        return
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"content_digest covers models, tensors and mappings of them, not {type(value).__name__}")
    tensor = value.detach().cpu().contiguous()
    hasher.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    hasher.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def lineage_differences(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """The inputs whose digest in ``current`` differs from the one ``recorded`` when the model was made
    (inputs absent from ``current`` are not compared)."""
    return [name for name in sorted(recorded) if name in current and current[name] != recorded[name]]
