import pytest
import torch
from pydantic import ValidationError

from evoprune.core.cost import count_flops, count_params, interleaved_seconds, paired_speedup
from evoprune.core.models import build_model, parse_model_spec


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "lenet5"},
        {"name": "vgg", "stages": [[8], [16]], "fc_features": [32]},
        {"name": "vgg", "stages": [[4, 4], [8], [8]], "num_classes": 7, "in_channels": 3, "input_size": 32},
    ],
)
def test_output_shape(spec):
    model = build_model(spec)
    c, s = model.spec["in_channels"], model.spec["input_size"]
    out = model(torch.randn(5, c, s, s))
    assert out.shape == (5, model.spec["num_classes"])
    assert len(model.stages) >= 2


def test_spec_round_trips_to_the_same_architecture():
    model = build_model({"name": "vgg", "stages": [[8], [16]], "fc_features": [32]})
    again = build_model(model.spec)
    assert [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in again.parameters()]


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(ValidationError, match=r"'resnet'.*'lenet5', 'vgg'"):
        parse_model_spec({"name": "resnet"})


def test_vgg_with_too_many_pooling_stages_is_refused():
    with pytest.raises(ValueError, match="fewer `stages`"):
        build_model({"name": "vgg", "stages": [[4]] * 6})


def test_lenet5_cost_matches_its_layers():
    model = build_model({"name": "lenet5"})
    # conv1 28*28*6*25, conv2 10*10*16*6*25, fc 400*120 + 120*84 + 84*10 multiply-adds, 2 FLOPs each
    macs = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10
    assert count_flops(model, (1, 28, 28)) == 2 * macs
    assert count_params(model) == (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (
        84 * 10 + 10
    )


def test_interleaved_timing_alternates_and_pairs_ratios():
    calls = []
    times = interleaved_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up, then in turn
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    # pairs taken moments apart: a drift of the machine's speed cancels in each ratio
    assert paired_speedup([2.0, 4.0, 8.0], [1.0, 2.0, 4.0]) == 2.0
    assert paired_speedup([2.0, 3.0, 100.0], [1.0, 1.0, 1.0]) == 3.0  # median, not mean
    with pytest.raises(ValueError, match="equally long"):
        paired_speedup([1.0], [])
