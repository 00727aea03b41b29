import copy

import numpy as np
import pytest
import torch
import torch_pruning as tp

from evoprune.core.baselines import mask_within_budget, torch_pruning_global_mask
from evoprune.core.exits import attach_exits
from evoprune.core.importance import BASELINE_CRITERIA, GroupL1, GroupRandom, baseline_criterion
from evoprune.core.models import build_model
from evoprune.core.models.adapter import logit_layers
from evoprune.core.units import build_layout, flops_per_layer, sum_of_exit_outputs


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = attach_exits(build_model({"name": "lenet5"}), [1]).eval()
    return model, build_layout(model, (1, 28, 28))


@pytest.mark.parametrize("budget", [0.6, 0.3, 0.12])
def test_mask_fits_the_budget_closely_and_keeps_every_layer(net, budget):
    model, layout = net
    mask = mask_within_budget(layout, GroupL1((1, 28, 28))(model, layout), budget)
    ratio = layout.cost(mask[None])["flops"][0] / layout.dense_flops
    assert budget - 0.02 <= ratio <= budget  # the give-back step uses the budget, never exceeds it
    assert all(mask[g.offset : g.offset + g.size].any() for g in layout.groups)


def test_bad_budget_is_refused(net):
    _, layout = net
    with pytest.raises(ValueError, match=r"flops_budget .* \(0, 1\]"):
        mask_within_budget(layout, np.zeros(layout.num_bits), 1.5)


def test_budget_mask_never_prunes_a_layer_beyond_the_limit(net):
    model, layout = net
    scores = GroupL1((1, 28, 28))(model, layout)
    mask = mask_within_budget(layout, scores, 0.05, max_pruning_ratio=0.5)
    kept = [int(mask[g.offset : g.offset + g.size].sum()) for g in layout.groups]
    assert kept == [int(np.ceil(g.size / 2)) for g in layout.groups]  # the sparsest mask the limit allows


@pytest.mark.parametrize("budget", [0.6, 0.3])
def test_rounded_budget_mask_fits_and_keeps_multiples(net, budget):
    model, layout = net
    scores = GroupL1((1, 28, 28))(model, layout)
    mask = mask_within_budget(layout, scores, budget, max_pruning_ratio=0.9, round_to=4)
    ratio = layout.cost(mask[None])["flops"][0] / layout.dense_flops
    assert budget - 0.05 <= ratio <= budget  # rounded steps give back what still fits
    for g in layout.groups:
        kept = int(mask[g.offset : g.offset + g.size].sum())
        assert g.size <= 4 or kept % 4 == 0 or kept == g.size, (g.name, kept)


@pytest.fixture(scope="module")
def mlp():
    """Units of fine FLOPs granularity (a hidden unit holds < 0.5% of the FLOPs), so 1% is reachable."""
    torch.manual_seed(0)
    model = build_model({"name": "lenet300", "hidden_features": [256, 256], "input_size": 8}).eval()
    generator = torch.Generator().manual_seed(1)
    calibration = torch.randn(64, 1, 8, 8, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    return model, build_layout(model, (1, 8, 8)), calibration


@pytest.mark.parametrize("name", BASELINE_CRITERIA)
@pytest.mark.parametrize("ranking", ["budget_fit", "torch_pruning"])
@pytest.mark.parametrize("budget", [0.6, 0.3, 0.1])
def test_every_criterion_prunes_to_the_requested_flops_within_one_percent(mlp, name, ranking, budget):
    model, layout, calibration = mlp
    criterion = baseline_criterion(name, (1, 8, 8), 0, calibration)
    if ranking == "budget_fit":
        mask = mask_within_budget(layout, criterion(model, layout), budget)
    else:
        mask = torch_pruning_global_mask(model, layout, criterion, budget)
    ratio = layout.cost(mask[None])["flops"][0] / layout.dense_flops
    assert budget - 0.01 <= ratio <= budget
    assert all(mask[g.offset : g.offset + g.size].any() for g in layout.groups)


def test_torch_pruning_global_pruner_leaves_the_model_whole_and_is_reproducible(net):
    model, layout = net
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = [torch_pruning_global_mask(model, layout, GroupRandom((1, 28, 28), 3), 0.4) for _ in range(2)]
    other = torch_pruning_global_mask(model, layout, GroupRandom((1, 28, 28), 4), 0.4)
    assert np.array_equal(*masks) and not np.array_equal(masks[0], other)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"flops_budget .* \(0, 1\]"):
        torch_pruning_global_mask(model, layout, GroupL1((1, 28, 28)), 0.0)


def test_torch_pruning_global_pruner_agrees_with_pruning_in_place(net):
    """The mask read from the yielded groups is the network Torch-Pruning itself leaves: step MetaPruner
    on a copy (no interaction) until its measured FLOPs fit, then compare the widths."""
    model, layout = net
    mask = torch_pruning_global_mask(model, layout, GroupL1((1, 28, 28)), 0.5, steps=20)
    pruned = copy.deepcopy(model).eval()
    example = torch.zeros(1, 1, 28, 28)
    pruner = tp.pruner.MetaPruner(
        pruned,
        example,
        tp.importance.GroupMagnitudeImportance(p=1),
        global_pruning=True,
        pruning_ratio=1.0,
        iterative_steps=20,
        ignored_layers=logit_layers(pruned),
        root_module_types=[torch.nn.Conv2d, torch.nn.Linear],
        forward_fn=sum_of_exit_outputs,
    )
    dense = sum(flops_per_layer(model, example).values())
    while sum(flops_per_layer(pruned, example).values()) / dense > 0.5:
        pruner.step()
    modules = dict(pruned.named_modules())
    assert [int(mask[g.offset : g.offset + g.size].sum()) for g in layout.groups] == [
        modules[g.name].weight.shape[0] for g in layout.groups
    ]
    assert layout.cost(mask[None])["flops"][0] / layout.dense_flops <= 0.5
