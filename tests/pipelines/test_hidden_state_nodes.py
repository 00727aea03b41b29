import pytest
from pydantic import ValidationError

from evoprune.core.models import build_model
from evoprune.pipelines.hidden_state.nodes import HiddenStateParams, prune_hidden_states
from tests.conftest import image_split


@pytest.mark.parametrize("sparsities", [[0.0], [0.5, 1.0], []])
def test_sparsities_outside_the_open_unit_interval_are_refused(sparsities):
    with pytest.raises(ValidationError, match="sparsities"):
        HiddenStateParams(sparsities=sparsities)


def test_a_model_without_an_lstm_is_refused_before_any_work():
    split = image_split(10, 0)
    with pytest.raises(ValueError, match="the dense model has none .*--env=lstm"):
        prune_hidden_states(
            build_model({"name": "lenet5"}), split, split, split, {"flops": 1.0}, HiddenStateParams(), 0, "cpu"
        )
