import numpy as np
import pytest
import torch

from evoprune.core.cost import count_flops, count_params
from evoprune.core.exits import attach_exits
from evoprune.core.masking import population_accuracy, population_masks, prune_physically
from evoprune.core.models import build_model
from evoprune.core.search.operators import KeepUnitsPerLayer
from evoprune.core.train import as_exit_list
from evoprune.core.units import build_layout
from tests.fake_images import make_images

SHAPE = (1, 28, 28)


def _nets():
    torch.manual_seed(0)
    vgg = build_model({"name": "vgg", "stages": [[8], [16], [16]], "fc_features": [32]})
    vgg(torch.randn(8, *SHAPE))  # non-trivial BatchNorm statistics
    return {
        "lenet5": build_model({"name": "lenet5"}).eval(),
        "lenet300_multi_exit": attach_exits(build_model({"name": "lenet300", "hidden_features": [24, 12]}), [1]).eval(),
        "vgg_multi_exit": attach_exits(vgg, [1, 2], {"conv_channels": 4, "pool_size": 2, "hidden_features": 16}).eval(),
    }


NETS = _nets()


@pytest.fixture(params=sorted(NETS))
def net(request):
    return NETS[request.param]


def _random_masks(layout, k, seed, keep=0.5):
    rng = np.random.default_rng(seed)
    return layout.repair(rng.random((k, layout.num_bits)) < keep)


def test_layout_round_trip_and_coverage(net):
    layout = build_layout(net, SHAPE)
    assert [layout.bit(*layout.unit(b)) for b in range(layout.num_bits)] == list(range(layout.num_bits))
    assert layout.num_bits == sum(g.size for g in layout.groups)
    split = layout.split(torch.arange(layout.num_bits)[None])
    assert torch.equal(torch.cat(list(split.values()), 1)[0], torch.arange(layout.num_bits))
    with pytest.raises(KeyError, match="no unit"):
        layout.bit(layout.groups[0].name, layout.groups[0].size)


def test_repair_keeps_one_unit_per_layer_preferring_the_most_important(net):
    layout = build_layout(net, SHAPE)
    importance = np.arange(layout.num_bits, dtype=float)
    repaired = layout.repair(np.zeros((2, layout.num_bits), dtype=bool), importance)
    for g in layout.groups:
        block = repaired[:, g.offset : g.offset + g.size]
        assert (block.sum(1) == 1).all() and block[:, -1].all()


def test_repair_honours_a_maximum_pruning_ratio_per_layer(net):
    layout = build_layout(net, SHAPE)
    importance = np.arange(layout.num_bits, dtype=float)
    min_units = layout.min_units(0.7)
    assert (min_units == [max(1, int(np.ceil(0.3 * g.size))) for g in layout.groups]).all()
    masks = np.random.default_rng(0).random((20, layout.num_bits)) < 0.2
    repaired = layout.repair(masks, importance, min_units)
    assert (repaired >= masks).all()  # repair only adds units back
    for g, need in zip(layout.groups, min_units, strict=True):
        block, before = repaired[:, g.offset : g.offset + g.size], masks[:, g.offset : g.offset + g.size]
        assert (block.sum(1) == np.maximum(before.sum(1), need)).all()
    with pytest.raises(ValueError, match="max_pruning_ratio"):
        layout.min_units(0.0)


def test_the_cap_binds_only_masks_at_or_above_uncapped_below(net):
    layout = build_layout(net, SHAPE)
    importance = np.arange(layout.num_bits, dtype=float)
    min_units = layout.min_units(0.7)
    masks = np.random.default_rng(0).random((200, layout.num_bits)) < np.linspace(0.02, 0.9, 200)[:, None]
    free = layout.repair(masks, importance)
    ratio = layout.cost(free)["flops"] / layout.dense_flops
    threshold = float(np.median(ratio))
    repaired = KeepUnitsPerLayer(layout, importance, min_units, uncapped_below=threshold)._do(None, masks)
    sparse = ratio < threshold
    assert sparse.any() and (~sparse).any()
    assert (repaired[sparse] == free[sparse]).all()  # one unit a layer below the threshold
    assert (repaired[~sparse] == layout.repair(masks[~sparse], importance, min_units)).all()  # the cap above it
    assert (_kept(layout, repaired[sparse]) < min_units).any()  # some layer did go past the cap
    everywhere = KeepUnitsPerLayer(layout, importance, min_units)._do(None, masks)
    assert (_kept(layout, everywhere) >= min_units).all()


def _kept(layout, masks):
    return np.stack([masks[:, g.offset : g.offset + g.size].sum(1) for g in layout.groups], 1)


@pytest.mark.parametrize("round_to", [2, 4])
def test_rounding_keeps_multiples_of_round_to_or_whole_layers(net, round_to):
    layout = build_layout(net, SHAPE)
    importance = np.random.default_rng(3).random(layout.num_bits)
    masks = np.random.default_rng(4).random((30, layout.num_bits)) < np.linspace(0.05, 1.0, 30)[:, None]
    min_units = layout.min_units(0.7)
    rounded = layout.repair(masks, importance, min_units, round_to=round_to)
    before, after = _kept(layout, layout.repair(masks, importance, min_units)), _kept(layout, rounded)
    for i, g in enumerate(layout.groups):
        if g.size <= round_to:  # too small to round: only the floor applies
            assert (after[:, i] == before[:, i]).all()
            continue
        floor = min(g.size, round_to * int(np.ceil(min_units[i] / round_to)))
        assert ((after[:, i] % round_to == 0) | (after[:, i] == g.size)).all()
        assert (after[:, i] >= floor).all()
        assert (np.abs(after[:, i] - before[:, i]) < round_to).all()  # to a neighbouring multiple
        # the nearer one, ties upward (a whole layer counts as a multiple)
        lower = np.maximum(before[:, i] // round_to * round_to, floor)
        upper = np.minimum(lower + round_to, g.size)
        nearer = np.where(before[:, i] - lower >= (upper - lower) / 2, upper, lower)
        expected = np.where(before[:, i] <= lower, lower, nearer)
        assert (after[:, i] == np.where(before[:, i] % round_to == 0, np.maximum(before[:, i], floor), expected)).all()
    assert np.array_equal(layout.round_units(rounded, round_to, importance, min_units), rounded)  # idempotent


def test_rounding_adds_the_most_important_units_and_drops_the_least_important(net):
    layout = build_layout(net, SHAPE)
    g = max(layout.groups, key=lambda g: g.size)
    importance = np.arange(layout.num_bits, dtype=float)  # later units matter more
    mask = np.ones((2, layout.num_bits), dtype=bool)
    block = mask[:, g.offset : g.offset + g.size]
    block[0, :] = False
    block[0, [0, 1, 2]] = True  # 3 units -> 4: the most important dropped unit comes back
    block[1, [g.size - 3, g.size - 2, g.size - 1]] = False  # size - 3 -> size - 4: the least important kept goes
    r = layout.round_units(mask, 4, importance)[:, g.offset : g.offset + g.size]
    assert g.size % 4 == 0 and g.size >= 8
    assert np.flatnonzero(r[0]).tolist() == [0, 1, 2, g.size - 1]
    assert np.flatnonzero(~r[1]).tolist() == [0, g.size - 3, g.size - 2, g.size - 1]


def test_stochastic_rounding_goes_both_ways_in_proportion_and_follows_its_generator(net):
    layout = build_layout(net, SHAPE)
    g = max(layout.groups, key=lambda g: g.size)
    masks = np.ones((400, layout.num_bits), dtype=bool)
    masks[:, g.offset + 5 : g.offset + g.size] = False  # 5 units kept: 4 or 8 with round_to=4
    a = layout.round_units(masks, 4, rng=np.random.default_rng(0))
    b = layout.round_units(masks, 4, rng=np.random.default_rng(0))
    kept = a[:, g.offset : g.offset + g.size].sum(1)
    assert np.array_equal(a, b) and set(kept.tolist()) == {4, 8}
    assert 0.15 < (kept == 8).mean() < 0.35  # up with probability (5 - 4) / 4
    with pytest.raises(ValueError, match="round_to"):
        layout.round_units(masks, 0)


def test_analytic_cost_equals_the_counter_on_physically_pruned_networks(net):
    layout = build_layout(net, SHAPE)
    assert layout.dense_flops == count_flops(net, SHAPE) and layout.dense_params == count_params(net)
    masks = _random_masks(layout, 4, seed=1, keep=0.4)
    cost = layout.cost(masks)
    for mask, flops, params in zip(masks, cost["flops"], cost["params"], strict=True):
        pruned = prune_physically(net, layout, mask, SHAPE)
        assert count_flops(pruned, SHAPE) == flops
        assert count_params(pruned) == params


def test_masking_a_unit_equals_removing_it(net):
    layout = build_layout(net, SHAPE)
    mask = _random_masks(layout, 1, seed=2)[0]
    x = torch.randn(5, *SHAPE)
    with torch.no_grad(), population_masks(net, layout, torch.as_tensor(mask[None])):
        masked = as_exit_list(net(x))
    pruned = prune_physically(net, layout, mask, SHAPE)
    with torch.no_grad():
        physical = as_exit_list(pruned(x))
    for a, b in zip(masked, physical, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # hooks are gone afterwards: the dense network is unchanged
        assert not torch.allclose(as_exit_list(net(x))[-1], masked[-1])


def test_batched_evaluation_equals_one_mask_at_a_time(net):
    layout = build_layout(net, SHAPE)
    x, y = make_images(120, seed=3)
    split = {"images": torch.from_numpy(x), "labels": torch.from_numpy(y).long()}
    masks = np.vstack([np.ones((1, layout.num_bits), dtype=bool), _random_masks(layout, 6, seed=4, keep=0.7)])
    batched = population_accuracy(net, layout, masks, split, torch.device("cpu"), candidates_per_pass=4, batch_size=50)
    alone = np.vstack([population_accuracy(net, layout, m[None], split, torch.device("cpu")) for m in masks])
    assert batched.shape == (7, len(as_exit_list(net(torch.zeros(1, *SHAPE)))))
    np.testing.assert_array_equal(batched, alone)


def test_physical_pruning_refuses_empty_layers(net):
    layout = build_layout(net, SHAPE)
    mask = np.ones(layout.num_bits, dtype=bool)
    g = layout.groups[0]
    mask[g.offset : g.offset + g.size] = False
    with pytest.raises(ValueError, match="repair it first"):
        prune_physically(net, layout, mask, SHAPE)


def test_sliced_evaluation_equals_masked_evaluation(net):
    from evoprune.core.masking import SlicedEvaluator

    layout = build_layout(net, SHAPE)
    x, y = make_images(90, seed=5)
    split = {"images": torch.from_numpy(x), "labels": torch.from_numpy(y).long()}
    masks = np.vstack([np.ones((1, layout.num_bits), dtype=bool), _random_masks(layout, 5, seed=6, keep=0.6)])
    probe = torch.randn(3, *SHAPE)
    with torch.no_grad():
        before = as_exit_list(net(probe))
    evaluator = SlicedEvaluator(net, layout, torch.device("cpu"))
    mlp = not any(isinstance(m, torch.nn.Conv2d) for m in net.modules())  # a Flatten runs before its first layer
    assert (evaluator.input_block_name is None) == mlp  # the cached input block is in use wherever it can be
    sliced = evaluator.accuracy(masks, split, batch_size=40)
    masked = population_accuracy(net, layout, masks, split, torch.device("cpu"))
    np.testing.assert_array_equal(sliced, masked)
    with torch.no_grad():  # the model itself is left as it was (no leftover forward override)
        assert all(torch.equal(a, b) for a, b in zip(before, as_exit_list(net(probe)), strict=True))


@pytest.mark.parametrize("policy", [None, (0.6, "max_softmax")])
def test_tiled_evaluation_equals_sliced_evaluation_exits_and_policy_included(net, policy):
    """The evaluator a GPU gets (many candidates per forward) scores exactly what the CPU's sliced one does,
    whatever the number of candidates per pass."""
    from evoprune.core.masking import SlicedEvaluator, TiledEvaluator

    layout = build_layout(net, SHAPE)
    x, y = make_images(90, seed=5)
    split = {"images": torch.from_numpy(x), "labels": torch.from_numpy(y).long()}
    masks = np.vstack([np.ones((1, layout.num_bits), dtype=bool), _random_masks(layout, 6, seed=7, keep=0.6)])
    sliced = SlicedEvaluator(net, layout, torch.device("cpu")).evaluate(masks, split, policy, batch_size=40)
    for per_pass in (1, 3, 16):
        tiled = TiledEvaluator(net, layout, torch.device("cpu"), candidates_per_pass=per_pass)
        scores = tiled.evaluate(masks, split, policy, batch_size=100)
        assert scores.keys() == sliced.keys()
        for key, value in sliced.items():
            np.testing.assert_array_equal(scores[key], value, err_msg=f"{key}, {per_pass} per pass")


def test_bfloat16_tiled_scores_stay_within_a_ranking_tolerance_of_float32():
    """On a trained network (an untrained one's logits tie, and any rounding flips them) bf16 autocast moves
    a candidate's accuracy by at most a few of 300 predictions."""
    from evoprune.core.masking import TiledEvaluator
    from evoprune.core.train import TrainConfig, train

    torch.manual_seed(0)
    net = build_model({"name": "lenet5"})
    x, y = make_images(600, seed=8)
    split = {"images": torch.from_numpy(x), "labels": torch.from_numpy(y).long()}
    train(net, split, None, TrainConfig(epochs=3, batch_size=50), torch.device("cpu"), 0, "tiny lenet5")
    layout = build_layout(net.eval(), SHAPE)
    test = {k: v[:300] for k, v in split.items()}
    masks = _random_masks(layout, 8, seed=9, keep=0.7)
    exact = TiledEvaluator(net, layout, torch.device("cpu")).accuracy(masks, test)
    bf16 = TiledEvaluator(net, layout, torch.device("cpu"), precision="bfloat16").accuracy(masks, test)
    assert exact.max() > 0.5  # trained: the test means something
    assert np.abs(bf16 - exact).max() <= 0.02


def test_the_evaluator_is_chosen_by_device_and_refused_where_it_would_be_wrong():
    from evoprune.core.masking import LSTMEvaluator, SlicedEvaluator, TiledEvaluator, mask_evaluator

    cpu = torch.device("cpu")
    lenet, vgg = NETS["lenet5"], NETS["vgg_multi_exit"]
    layout, vgg_layout = build_layout(lenet, SHAPE), build_layout(vgg, SHAPE)
    calibration = torch.zeros(8, 28, 28, dtype=torch.uint8)
    assert isinstance(mask_evaluator(lenet, layout, cpu), SlicedEvaluator)  # auto on a CPU
    assert isinstance(mask_evaluator(lenet, layout, cpu, kind="tiled"), TiledEvaluator)
    assert isinstance(mask_evaluator(lenet, layout, cpu, calibration, kind="tiled"), TiledEvaluator)  # no BatchNorm
    with pytest.raises(ValueError, match="adaptive BN.*adaptive_bn_images: 0"):
        mask_evaluator(vgg, vgg_layout, cpu, calibration, kind="tiled")
    with pytest.raises(ValueError, match="precision bfloat16 is for the tiled evaluator"):
        mask_evaluator(lenet, layout, cpu, precision="bfloat16")
    lstm = build_model({"name": "lstm_seq", "hidden_size": 8}).eval()
    lstm_layout = build_layout(lstm, SHAPE)
    assert isinstance(mask_evaluator(lstm, lstm_layout, cpu), LSTMEvaluator)
    with pytest.raises(ValueError, match="does not cover LSTMs"):
        mask_evaluator(lstm, lstm_layout, cpu, kind="tiled")
