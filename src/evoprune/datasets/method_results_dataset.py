"""Results of the methods that run in their own pipelines (``dst``, ...), for the report: one CSV per method.

``load()`` returns ``{method: DataFrame}`` for every ``<method>.csv`` in the folder, and ``{}`` when there is
none (``prune``'s report then has no rows of other methods). ``save({method: frame})`` writes (atomically) only
the methods given: the ``dst`` pipeline replaces ``dst.csv`` and leaves the other methods' files alone.
kedro-datasets' ``PartitionedDataset`` refuses an empty folder on load, which is the normal state here.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io.core import AbstractDataset, DatasetError

from evoprune.core import atomic


class MethodResultsDataset(AbstractDataset[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]):
    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> dict[str, pd.DataFrame]:
        if not self._path.is_dir():
            return {}
        out = {}
        for file in sorted(self._path.glob("*.csv")):
            try:
                out[file.stem] = pd.read_csv(file)
            except Exception as exc:  # noqa: BLE001 - any parse failure means the file is not ours
                raise DatasetError(
                    f"{file} is not a readable results table ({exc}); delete it or re-run its pipeline."
                ) from exc
        return out

    def save(self, data: dict[str, pd.DataFrame]) -> None:
        for method, frame in data.items():
            if not method.isidentifier():
                raise DatasetError(f"method name '{method}' must be an identifier (it names {self._path}/<method>.csv)")
            buffer = io.StringIO()
            frame.to_csv(buffer, index=False)
            atomic.write_text(self._path / f"{method}.csv", buffer.getvalue())

    def _exists(self) -> bool:
        return True  # no method has run yet is a valid state: load() gives {}

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
