"""dst's parameters: the magnitude baseline gets as many total epochs as dynamic sparse training."""

import pytest

from evoprune.core.train import TrainConfig
from evoprune.pipelines.dst.nodes import DSTParams

FINETUNE = TrainConfig(epochs=3, optimizer="adamw", learning_rate=1e-3)


@pytest.mark.parametrize(("start_from", "expected"), [("init", 12), ("trained", 20)])
def test_the_magnitude_baseline_matches_the_total_epochs_of_dst(start_from, expected):
    params = DSTParams(start_from=start_from)  # DST: 20 epochs by default
    magnitude = params.magnitude_training(FINETUNE, dense_epochs=8)
    assert magnitude.epochs == expected and magnitude.learning_rate == FINETUNE.learning_rate


def test_an_explicit_magnitude_budget_wins_and_dst_from_init_never_gets_zero_epochs():
    assert DSTParams(magnitude_finetune_epochs=4).magnitude_training(FINETUNE, 8).epochs == 4
    assert DSTParams().magnitude_training(FINETUNE, dense_epochs=50).epochs == 1
