import pytest
import torch

from evoprune.core.exits import build_network
from evoprune.core.models import build_model
from evoprune.core.reinit import VARIANTS, reinit_model
from evoprune.core.train import TrainConfig, train
from tests.conftest import image_split

SPEC = {"name": "vgg", "stages": [[4], [8]], "fc_features": [16]}


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    initial = build_model(SPEC)
    trained = build_network(initial.spec)
    trained.load_state_dict(initial.state_dict())
    train(trained, image_split(64, 0), None, TrainConfig(epochs=1, batch_size=32), torch.device("cpu"), seed=0)
    return trained, initial


def _variant(pair, name, seed=1):
    trained, initial = pair
    return reinit_model(trained, initial, lambda: build_model(SPEC), name, seed)


def _params(model):
    return dict(model.named_parameters())


@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_is_seeded_and_keeps_the_architecture(pair, name):
    a, b = _variant(pair, name), _variant(pair, name)
    assert a.spec == pair[0].spec
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_keep_and_rewind(pair):
    trained, initial = pair
    keep, rewind = _variant(pair, "keep"), _variant(pair, "rewind")
    assert all(torch.equal(keep.state_dict()[k], v) for k, v in trained.state_dict().items())
    assert all(torch.equal(rewind.state_dict()[k], v) for k, v in initial.state_dict().items())


def test_sign_keeps_the_initial_signs_with_fresh_magnitudes(pair):
    initial = _params(pair[1])
    for key, value in _params(_variant(pair, "sign")).items():
        nonzero = initial[key] != 0
        assert torch.equal(torch.sign(value[nonzero]), torch.sign(initial[key][nonzero])), key
    weight = "stages.0.0.weight"
    assert not torch.equal(_params(_variant(pair, "sign"))[weight].abs(), initial[weight].abs())


def test_distribution_keeps_the_sorted_values_of_each_tensor(pair):
    initial = _params(pair[1])
    shuffled = _params(_variant(pair, "distribution"))
    for key, value in shuffled.items():
        assert torch.equal(value.flatten().sort().values, initial[key].flatten().sort().values), key
    assert not torch.equal(shuffled["stages.0.0.weight"], initial["stages.0.0.weight"])


def test_magnitude_keeps_absolute_values_with_random_signs(pair):
    initial = _params(pair[1])
    flipped = _params(_variant(pair, "magnitude"))
    for key, value in flipped.items():
        assert torch.equal(value.abs(), initial[key].abs()), key
    signs_changed = (
        (torch.sign(flipped["stages.0.0.weight"]) != torch.sign(initial["stages.0.0.weight"])).float().mean()
    )
    assert 0.2 < signs_changed < 0.8


def test_random_differs_from_both_and_buffers_come_from_theta0(pair):
    trained, initial = pair
    fresh = _variant(pair, "random")
    w = "stages.0.0.weight"
    assert not torch.equal(fresh.state_dict()[w], initial.state_dict()[w])
    assert not torch.equal(fresh.state_dict()[w], trained.state_dict()[w])
    assert torch.equal(fresh.state_dict()["stages.0.1.running_mean"], initial.state_dict()["stages.0.1.running_mean"])


def test_unknown_variant_and_mismatched_architectures_are_refused(pair):
    with pytest.raises(ValueError, match="unknown re-init variant 'shuffle'"):
        _variant(pair, "shuffle")
    other = build_model({"name": "lenet5"})
    with pytest.raises(ValueError, match="different architectures"):
        reinit_model(pair[0], other, lambda: build_model(SPEC), "rewind", 0)
