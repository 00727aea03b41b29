"""A dict of named tensors in one file (e.g. a data split: images and labels)."""

from __future__ import annotations

import torch
from kedro.io.core import DatasetError

from evoprune.datasets._file_dataset import TorchFileDataset


class TensorDictDataset(TorchFileDataset):
    """``dict[str, Tensor]`` <-> one ``.pt`` file, loaded with ``weights_only=True``."""

    def load(self) -> dict[str, torch.Tensor]:
        data = self._read()
        if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise DatasetError(f"{self._filepath} does not hold a dict of tensors; re-run the stage that writes it.")
        return data

    def save(self, data: dict[str, torch.Tensor]) -> None:
        if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise DatasetError(
                f"TensorDictDataset({self._filepath}) saves a dict of tensors, got {type(data).__name__}."
            )
        self._write({k: v.detach().cpu().contiguous() for k, v in data.items()})
