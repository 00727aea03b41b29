"""Read-only dataset: raw image files (Fashion-MNIST, MNIST, CIFAR-10, CIFAR-100) read through torchvision."""

from __future__ import annotations

from typing import Any

import torch
from kedro.io import AbstractDataset, DatasetError

from evoprune.core.data import load_raw_dataset


class RawImagesDataset(AbstractDataset[None, dict[str, torch.Tensor]]):
    """Loads ``train_images/labels`` and ``test_images/labels`` tensors, validating the raw files first.

    Args:
        path: torchvision root (IDX files are staged into ``<path>/<ClassName>/raw/``, CIFAR batches into
            ``<path>/cifar-10-batches-py/`` or ``<path>/cifar-100-python/``).
        dataset: ``fashion_mnist``, ``mnist``, ``cifar10`` or ``cifar100``.
        source_dir: folder with the raw files (the four IDX files, .gz or plain; the unpacked CIFAR
            folder), used when ``download`` is false.
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
        raise DatasetError("RawImagesDataset is read-only: it reads the raw image files.")

    def _describe(self) -> dict[str, Any]:
        return {
            "path": self._path,
            "dataset": self._dataset,
            "source_dir": self._source_dir,
            "download": self._download,
        }
