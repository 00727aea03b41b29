"""Deployment exports of pruned models: ONNX and TorchScript files that load without evoprune."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from torch import nn

from evoprune.core.atomic import atomic_directory

EXPORTERS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


class ExportedModelsDataset(AbstractDataset[dict[str, nn.Module], dict[str, dict[str, Path]]]):
    """Saves ``{name: nn.Module}`` as ``<path>/<name>.onnx`` and/or ``<path>/<name>.torchscript.pt``;
    loads ``{name: {format: file path}}`` (open them with onnxruntime or ``torch.jit.load``).

    Args:
        path: folder of the exports, replaced as a whole on every save (no stale member is left behind, and
            a failed save leaves the previous exports as they were).
        formats: any of ``onnx``, ``torchscript``.
    """

    def __init__(self, *, path: str, formats: list[str] | None = None, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self._formats = list(formats or EXPORTERS)
        unknown = sorted(set(self._formats) - set(EXPORTERS))
        if unknown:
            raise DatasetError(f"unknown export formats {unknown}; choose from {list(EXPORTERS)}")
        self.metadata = metadata

    def save(self, data: dict[str, nn.Module]) -> None:
        from evoprune.core.export import export_onnx, export_torchscript

        with atomic_directory(self._path) as folder:  # the old exports stay until every new one is written
            for name, model in data.items():
                if "onnx" in self._formats:
                    export_onnx(model, folder / f"{name}{SUFFIX['onnx']}")
                if "torchscript" in self._formats:
                    export_torchscript(model, folder / f"{name}{SUFFIX['torchscript']}")

    def load(self) -> dict[str, dict[str, Path]]:
        if not self._path.is_dir():
            raise DatasetError(f"no exports in {self._path}; run the finetune pipeline first")
        out: dict[str, dict[str, Path]] = {}
        for fmt in self._formats:
            for file in sorted(self._path.glob(f"*{SUFFIX[fmt]}")):
                out.setdefault(file.name.removesuffix(SUFFIX[fmt]), {})[fmt] = file
        return out

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "formats": self._formats}
