"""kedro-datasets' CSV, JSON and Matplotlib datasets whose local saves are atomic.

Each class takes exactly the arguments of its parent (load/save args, fs_args, credentials, versioning)
and loads like it. Saving to a local path writes a temporary file beside the target and renames it over
the target (``evoprune.core.atomic``): a failed save (disk full, file size limit) leaves the previous
file byte-identical and raises an error naming the path and the cause. Remote protocols (s3, gcs, ...),
whose object stores replace objects whole anyway, and exotic ``fs_args.open_args_save`` write through
fsspec as the parent does.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd
from kedro.io.core import get_filepath_str
from kedro_datasets.json import JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset
from kedro_datasets.pandas import CSVDataset
from matplotlib.figure import Figure

from evoprune.core.atomic import atomic_open

_BUILTIN_OPEN_ARGS = {"mode", "encoding", "errors", "newline", "buffering"}


def _atomic_open_args(protocol: str, open_args: dict[str, Any]) -> dict[str, Any] | None:
    """``open_args_save`` as arguments of :func:`atomic_open`, or None where the save cannot be atomic
    (a remote protocol, an append mode, or fsspec-only arguments)."""
    if protocol != "file" or set(open_args) - _BUILTIN_OPEN_ARGS:
        return None
    if open_args.get("mode", "wb") not in ("w", "wb", "wt", "x", "xb"):
        return None
    return dict(open_args)


class AtomicCSVDataset(CSVDataset):
    """``pandas.CSVDataset`` with atomic local saves (same arguments)."""

    def save(self, data: pd.DataFrame) -> None:
        args = _atomic_open_args(self._protocol, self._fs_open_args_save)
        if args is None:
            return super().save.__wrapped__(self, data)  # type: ignore[attr-defined]
        with atomic_open(get_filepath_str(self._get_save_path(), self._protocol), **args) as handle:
            data.to_csv(path_or_buf=handle, **self._save_args)
        self._invalidate_cache()


class AtomicJSONDataset(JSONDataset):
    """``json.JSONDataset`` with atomic local saves (same arguments)."""

    def save(self, data: Any) -> None:
        args = _atomic_open_args(self._protocol, self._fs_open_args_save)
        if args is None:
            return super().save.__wrapped__(self, data)  # type: ignore[attr-defined]
        with atomic_open(get_filepath_str(self._get_save_path(), self._protocol), **args) as handle:
            json.dump(data, handle, **self._save_args)
        self._invalidate_cache()


class AtomicMatplotlibDataset(MatplotlibDataset):
    """``matplotlib.MatplotlibDataset`` with atomic local saves of each image (same arguments)."""

    def _save_to_fs(self, full_key_path: str, plot: Figure) -> None:
        args = _atomic_open_args(self._protocol, self._fs_open_args_save)
        if args is None:
            return super()._save_to_fs(full_key_path, plot)
        buffer = io.BytesIO()
        plot.savefig(buffer, **self._save_args)
        with atomic_open(full_key_path, **args) as handle:
            handle.write(buffer.getvalue())
