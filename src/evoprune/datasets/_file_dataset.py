"""Shared plumbing of our file-backed, versioned datasets (fsspec paths, like kedro-datasets)."""

from __future__ import annotations

import io
from pathlib import PurePosixPath
from typing import Any

import fsspec
import torch
from kedro.io.core import AbstractVersionedDataset, DatasetError, Version, get_filepath_str, get_protocol_and_path

from evoprune.core import atomic


class TorchFileDataset(AbstractVersionedDataset[Any, Any]):
    """Reads and writes one ``torch.save`` file holding only tensors and plain Python values."""

    def __init__(self, *, filepath: str, version: Version | None = None, metadata: dict[str, Any] | None = None):
        protocol, path = get_protocol_and_path(filepath, version)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **({"auto_mkdir": True} if protocol == "file" else {}))
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path), version=version, exists_function=self._fs.exists, glob_function=self._fs.glob
        )

    def _read(self) -> Any:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        try:
            with self._fs.open(path, "rb") as handle:
                return torch.load(handle, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as exc:  # unpickling refused, zip error, ...
            raise DatasetError(
                f"{path} is not a file this dataset wrote (torch.load with weights_only=True failed: {exc}). "
                "Re-run the stage that produces it."
            ) from exc

    def _write(self, payload: Any) -> None:
        """``torch.save`` the payload; a local file is replaced atomically (never left half-written),
        remote protocols write through fsspec."""
        path = get_filepath_str(self._get_save_path(), self._protocol)
        if self._protocol != "file":
            with self._fs.open(path, "wb") as handle:
                torch.save(payload, handle)
            return
        buffer = io.BytesIO()  # torch's zip writer would turn a failed write into a bare RuntimeError
        torch.save(payload, buffer)
        atomic.write_bytes(path, buffer.getbuffer())

    @property
    def filepath(self) -> str:
        """The file this dataset reads (for messages)."""
        return str(self._filepath)

    def read_spec(self) -> dict[str, Any] | None:
        """The architecture spec the file carries (model and members files), or None when it carries none."""
        return self.read_header()[0]

    def read_header(self) -> tuple[dict[str, Any] | None, dict[str, str]]:
        """The architecture spec (None when the file carries none) and the lineage (``{input: digest}`` of
        what the model was made from; empty when the file records none) of a model or members file."""
        payload = self._read()
        spec = payload.get("spec") if isinstance(payload, dict) else None
        lineage = payload.get("lineage") if isinstance(payload, dict) else None
        if not isinstance(lineage, dict) or not all(isinstance(v, str) for v in lineage.values()):
            lineage = {}
        return (spec if isinstance(spec, dict) else None), {str(k): v for k, v in lineage.items()}

    def _exists(self) -> bool:
        try:
            path = self._get_load_path()
        except DatasetError:
            return False
        return self._fs.exists(get_filepath_str(path, self._protocol))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}
