"""A trained Scoring Net in one file without pickle: weights + feature spec (``core.scoring_net``)."""

from __future__ import annotations

from kedro.io.core import DatasetError

from evoprune.core.scoring_net import ScoringNet, load_scoring_net, scoring_net_state
from evoprune.datasets._file_dataset import TorchFileDataset


class ScoringNetDataset(TorchFileDataset):
    """``ScoringNet`` <-> one ``.pt`` file (``scoring_net_state``), loaded with ``weights_only=True``; a file of
    another feature spec is refused on load with what to do."""

    def load(self) -> ScoringNet:
        try:
            return load_scoring_net(self._read())
        except (ValueError, KeyError, RuntimeError) as exc:
            raise DatasetError(f"{self._filepath}: {exc}") from exc

    def save(self, data: ScoringNet) -> None:
        if not isinstance(data, ScoringNet):
            raise DatasetError(f"ScoringNetDataset({self._filepath}) saves a ScoringNet, got {type(data).__name__}.")
        self._write(scoring_net_state(data))
