"""Read-only dataset: an MNIST-like dataset (Fashion-MNIST, MNIST) read through torchvision."""

from __future__ import annotations

from typing import Any

import torch
from kedro.io import AbstractDataset, DatasetError

from evoprune.core.data import load_raw_dataset


class MNISTLikeDataset(AbstractDataset[None, dict[str, torch.Tensor]]):
    """Loads ``train_images/labels`` and ``test_images/labels`` tensors.

    Args:
        path: torchvision root (files are staged into ``<path>/<ClassName>/raw/``).
        dataset: ``fashion_mnist`` or ``mnist``.
        source_dir: folder with the four IDX files (.gz or plain), used when ``download`` is false.
        download: let torchvision download the files (machines with internet only).
    """

    def __init__(
        self,
        *,
        path: str,
        dataset: str,
        source_dir: str | None = None,
        download: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._path, self._dataset, self._source_dir, self._download = path, dataset, source_dir, download
        self.metadata = metadata

    def load(self) -> dict[str, torch.Tensor]:
        return load_raw_dataset(self._path, self._dataset, self._source_dir, self._download)

    def save(self, data: None) -> None:
        raise DatasetError("MNISTLikeDataset is read-only: it reads the raw IDX files.")

    def _describe(self) -> dict[str, Any]:
        return {
            "path": self._path,
            "dataset": self._dataset,
            "source_dir": self._source_dir,
            "download": self._download,
        }
