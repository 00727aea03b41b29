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
    with pytest.raises(
        ValidationError, match=r"'lenet5', 'lenet300', 'vgg', 'resnet_cifar', 'alexnet_small'.*'name': 'resnet'"
    ):
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


@pytest.mark.parametrize(("depth", "params"), [(20, 0.27e6), (32, 0.46e6), (56, 0.85e6)])
def test_resnet_cifar_has_the_papers_size(depth, params):
    model = build_model({"name": "resnet_cifar", "depth": depth, "in_channels": 3, "input_size": 32})
    assert abs(count_params(model) - params) / params < 0.05  # He et al. 2016, table 6 (option B adds ~1%)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 6n + 1 3x3 convs and the classifier


def test_resnet_cifar_refuses_other_depths():
    with pytest.raises(ValidationError, match="6n \\+ 2"):
        parse_model_spec({"name": "resnet_cifar", "depth": 18})


@pytest.mark.parametrize("size", [28, 32, [24, 40]])
def test_alexnet_small_runs_on_small_and_non_square_images(size):
    model = build_model({"name": "alexnet_small", "in_channels": 3, "input_size": size})
    h, w = (size, size) if isinstance(size, int) else size
    assert model(torch.randn(2, 3, h, w)).shape == (2, 10)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 5


def test_torchvision_model_gets_a_stem_for_small_grey_images():
    model = build_model({"source": "torchvision", "name": "resnet18", "in_channels": 1, "input_size": 28})
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    big = build_model({"source": "torchvision", "name": "resnet18", "in_channels": 3, "input_size": 96})
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, torch.nn.MaxPool2d)  # ImageNet stem kept


def test_unknown_torchvision_name_is_refused_naming_the_key():
    from evoprune.core.models.sources import ModelSourceError

    with pytest.raises(
        ModelSourceError, match=r"`train_dense.model.name`: 'resnet19' is not a torchvision.*'resnet18'"
    ):
        build_model({"source": "torchvision", "name": "resnet19"})


def not_a_module(**_kwargs):
    return "a string"


def wrong_classes():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 3))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("no_such_package.models:net", r"cannot import 'no_such_package.models'.*PYTHONPATH"),
        ("tests.core.test_models:missing", r"has no callable 'missing'"),
        ("tests.core.test_models:not_a_module", r"returned str, not a torch.nn.Module"),
        ("tests.core.test_models:wrong_classes", r"returned \(1, 3\).*num_classes = 10"),
    ],
)
def test_bad_factories_are_refused_naming_the_key(factory, message):
    from evoprune.core.models.sources import ModelSourceError

    with pytest.raises(ModelSourceError, match=message):
        build_model({"source": "factory", "factory": factory})


def test_factory_path_must_name_a_function():
    with pytest.raises(ValidationError, match="package.module:function"):
        parse_model_spec({"source": "factory", "factory": "tests.core.test_models"})


def test_checkpoints_that_do_not_fit_are_refused_listing_what_differs(tmp_path):
    from evoprune.core.models.adapter import CheckpointMismatchError, load_weights, read_state_dict

    lenet = build_model({"name": "lenet5"})
    wider = build_model({"name": "lenet5", "conv_channels": [8, 16]})
    torch.save(wider.state_dict(), tmp_path / "wider.pt")
    with pytest.raises(
        CheckpointMismatchError, match=r"shapes differ.*stages.0.0.weight: \(8, 1, 5, 5\) vs \(6, 1, 5, 5\)"
    ):
        load_weights(lenet, read_state_dict(tmp_path / "wider.pt"), "wider.pt")
    vgg = build_model({"name": "vgg", "stages": [[8], [16]], "fc_features": [32]})
    with pytest.raises(CheckpointMismatchError, match=r"missing keys.*unexpected keys"):
        load_weights(lenet, vgg.state_dict(), "vgg")
    # DataParallel checkpoints (module. prefix) and {"state_dict": ...} wrappers load
    torch.save({"state_dict": {f"module.{k}": v for k, v in lenet.state_dict().items()}}, tmp_path / "dp.pt")
    load_weights(build_model({"name": "lenet5"}), read_state_dict(tmp_path / "dp.pt"), "dp.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="not a weights-only torch checkpoint"):
        read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="train_dense.checkpoint.path"):
        read_state_dict(tmp_path / "missing.pt")
