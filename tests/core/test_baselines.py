import numpy as np
import pytest
import torch

from evoprune.core.baselines import mask_within_budget
from evoprune.core.exits import attach_exits
from evoprune.core.importance import GroupL1
from evoprune.core.models import build_model
from evoprune.core.units import build_layout


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
