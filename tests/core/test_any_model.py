"""Any nn.Module through the core: masked = sliced = physically pruned, and analytic cost = the counter,
on residual networks (ResNet-20, torchvision resnet18), depthwise convs (mobilenet_v2) and a model of
the user's own (a factory in this file, with a residual add and a non-square input)."""

import numpy as np
import pytest
import torch
from torch import nn

from evoprune.core.cost import count_flops, count_params
from evoprune.core.exits import attach_exits, build_network
from evoprune.core.masking import SlicedEvaluator, population_masks, prune_physically
from evoprune.core.models import build_model
from evoprune.core.models.adapter import input_shape
from evoprune.core.train import as_exit_list
from evoprune.core.units import build_layout


class TwoBranchNet(nn.Module):
    """A user's model: stem, a residual block with a strided 1x1 shortcut, a plain block, global pooling."""

    def __init__(self, in_channels: int = 1, width: int = 6, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.conv_a = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(2 * width)
        self.conv_b = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(2 * width)
        self.shortcut = nn.Sequential(nn.Conv2d(width, 2 * width, 1, stride=2, bias=False), nn.BatchNorm2d(2 * width))
        self.block2 = nn.Sequential(nn.Conv2d(2 * width, 3 * width, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(3 * width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        y = torch.relu(self.bn_b(self.conv_b(torch.relu(self.bn_a(self.conv_a(x))))) + self.shortcut(x))
        y = self.block2(y)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def two_branch_net(in_channels: int = 1, width: int = 6, num_classes: int = 5) -> nn.Module:
    return TwoBranchNet(in_channels, width, num_classes)


HEAD = {"conv_channels": 0, "pool_size": 2, "hidden_features": 8}
MODELS = {
    "resnet20": ({"name": "resnet_cifar", "depth": 20, "width": 4, "in_channels": 3, "input_size": 16}, ["layer1"]),
    "tv_resnet18": ({"source": "torchvision", "name": "resnet18", "in_channels": 3, "input_size": 32}, ["layer2"]),
    "tv_mobilenet_v2": (
        {
            "source": "torchvision",
            "name": "mobilenet_v2",
            "in_channels": 3,
            "input_size": 32,
            "kwargs": {"width_mult": 0.5},
        },
        ["features.6"],
    ),
    "factory": (
        {
            "source": "factory",
            "factory": "tests.core.test_any_model:two_branch_net",
            "input_size": [20, 28],
            "num_classes": 5,
        },
        ["stem"],
    ),
}


def _net(name: str) -> nn.Module:
    spec, exits = MODELS[name]
    torch.manual_seed(0)
    backbone = build_model(spec)
    backbone.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial BatchNorm statistics
            backbone(torch.randn(8, *input_shape(backbone)))
    net = attach_exits(backbone, exits, HEAD).eval()
    for m in net.modules():  # non-trivial BatchNorm affine parameters (they start at 1 and 0)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return net


NETS = {name: _net(name) for name in MODELS}


@pytest.fixture(params=sorted(NETS))
def net(request):
    return NETS[request.param]


def _masks(layout, k, seed, keep=0.5):
    rng = np.random.default_rng(seed)
    return layout.repair(rng.random((k, layout.num_bits)) < keep)


def test_analytic_cost_equals_the_counter_on_the_physically_pruned_network(net):
    shape = input_shape(net)
    layout = build_layout(net, shape)
    assert layout.dense_flops == count_flops(net, shape) and layout.dense_params == count_params(net)
    masks = _masks(layout, 2, seed=1)
    cost = layout.cost(masks)
    for mask, flops, params in zip(masks, cost["flops"], cost["params"], strict=True):
        pruned = prune_physically(net, layout, mask, shape)
        assert count_params(pruned) < count_params(net)
        assert count_flops(pruned, shape) == flops
        assert count_params(pruned) == params


def test_masked_equals_sliced_equals_physically_pruned(net):
    shape = input_shape(net)
    layout = build_layout(net, shape)
    mask = _masks(layout, 1, seed=2)[0]
    x = torch.randn(4, *shape)
    with torch.no_grad(), population_masks(net, layout, torch.as_tensor(mask[None])):
        masked = as_exit_list(net(x))
    sliced = SlicedEvaluator(net, layout, torch.device("cpu")).logits(mask, x)
    pruned = prune_physically(net, layout, mask, shape)
    with torch.no_grad():
        physical = as_exit_list(pruned(x))
        dense = as_exit_list(net(x))
    assert len(masked) == len(sliced) == len(physical) == 2
    for a, b, c in zip(masked, sliced, physical, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(dense[-1], masked[-1], atol=1e-3)  # the mask did change the output


def test_a_residual_group_drives_every_coupled_layer():
    net = NETS["resnet20"]
    layout = build_layout(net, input_shape(net))
    stem = next(g for g in layout.groups if g.name == "backbone.stem.0")
    # the stem's channels are added to by every block of layer1: all their second BatchNorms are masked too
    assert {f"backbone.layer1.{b}.bn2" for b in range(3)} | {"backbone.stem.1"} <= set(stem.mask_modules)
    outputs = [
        layer.name
        for layer in layout.layers
        if (layer.out_bits >= stem.offset).all() and (layer.out_bits < stem.offset + stem.size).all()
    ]
    assert {"backbone.stem.0", "backbone.layer1.0.conv2", "backbone.layer1.2.conv2"} <= set(outputs)


def test_the_multi_exit_network_rebuilds_from_its_spec(net):
    again = build_network(net.spec)
    again.load_state_dict(net.state_dict())
    x = torch.randn(2, *input_shape(net))
    with torch.no_grad():
        for a, b in zip(net(x), again.eval()(x), strict=True):
            torch.testing.assert_close(a, b)
    assert set(net.state_dict()) == set(again.state_dict())
    assert all(k.startswith(("backbone.", "exit_heads.")) for k in net.state_dict())


def grouped_conv_net(num_classes: int = 10) -> nn.Module:
    """A user's model with a grouped (not depthwise) convolution, as ResNeXt's blocks have."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 24 * 24, num_classes)
    )


def test_a_grouped_convolution_is_refused_by_name_not_with_an_index_error():
    model = build_model({"source": "factory", "factory": "tests.core.test_any_model:grouped_conv_net"})
    with pytest.raises(ValueError, match=r"grouped convolutions \(2: groups > 1, not depthwise\) are not supported"):
        build_layout(model, (1, 28, 28))
