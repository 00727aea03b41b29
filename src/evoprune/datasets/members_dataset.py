"""Chosen Pareto members in one portable file: architecture spec, weights and masks (no pickle)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from kedro.io.core import DatasetError

from evoprune.core.exits import build_network, input_shape
from evoprune.core.masking import prune_physically
from evoprune.core.models.adapter import CheckpointMismatchError, load_weights, rebuild_checked
from evoprune.core.units import ChromosomeLayout, build_layout
from evoprune.datasets._file_dataset import TorchFileDataset

MEMBERS_FORMAT = "evoprune.members/1"


def _rebuild(path: Any, spec: Any, state_dict: Any, stage: str) -> torch.nn.Module:
    """The unpruned network of a members file (weights loaded when the file holds them), checked on the
    meta device before anything is allocated; any mismatch is a DatasetError naming the file and the stage."""
    if not isinstance(spec, dict):
        raise DatasetError(f"{path} holds no model spec; re-run {stage}.")
    try:
        if state_dict is None:
            return build_network(spec)
        return rebuild_checked(build_network, spec, state_dict, f"the network in {path}")
    except Exception as exc:
        raise DatasetError(f"Cannot rebuild the network of {path}: {exc} Re-run {stage}.") from exc


def _check_masks(path: Any, masks: Any, model: torch.nn.Module, stage: str) -> ChromosomeLayout:
    """The network's unit layout, after checking that ``masks`` is a (K, num_bits) bool tensor of it."""
    layout = build_layout(model, input_shape(model))
    if not isinstance(masks, torch.Tensor) or masks.dim() != 2 or masks.shape[1] != layout.num_bits:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise DatasetError(
            f"{path}: masks of shape {shape} do not fit the network's {layout.num_bits} units; re-run {stage}."
        )
    return layout


class PrunedMembersDataset(TorchFileDataset):
    """``{"model": nn.Module, "masks": (K, num_bits) bool, "member_ids": list[int]}`` <-> one file.

    The pruned network of member k is ``evoprune.core.masking.prune_physically(model, layout, masks[k])``
    with ``layout = evoprune.core.units.build_layout(model, input_shape)``.
    """

    def load(self) -> dict[str, Any]:
        payload = self._read()
        if not isinstance(payload, dict) or payload.get("format") != MEMBERS_FORMAT:
            raise DatasetError(
                f"{self._filepath} is not an evoprune members file (format '{MEMBERS_FORMAT}'); re-run mask_search."
            )
        model = _rebuild(self._filepath, payload.get("spec"), payload.get("state_dict"), "mask_search")
        _check_masks(self._filepath, payload["masks"], model, "mask_search")
        return {
            "model": model,
            "masks": payload["masks"].numpy().astype(bool),
            "member_ids": payload["member_ids"].tolist(),
        }

    def save(self, data: dict[str, Any]) -> None:
        model = data["model"]
        self._write(
            {
                "format": MEMBERS_FORMAT,
                "spec": model.spec,
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "masks": torch.as_tensor(np.asarray(data["masks"], dtype=bool)),
                "member_ids": torch.as_tensor(list(data["member_ids"]), dtype=torch.long),
            }
        )


FINETUNED_FORMAT = "evoprune.finetuned_members/1"
OPTIONAL_FINETUNED_KEYS = ("histories", "finetune_settings")


class FinetunedMembersDataset(TorchFileDataset):
    """Fine-tuned, physically pruned members in one file (no pickle):
    ``{"model": the unpruned nn.Module, "masks": (K, num_bits) bool, "member_ids": list[int],
    "pruned": list of K pruned nn.Modules}``.

    Only the unpruned spec, the masks and each pruned state dict are stored; loading rebuilds every
    pruned architecture with ``prune_physically`` and loads its fine-tuned weights. Optional keys, kept when
    given: ``"histories"`` (K fine-tune histories: lists of floats and floats) and ``"finetune_settings"``
    (``evoprune.core.finetune.finetune_settings`` of the runs that made them).
    """

    def load(self) -> dict[str, Any]:
        payload = self._read()
        if not isinstance(payload, dict) or payload.get("format") != FINETUNED_FORMAT:
            raise DatasetError(
                f"{self._filepath} is not an evoprune fine-tuned members file (format '{FINETUNED_FORMAT}'); "
                "re-run the finetune pipeline."
            )
        model = _rebuild(self._filepath, payload.get("spec"), None, "finetune")
        layout = _check_masks(self._filepath, payload["masks"], model, "finetune")
        masks = payload["masks"].numpy().astype(bool)
        pruned = []
        for k, (mask, state) in enumerate(zip(masks, payload["pruned_state_dicts"], strict=True)):
            member = prune_physically(model, layout, mask, input_shape(model))
            try:
                pruned.append(load_weights(member, state, f"member {k} of {self._filepath}").eval())
            except CheckpointMismatchError as exc:
                raise DatasetError(f"{exc} Re-run the finetune pipeline.") from exc
        optional = {k: payload[k] for k in OPTIONAL_FINETUNED_KEYS if k in payload}
        return {
            "model": model,
            "masks": masks,
            "member_ids": payload["member_ids"].tolist(),
            "pruned": pruned,
            **optional,
        }

    def save(self, data: dict[str, Any]) -> None:
        model = data["model"]
        self._write(
            {
                **{k: data[k] for k in OPTIONAL_FINETUNED_KEYS if k in data},
                "format": FINETUNED_FORMAT,
                "spec": model.spec,
                "masks": torch.as_tensor(np.asarray(data["masks"], dtype=bool)),  # (K, num_bits); K may be 0
                "member_ids": torch.as_tensor(list(data["member_ids"]), dtype=torch.long),
                "pruned_state_dicts": [
                    {k: v.detach().cpu() for k, v in m.state_dict().items()} for m in data["pruned"]
                ],
            }
        )
