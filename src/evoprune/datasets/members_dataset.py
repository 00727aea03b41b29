"""Chosen Pareto members in one portable file: architecture spec, weights and masks (no pickle)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from kedro.io.core import DatasetError

from evoprune.core.exits import build_network, input_shape
from evoprune.core.masking import prune_physically
from evoprune.core.units import build_layout
from evoprune.datasets._file_dataset import TorchFileDataset

MEMBERS_FORMAT = "evoprune.members/1"


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
        model = build_network(payload["spec"])
        model.load_state_dict(payload["state_dict"])
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


class FinetunedMembersDataset(TorchFileDataset):
    """Fine-tuned, physically pruned members in one file (no pickle):
    ``{"model": the unpruned nn.Module, "masks": (K, num_bits) bool, "member_ids": list[int],
    "pruned": list of K pruned nn.Modules}``.

    Only the unpruned spec, the masks and each pruned state dict are stored; loading rebuilds every
    pruned architecture with ``prune_physically`` and loads its fine-tuned weights.
    """

    def load(self) -> dict[str, Any]:
        payload = self._read()
        if not isinstance(payload, dict) or payload.get("format") != FINETUNED_FORMAT:
            raise DatasetError(
                f"{self._filepath} is not an evoprune fine-tuned members file (format '{FINETUNED_FORMAT}'); "
                "re-run the finetune pipeline."
            )
        model = build_network(payload["spec"])
        masks = payload["masks"].numpy().astype(bool)
        layout = build_layout(model, input_shape(model))
        pruned = []
        for mask, state in zip(masks, payload["pruned_state_dicts"], strict=True):
            member = prune_physically(model, layout, mask, input_shape(model))
            member.load_state_dict(state)
            pruned.append(member.eval())
        return {"model": model, "masks": masks, "member_ids": payload["member_ids"].tolist(), "pruned": pruned}

    def save(self, data: dict[str, Any]) -> None:
        model = data["model"]
        self._write(
            {
                "format": FINETUNED_FORMAT,
                "spec": model.spec,
                "masks": torch.as_tensor(np.asarray(data["masks"], dtype=bool)),  # (K, num_bits); K may be 0
                "member_ids": torch.as_tensor(list(data["member_ids"]), dtype=torch.long),
                "pruned_state_dicts": [
                    {k: v.detach().cpu() for k, v in m.state_dict().items()} for m in data["pruned"]
                ],
            }
        )
