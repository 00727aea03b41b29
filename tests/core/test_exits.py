import pytest
import torch

from evoprune.core.cost import count_flops
from evoprune.core.early_exit import choose_operating_point, exit_costs, simulate_early_exit, sweep_thresholds
from evoprune.core.exits import MultiExitNet, attach_exits, build_network, check_network_config, confidence
from evoprune.core.models import build_model
from evoprune.core.models.adapter import input_shape
from evoprune.core.models.segments import SplitError
from evoprune.core.train import TrainConfig, train
from tests.conftest import make_images

BACKBONES = [
    {"name": "lenet5"},
    {"name": "vgg", "stages": [[8], [16], [16]], "fc_features": [32]},
]


def _net(spec, exit_after, seed=0) -> MultiExitNet:
    torch.manual_seed(seed)
    return attach_exits(
        build_model(spec), exit_after, {"conv_channels": 4, "pool_size": 2, "hidden_features": 16}
    ).eval()


@pytest.mark.parametrize(("spec", "exit_after"), [(BACKBONES[0], [1]), (BACKBONES[1], [1, 2])])
def test_forward_returns_logits_of_every_exit(spec, exit_after):
    out = _net(spec, exit_after)(torch.randn(6, 1, 28, 28))
    assert len(out) == len(exit_after) + 1
    assert all(z.shape == (6, 10) for z in out)


@pytest.mark.parametrize(("spec", "exit_after"), [(BACKBONES[0], [1]), (BACKBONES[1], [1, 2])])
def test_threshold_one_equals_the_final_exit_and_zero_leaves_at_the_first(spec, exit_after):
    net, x = _net(spec, exit_after), torch.randn(32, 1, 28, 28)
    final = net(x)[-1].argmax(1)
    preds, used = net.early_exit_predict(x, threshold=1.0)
    assert torch.equal(preds, final) and bool((used == len(exit_after)).all())
    preds, used = net.early_exit_predict(x, threshold=0.0)
    assert bool((used == 0).all()) and torch.equal(preds, net(x)[0].argmax(1))


@pytest.mark.parametrize("criterion", ["max_softmax", "entropy"])
def test_real_early_exit_matches_the_simulation_from_all_exits(criterion):
    net, x = _net(BACKBONES[1], [1, 2]), torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        logits = torch.stack(net(x))
        conf = confidence(logits[0], criterion)
    threshold = conf.median().item()  # about half leave at exit 1
    real_preds, real_used = net.early_exit_predict(x, threshold, criterion)
    sim_preds, sim_used = simulate_early_exit(logits, threshold, criterion)
    assert torch.equal(real_used, sim_used) and torch.equal(real_preds, sim_preds)
    assert 0 < int((real_used == 0).sum()) < 64


def test_exits_after_missing_modules_are_refused_naming_the_module():
    with pytest.raises(SplitError, match=r"no module \['stages.2'\].*top-level modules are \['stages', 'head'\]"):
        attach_exits(build_model(BACKBONES[0]), [3])
    with pytest.raises(ValueError, match=r"build_exits.exit_after = \['layer9'\].*no module \['layer9'\]"):
        check_network_config({"name": "resnet_cifar", "width": 4}, ["layer9"])


def test_an_exit_where_a_skip_connection_crosses_is_refused_with_the_reason():
    resnet = build_model({"name": "resnet_cifar", "width": 4})
    with pytest.raises(SplitError, match=r"after 'layer1.0.conv1'.*skip connection crosses"):
        attach_exits(resnet, ["layer1.0.conv1"])
    with pytest.raises(SplitError, match="in the order the forward runs them"):
        attach_exits(resnet, ["layer2", "layer1"])


class _DataDependent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        x = self.conv(x)
        if x.mean() > 0:  # data-dependent control flow: not traceable
            x = -x
        return self.fc(x.mean((2, 3)))


def test_an_untraceable_model_gets_a_clear_error():
    model = build_model({"source": "factory", "factory": "tests.core.test_exits:_DataDependent"})
    with pytest.raises(SplitError, match="torch.fx could not trace"):
        attach_exits(model, ["conv"])


EARLY_EXIT_MODELS = [
    ({"name": "lenet300", "hidden_features": [32, 16]}, [1]),
    ({"name": "alexnet_small", "conv_channels": [8, 8, 8, 8, 8], "fc_features": [16]}, [1, 2]),
    ({"name": "resnet_cifar", "width": 4, "in_channels": 1, "input_size": 28}, ["layer1", "layer2"]),
    ({"source": "torchvision", "name": "resnet18", "in_channels": 1, "input_size": 28}, ["layer2"]),
    ({"source": "torchvision", "name": "vgg11_bn", "in_channels": 1, "input_size": 32}, ["features.14"]),
    (
        {
            "source": "torchvision",
            "name": "mobilenet_v2",
            "in_channels": 1,
            "input_size": 28,
            "kwargs": {"width_mult": 0.25},
        },
        ["features.3", "features.10"],
    ),
]


@pytest.mark.parametrize(
    ("spec", "exit_after"), EARLY_EXIT_MODELS, ids=lambda v: str(v.get("name")) if isinstance(v, dict) else ""
)
def test_real_early_exit_on_batches_for_built_in_and_torchvision_models(spec, exit_after):
    net = _net(spec, exit_after)
    x = torch.randn(24, *input_shape(net))
    with torch.no_grad():
        logits = torch.stack(net(x))
        direct = net.backbone(x)
    torch.testing.assert_close(logits[-1], direct)  # the segments together are the backbone
    threshold = confidence(logits[0], "max_softmax").median().item()
    real_preds, real_used = net.early_exit_predict(x, threshold)
    sim_preds, sim_used = simulate_early_exit(logits, threshold, "max_softmax")
    assert torch.equal(real_used, sim_used) and torch.equal(real_preds, sim_preds)
    assert 0 < int((real_used == 0).sum()) < 24


def test_exit_costs_come_from_the_counter_and_add_up():
    net = _net(BACKBONES[1], [1, 2])
    costs = exit_costs(net)
    assert costs[-1]["flops"] == count_flops(net.backbone, (1, 28, 28))
    assert costs[0]["flops"] < costs[1]["flops"] < costs[2]["flops"]
    head0 = count_flops(net.exit_heads[0], net.feature_shapes()[0])
    assert costs[1]["flops_policy"] == costs[1]["flops"] + head0
    assert costs[0]["flops_policy"] == costs[0]["flops"]


def test_expected_flops_are_the_shares_times_the_exit_costs():
    torch.manual_seed(0)
    logits = torch.randn(3, 500, 10) * 3
    labels = torch.randint(0, 10, (500,))
    policy = [100.0, 250.0, 700.0]
    for row in sweep_thresholds(logits, labels, [0.3, 0.6, 0.9, 1.0], "max_softmax", policy):
        shares = [row[f"share_exit{e}"] for e in (1, 2, 3)]
        assert sum(shares) == pytest.approx(1.0)
        assert row["expected_flops"] == pytest.approx(sum(s * c for s, c in zip(shares, policy, strict=True)))
    assert row["share_exit3"] == 1.0  # threshold 1.0: everyone reaches the final exit


def test_operating_point_is_the_cheapest_within_the_drop():
    rows = [
        {"threshold": 0.5, "accuracy": 0.80, "expected_flops": 10.0},
        {"threshold": 0.9, "accuracy": 0.897, "expected_flops": 20.0},
        {"threshold": 1.0, "accuracy": 0.90, "expected_flops": 30.0},
    ]
    assert choose_operating_point(rows, 0.90, 0.005)["threshold"] == 0.9
    assert choose_operating_point(rows, 0.90, 0.0)["threshold"] == 1.0


def test_frozen_backbone_training_leaves_it_bit_identical():
    x, y = make_images(128, seed=0)
    split = {"images": torch.from_numpy(x), "labels": torch.from_numpy(y).long()}
    net = _net(BACKBONES[1], [1]).freeze_backbone()
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}  # BN running stats included
    heads_before = [p.clone() for p in net.exit_heads.parameters()]
    train(
        net,
        split,
        None,
        TrainConfig(epochs=1, batch_size=32, optimizer="adamw", learning_rate=1e-2),
        torch.device("cpu"),
        0,
    )
    after = net.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, net.exit_heads.parameters(), strict=True))


def test_multi_exit_spec_rebuilds_the_network():
    net = _net(BACKBONES[0], [1])
    again = build_network(net.spec)
    again.load_state_dict(net.state_dict())
    x = torch.randn(3, 1, 28, 28)
    assert all(torch.equal(a, b) for a, b in zip(net(x), again.eval()(x), strict=True))


def test_final_exit_key_goes_by_exit_number():
    from evoprune.core.exits import final_exit_key

    columns = ["member", "exit9_accuracy", "exit10_accuracy", "exit2_accuracy", "flops_ratio"]
    assert final_exit_key(columns, "_accuracy") == "exit10_accuracy"  # not the lexicographic max, not the last
    measured = {"exit1.test_accuracy": 0.8, "exit2.test_accuracy": 0.9, "early_exit.test_accuracy": 0.85}
    assert final_exit_key(measured, ".test_accuracy") == "exit2.test_accuracy"
    with pytest.raises(KeyError, match="no exit<k>_accuracy"):
        final_exit_key(["flops_ratio"], "_accuracy")
