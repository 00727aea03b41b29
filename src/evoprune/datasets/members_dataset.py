"""Chosen Pareto members in one portable file: architecture spec, weights and masks (no pickle)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from kedro.io.core import DatasetError

from evoprune.core.exits import build_network
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
