import copy

import numpy as np
import pytest
import torch
import torch_pruning as tp

from evoprune.core.baselines import (
    BaselinePruner,
    budget_cost,
    mask_within_budget,
    refit_within_budget,
    torch_pruning_global_mask,
)
from evoprune.core.exits import attach_exits
from evoprune.core.importance import BASELINE_CRITERIA, GroupL1, GroupRandom, baseline_criterion
from evoprune.core.latency import LatencyModel, LayerTable
from evoprune.core.models import build_model
from evoprune.core.models.adapter import logit_layers
from evoprune.core.selection import layer_type_bits
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
    with pytest.raises(ValueError, match=r"budget is a ratio .* \(0, 1\]"):
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


def test_refit_keeps_the_other_units_and_fills_the_cost_with_the_best_scoring_refit_units(net):
    model, layout = net
    scores = GroupL1((1, 28, 28))(model, layout)
    refit = layer_type_bits(model, layout, torch.nn.Linear)
    assert refit.any() and not refit.all()  # LeNet-5: fc layers (and the exit's) refit, its convs pinned
    mask = layout.repair(np.random.default_rng(0).random((1, layout.num_bits)) < 0.5)[0]
    budget = float(layout.flops_ratio(mask[None])[0])
    fitted = refit_within_budget(layout, mask, scores, refit, budget, max_pruning_ratio=0.9)
    assert np.array_equal(fitted[~refit], mask[~refit])
    assert not np.array_equal(fitted, mask)  # a random mask's fc units are not the top-L1 ones
    assert budget - 0.01 <= float(layout.flops_ratio(fitted[None])[0]) <= budget
    for g in layout.groups:  # within a layer every unit costs the same: the kept ones are its best by L1
        units = slice(g.offset, g.offset + g.size)
        if refit[units].all() and not fitted[units].all():
            assert scores[units][fitted[units]].min() >= scores[units][~fitted[units]].max(), g.name


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
    with pytest.raises(ValueError, match=r"budget is a ratio .* \(0, 1\]"):
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


def _conv1_bound_latency(layout) -> LatencyModel:
    """Tables of a target where only the first conv's kept filters cost time (1 ms each), as LeNet-5's memory-bound
    first stage nearly does on a CPU: the latency ratio is conv1's kept share, whatever else a mask keeps."""
    tables = []
    for layer in layout.layers:
        n_in, n_out = len(layer.in_bits), len(layer.out_bits)
        if layer is layout.layers[0]:
            tables.append(
                LayerTable(layer.name, np.array([n_in]), np.arange(1, n_out + 1), np.arange(1.0, n_out + 1)[None])
            )
        else:
            tables.append(LayerTable(layer.name, np.array([1, n_in]), np.array([1, n_out]), np.zeros((2, 2))))
    return LatencyModel({}, tuple(tables), 0.0, 1.0, float(len(layout.layers[0].out_bits)))


@pytest.mark.parametrize(("ranking", "budget", "conv1_kept"), [("budget_fit", 0.34, 2), ("torch_pruning", 0.2, 1)])
def test_baselines_fit_a_latency_budget_on_the_latency_models_prediction(net, ranking, budget, conv1_kept):
    """On the latency axis the budget binds the predicted latency, not the FLOPs: on a target where conv1's filters
    are all that costs time, a third of the latency means 2 of its 6 filters, and the FLOPs-fitted mask at the
    same ratio misses it."""
    model, layout = net
    latency = budget_cost(layout, "latency_ratio", _conv1_bound_latency(layout))
    pruner = BaselinePruner("l1", ranking, (1, 28, 28))
    on_latency = pruner.masks(model, layout, np.array([budget]), 0, latency)[0]
    on_flops = pruner.masks(model, layout, np.array([budget]), 0)[0]
    conv1 = layout.groups[0]
    assert latency(on_latency[None])[0] <= budget
    assert int(on_latency[conv1.offset : conv1.offset + conv1.size].sum()) == conv1_kept
    assert latency(on_flops[None])[0] > budget  # FLOPs are met by cutting the big later layers instead
    if ranking == "budget_fit":  # the give-back returns every unit that costs no time
        assert on_latency[conv1.offset + conv1.size :].all()


def test_a_latency_budget_from_noisy_tables_is_met_and_one_below_every_floor_is_reported(net, caplog):
    """Timing noise made small layers' tables say that more units run faster; a search exploited it (a member
    keeping more than the floors predicted faster than all floors, and the baselines missed its budget). The
    tables are made monotone, so any mask over the floors can be matched; a budget under the floors' cost is
    logged and the sparsest mask comes back."""
    model, layout = net
    tables = []
    for layer in layout.layers:  # as measured: 1 unit 3 ms, half the units 0 ms, all of them 1 ms
        n_in, n_out = len(layer.in_bits), len(layer.out_bits)
        outs = np.array([1, (n_out + 1) // 2, n_out])
        tables.append(LayerTable(layer.name, np.array([n_in]), outs, np.array([[3.0, 0.0, 1.0]])))
    cost = budget_cost(layout, "latency_ratio", LatencyModel({}, tuple(tables), 0.0, 1.0, 1.0))
    floors = layout.min_units(0.7)
    rng = np.random.default_rng(1)
    members = np.zeros((8, layout.num_bits), dtype=bool)
    for g, floor in zip(layout.groups, floors, strict=True):
        for k, kept in enumerate(rng.integers(max(floor, (g.size + 1) // 2), g.size + 1, 8)):
            members[k, g.offset + rng.permutation(g.size)[:kept]] = True
    at_floor = np.zeros((1, layout.num_bits), dtype=bool)
    for g, floor in zip(layout.groups, floors, strict=True):
        at_floor[0, g.offset : g.offset + floor] = True
    assert (cost(members) >= cost(at_floor)[0] - 1e-12).all()
    scores = rng.random(layout.num_bits)
    for budget in cost(members):
        assert cost(mask_within_budget(layout, scores, budget, 0.7, cost_ratio=cost)[None])[0] <= budget + 1e-12
    below = 0.9 * cost(at_floor)[0]
    with caplog.at_level("WARNING", logger="evoprune.core.baselines"):
        sparsest = mask_within_budget(layout, scores, below, 0.7, cost_ratio=cost)
    assert cost(sparsest[None])[0] == pytest.approx(cost(at_floor)[0])
    assert "no mask within the budget" in caplog.text and "max_pruning_ratio 0.70" in caplog.text


def test_a_latency_budget_without_latency_tables_is_refused_saying_what_to_do(net):
    _, layout = net
    with pytest.raises(ValueError, match="latency_profile"):
        budget_cost(layout, "latency_ratio", None)
    stand_in = LatencyModel.without_tables({}, "nn.LSTM layers are not timed")
    with pytest.raises(ValueError, match="nn.LSTM layers are not timed.*budget_axis: flops_ratio"):
        budget_cost(layout, "latency_ratio", stand_in)
    masks = np.ones((1, layout.num_bits), dtype=bool)
    assert budget_cost(layout, "flops_ratio", stand_in)(masks)[0] == pytest.approx(1.0)
