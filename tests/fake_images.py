"""Learnable fake images, free of Kedro and MLflow (``tests/core/test_cuda.py`` runs with them on a GPU machine
that has neither); ``tests.conftest`` re-exports them."""

from __future__ import annotations

import numpy as np
import torch


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake images: noise plus a bright 6x6 block whose position encodes the label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 5)
        images[i, 4 + 12 * r : 10 + 12 * r, 2 + 5 * c : 8 + 5 * c] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def image_split(n: int, seed: int) -> dict[str, torch.Tensor]:
    """A split of ``n`` fake images as the pipelines hold it: uint8 images and int64 labels."""
    x, y = make_images(n, seed)
    return {"images": torch.from_numpy(x), "labels": torch.from_numpy(y).long()}
