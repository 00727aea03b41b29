import numpy as np
import pytest
import torch

from evoprune.core.baselines import mask_within_budget, unit_scores
from evoprune.core.exits import attach_exits
from evoprune.core.models import build_model
from evoprune.core.search.operators import l1_importance
from evoprune.core.units import build_layout


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = attach_exits(build_model({"name": "lenet5"}), [1]).eval()
    return model, build_layout(model, (1, 28, 28))


@pytest.mark.parametrize("budget", [0.6, 0.3, 0.12])
def test_mask_fits_the_budget_closely_and_keeps_every_layer(net, budget):
    model, layout = net
    mask = mask_within_budget(layout, unit_scores(model, layout, (1, 28, 28), "l1", 0), budget)
    ratio = layout.cost(mask[None])["flops"][0] / layout.dense_flops
    assert budget - 0.02 <= ratio <= budget  # the give-back step uses the budget, never exceeds it
    assert all(mask[g.offset : g.offset + g.size].any() for g in layout.groups)


def test_l1_prunes_the_units_with_the_smallest_filters_first(net):
    model, layout = net
    conv1 = layout.groups[0]
    with torch.no_grad():  # make conv1's channel 3 tiny (its filter and what consumes it): drop it first
        model.backbone.stages[0][0].weight[3].mul_(1e-3)
        model.backbone.stages[1][0].weight[:, 3].mul_(1e-3)
        model.exit_heads[0][2].weight.view(model.exit_heads[0][2].out_features, 6, -1)[:, 3].mul_(1e-3)
    scores = unit_scores(model, layout, (1, 28, 28), "l1", 0)
    block = scores[conv1.offset : conv1.offset + conv1.size]
    assert block.argmin() == 3
    own = l1_importance(model, layout)[conv1.offset : conv1.offset + conv1.size]
    assert own.argmin() == 3  # agrees with the filter's own L1 norm on the obvious case
    mask = mask_within_budget(layout, scores, 0.9)
    assert not mask[conv1.offset + 3]


def test_random_scores_follow_the_seed(net):
    model, layout = net
    a, b = (unit_scores(model, layout, (1, 28, 28), "random", s) for s in (0, 0))
    c = unit_scores(model, layout, (1, 28, 28), "random", 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_bad_criterion_and_budget_are_refused(net):
    model, layout = net
    with pytest.raises(ValueError, match="unknown baseline criterion 'l2'"):
        unit_scores(model, layout, (1, 28, 28), "l2", 0)
    with pytest.raises(ValueError, match=r"flops_budget .* \(0, 1\]"):
        mask_within_budget(layout, np.zeros(layout.num_bits), 1.5)


def test_budget_mask_never_prunes_a_layer_beyond_the_limit(net):
    model, layout = net
    scores = unit_scores(model, layout, (1, 28, 28), "l1", 0)
    mask = mask_within_budget(layout, scores, 0.05, max_pruning_ratio=0.5)
    kept = [int(mask[g.offset : g.offset + g.size].sum()) for g in layout.groups]
    assert kept == [int(np.ceil(g.size / 2)) for g in layout.groups]  # the sparsest mask the limit allows
