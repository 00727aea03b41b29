"""The latency model of the target device (``core.latency``) in one file, and the cache of every one measured.

``LatencyModelDataset`` holds the model a run uses (``latency_model``). Saving it also files a copy under
its key in ``cache_dir``; ``LatencyTableCacheDataset`` reads that folder back, so the ``latency_profile``
node reuses tables measured for the same device, torch, threads, settings and architecture instead of
timing again, and times afresh for any other key. Plain tensors and strings only (``weights_only=True``).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kedro.io.core import AbstractDataset, DatasetError, Version

from evoprune.core import atomic
from evoprune.core.latency import LatencyModel, key_digest
from evoprune.datasets._file_dataset import TorchFileDataset

logger = logging.getLogger(__name__)


def _read_model(payload: Any, where: str) -> LatencyModel:
    try:
        return LatencyModel.from_state(payload)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise DatasetError(
            f"{where} is not a latency model this version wrote ({exc!r}); run `kedro run --pipeline=latency_profile`"
        ) from exc


def _files(path: Path, model: LatencyModel) -> bool:
    """Whether ``path`` already holds ``model`` (torch.save's bytes differ between saves of equal contents)."""
    try:
        held = LatencyModel.from_state(torch.load(path, map_location="cpu", weights_only=True))
    except Exception:  # noqa: BLE001 - missing, torn or foreign: it is filed again
        return False
    same_tables = all(
        a.name == b.name and np.array_equal(a.ms, b.ms) for a, b in zip(held.tables, model.tables, strict=False)
    )
    scalars = (held.key, held.intercept_ms, held.slope, held.dense_ms, len(held.tables))
    return same_tables and scalars == (model.key, model.intercept_ms, model.slope, model.dense_ms, len(model.tables))


class LatencyModelDataset(TorchFileDataset):
    """``LatencyModel`` <-> one ``.pt`` file; with ``cache_dir``, every save also files a copy there named by
    the model's key digest (read back by ``LatencyTableCacheDataset``)."""

    def __init__(
        self,
        *,
        filepath: str,
        cache_dir: str | None = None,
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__(filepath=filepath, version=version, metadata=metadata)
        self._cache_dir = Path(cache_dir) if cache_dir else None

    def load(self) -> LatencyModel:
        return _read_model(self._read(), self.filepath)

    def save(self, data: LatencyModel) -> None:
        if not isinstance(data, LatencyModel):
            raise DatasetError(f"LatencyModelDataset({self.filepath}) saves a LatencyModel, got {type(data).__name__}.")
        state = data.state()
        self._write(state)
        if self._cache_dir is not None and data.available:
            cached = self._cache_dir / f"{key_digest(data.key)}.pt"
            if not _files(cached, data):  # a model reused from the cache stays as filed
                buffer = io.BytesIO()
                torch.save(state, buffer)
                atomic.write_bytes(cached, buffer.getbuffer())

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "cache_dir": self._cache_dir}


class LatencyTableCacheDataset(AbstractDataset[None, dict[str, LatencyModel]]):
    """Read-only: ``{key digest: LatencyModel}`` of every file in ``path`` (empty when the folder does not
    exist yet). A file that does not load is skipped with a warning naming it (its key is profiled again
    and the file replaced)."""

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> dict[str, LatencyModel]:
        cache: dict[str, LatencyModel] = {}
        for file in sorted(self._path.glob("*.pt")) if self._path.is_dir() else []:
            try:
                model = _read_model(torch.load(file, map_location="cpu", weights_only=True), str(file))
            except Exception as exc:  # noqa: BLE001 - a torn or foreign file only costs a new profile
                logger.warning("latency table cache: %s skipped (%s)", file, exc)
                continue
            if file.stem == key_digest(model.key):
                cache[file.stem] = model
            else:
                logger.warning("latency table cache: %s holds tables of another key; skipped", file)
        return cache

    def save(self, data: dict[str, LatencyModel]) -> None:
        raise DatasetError(
            f"LatencyTableCacheDataset({self._path}) is read-only: the latency_model dataset files new tables there"
        )

    def _exists(self) -> bool:
        return True  # an empty cache is a cache

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
