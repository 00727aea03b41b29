"""A model checkpoint: architecture spec + state_dict, no pickled code."""

from __future__ import annotations

from typing import Any

from kedro.io.core import DatasetError
from torch import nn

from evoprune.core.exits import build_network
from evoprune.core.models.adapter import CheckpointMismatchError, rebuild_checked
from evoprune.core.sparse.thresholds import sparse_weights
from evoprune.datasets._file_dataset import TorchFileDataset

CHECKPOINT_FORMAT = "evoprune.model/1"


class TorchModelDataset(TorchFileDataset):
    """Saves an evoprune model as ``{"format", "spec", "state_dict", "lineage"}``; loading rebuilds it from the
    spec. ``lineage`` (the model's ``lineage`` attribute: ``{input: digest}`` of what it was made from, see
    ``evoprune.core.lineage``) comes back as the loaded model's ``lineage``.

    Loads with ``torch.load(..., weights_only=True)``: a checkpoint cannot run code.
    """

    def load(self) -> nn.Module:
        ckpt: Any = self._read()
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise DatasetError(
                f"{self._filepath} is not an evoprune model checkpoint (expected format '{CHECKPOINT_FORMAT}'). "
                "Re-run the stage that trains this model."
            )
        spec, state_dict = ckpt.get("spec"), ckpt.get("state_dict")
        if not isinstance(spec, dict) or not isinstance(state_dict, dict):
            raise DatasetError(f"{self._filepath} lacks its spec or state_dict; re-run the stage that writes it.")
        try:
            model = rebuild_checked(build_network, spec, state_dict, f"checkpoint {self._filepath}")
        except CheckpointMismatchError as exc:
            raise DatasetError(
                f"{exc} It was written by an incompatible evoprune version; re-run the stage that trains it."
            ) from exc
        except Exception as exc:
            raise DatasetError(
                f"Cannot rebuild the model of checkpoint {self._filepath} from its spec {spec}: {exc}. "
                "A factory model needs its package importable; otherwise re-run the stage that trains it."
            ) from exc
        lineage = ckpt.get("lineage")
        model.lineage = dict(lineage) if isinstance(lineage, dict) else {}
        return model

    def save(self, model: nn.Module) -> None:
        spec = getattr(model, "spec", None)
        if not isinstance(spec, dict):
            raise DatasetError(
                f"TorchModelDataset({self._filepath}) saves models built by evoprune.core.models.build_model "
                f"(built-in, torchvision or factory) or evoprune.core.exits (they carry a `spec`); got "
                f"{type(model).__name__} without one."
            )
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        lineage = {str(k): str(v) for k, v in (getattr(model, "lineage", None) or {}).items()}
        self._write({"format": CHECKPOINT_FORMAT, "spec": spec, "state_dict": state, "lineage": lineage})


SPARSE_FORMAT = "evoprune.sparse_model/1"


class SparseModelDataset(TorchFileDataset):
    """``{"model": nn.Module, "weight_masks": {layer: bool tensor}}`` <-> one file without pickle: the network
    as dense tensors (zeros where pruned; spec + state_dict, like ``TorchModelDataset``) and the keep mask of
    each masked weight (``core.sparse.thresholds.sparse_weights``: conv/linear layers, LSTM gate matrices)."""

    def load(self) -> dict[str, Any]:
        payload: Any = self._read()
        if not isinstance(payload, dict) or payload.get("format") != SPARSE_FORMAT:
            raise DatasetError(
                f"{self._filepath} is not an evoprune sparse model (format '{SPARSE_FORMAT}'); re-run dst."
            )
        try:
            model = rebuild_checked(
                build_network, payload["spec"], payload["state_dict"], f"sparse model {self._filepath}"
            )
        except Exception as exc:
            raise DatasetError(f"Cannot rebuild the sparse model of {self._filepath}: {exc} Re-run dst.") from exc
        weights = {name: getattr(module, attribute) for name, (module, attribute) in sparse_weights(model).items()}
        masks = payload.get("weight_masks")
        bad = [
            name
            for name, mask in (masks or {}).items()
            if name not in weights or tuple(mask.shape) != tuple(weights[name].shape)
        ]
        if not isinstance(masks, dict) or bad:
            raise DatasetError(f"{self._filepath}: weight masks do not fit the network (layers {bad}); re-run dst.")
        return {"model": model, "weight_masks": {k: v.bool() for k, v in masks.items()}}

    def save(self, data: dict[str, Any]) -> None:
        model = data["model"]
        self._write(
            {
                "format": SPARSE_FORMAT,
                "spec": model.spec,
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "weight_masks": {k: v.detach().cpu().bool() for k, v in data["weight_masks"].items()},
            }
        )
