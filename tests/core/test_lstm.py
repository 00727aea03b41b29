"""LSTM hidden units: our shrinker against the masked forward, the layout's costs against the FLOP counter,
hidden-state pruning, the search over hidden units, and the errors for bad input."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from evoprune.core.cost import count_flops
from evoprune.core.data import images_to_float
from evoprune.core.exits import attach_exits
from evoprune.core.hidden_state import (
    calibrate_thresholds,
    hidden_state_pruning,
    run_pruned,
    thresholded_lstm_forward,
)
from evoprune.core.importance import GroupL1, own_filter_l1
from evoprune.core.lstm import LayerwiseLSTM, masked_lstm_forward, shrink_lstm
from evoprune.core.masking import LSTMEvaluator, prune_physically
from evoprune.core.models import build_model
from evoprune.core.models.segments import SplitError
from evoprune.core.units import build_layout

SHAPE = (1, 28, 28)


def _lstm_model(layers: int = 1, hidden: int = 12) -> nn.Module:
    torch.manual_seed(0)
    return build_model({"name": "lstm_seq", "hidden_size": hidden, "num_layers": layers}).eval()


def _block_masks(layout, mask):
    return [torch.as_tensor(mask[g.offset : g.offset + g.size]) for g in layout.groups]


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("batch_first", [True, False])
def test_shrinking_hidden_units_equals_masking_them(layers, batch_first):
    torch.manual_seed(layers)
    lstm = nn.LSTM(5, 10, layers, batch_first=batch_first).eval()
    kept = [torch.tensor([0, 2, 3, 7, 9]), torch.tensor([1, 4, 5, 6, 8, 9])][:layers]
    masks = [torch.zeros(10).index_fill_(0, k, 1.0) for k in kept]
    x = torch.randn(3, 6, 5) if batch_first else torch.randn(6, 3, 5)
    small = shrink_lstm(lstm, kept)
    with torch.no_grad():
        expected = masked_lstm_forward(lstm, x, masks)
        expected = expected.index_select(2, kept[-1])  # the removed units' outputs are gone
        got = small(x)[0]
    assert torch.allclose(got, expected, atol=1e-6)
    assert isinstance(small, LayerwiseLSTM if layers == 2 else nn.LSTM)
    first = small.layers[0] if layers == 2 else small
    assert first.weight_ih_l0.shape == (4 * 5, 5) and first.weight_hh_l0.shape == (4 * 5, 5)
    if layers == 2:
        assert small.layers[1].weight_ih_l0.shape == (4 * 6, 5) and small.layers[1].weight_hh_l0.shape == (4 * 6, 6)
    with torch.no_grad():  # no units removed: the same network
        assert torch.allclose(shrink_lstm(lstm, [torch.arange(10)] * layers)(x)[0], lstm(x)[0], atol=1e-6)


def test_equal_kept_counts_give_one_multi_layer_nn_lstm():
    lstm = nn.LSTM(4, 8, 2).eval()
    small = shrink_lstm(lstm, [torch.tensor([0, 1, 5]), torch.tensor([2, 3, 7])])
    assert isinstance(small, nn.LSTM) and small.num_layers == 2 and small.hidden_size == 3
    with pytest.raises(ValueError, match="at least one hidden unit"):
        shrink_lstm(lstm, [torch.tensor([0]), torch.tensor([], dtype=torch.long)])


@pytest.mark.parametrize("layers", [1, 2])
def test_physical_pruning_of_a_sequence_model_matches_the_mask_and_reloads(layers, tmp_path):
    model = _lstm_model(layers)
    layout = build_layout(model, SHAPE)
    assert [g.name for g in layout.groups] == [f"lstm.l{k}" for k in range(layers)]
    mask = layout.repair(np.random.default_rng(layers).random((1, layout.num_bits)) < 0.5)[0]
    pruned = prune_physically(model, layout, mask, SHAPE)
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        hidden = masked_lstm_forward(model.lstm, x.view(4, 28, 28), _block_masks(layout, mask))
        assert torch.allclose(pruned(x), model.head(hidden[:, -1]), atol=1e-5)
        assert torch.equal(model(x), _lstm_model(layers)(x))  # the input model is untouched
    assert sum(p.numel() for p in pruned.parameters()) == layout.cost(mask[None])["params"][0]
    torch.save(pruned.state_dict(), tmp_path / "member.pt")
    again = prune_physically(model, layout, mask, SHAPE)
    again.load_state_dict(torch.load(tmp_path / "member.pt", weights_only=True))
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))


def _counted_flops(pruned: nn.Module) -> int:
    """FLOPs of the pruned network's unrolled forward (torch's counter does not count the fused LSTM)."""
    lstm = pruned.lstm
    layers = list(lstm.layers) if isinstance(lstm, LayerwiseLSTM) else [lstm]
    with FlopCounterMode(display=False) as counter:
        seq = torch.zeros(1, 28, 28)
        for layer in layers:
            seq = masked_lstm_forward(layer, seq)
        pruned.head(seq[:, -1])
    return counter.get_total_flops()


@pytest.mark.parametrize("layers", [1, 2])
def test_analytic_cost_equals_the_counter_on_shrunk_lstms(layers):
    model = _lstm_model(layers)
    layout = build_layout(model, SHAPE)
    masks = layout.repair(np.random.default_rng(3).random((3, layout.num_bits)) < 0.6)
    masks = np.vstack([np.ones((1, layout.num_bits), dtype=bool), masks])
    flops = layout.cost(masks)["flops"]
    for mask, analytic in zip(masks, flops, strict=True):
        pruned = prune_physically(model, layout, mask, SHAPE)
        assert analytic == _counted_flops(pruned)  # torch's counter on the unrolled forward
        assert analytic == count_flops(pruned, SHAPE)  # the fused kernel, with our formula for it
    assert flops[0] == layout.dense_flops


def test_lstm_importance_ranks_units_by_their_weights():
    model = _lstm_model(1, hidden=6)
    with torch.no_grad():
        for gate in range(4):  # unit 2's four gate rows and its recurrent column are zero
            model.lstm.weight_ih_l0[gate * 6 + 2].zero_()
            model.lstm.weight_hh_l0[gate * 6 + 2].zero_()
        model.lstm.weight_hh_l0[:, 2].zero_()
        model.head.weight[:, 2].zero_()
    layout = build_layout(model, SHAPE)
    own, group = own_filter_l1(model, layout), GroupL1(SHAPE)(model, layout)
    assert own.argmin() == 2 and own[2] == 0.0 and group.argmin() == 2 and group[2] == 0.0
    assert group.mean() == pytest.approx(1.0)  # normalised per layer like Torch-Pruning's group importance


def test_the_lstm_evaluator_scores_what_the_pruned_network_predicts():
    model = _lstm_model(2)
    layout = build_layout(model, SHAPE)
    generator = torch.Generator().manual_seed(0)
    split = {"images": torch.randint(0, 256, (30, 28, 28), dtype=torch.uint8, generator=generator)}
    with torch.no_grad():
        split["labels"] = model(images_to_float(split["images"])).argmax(-1)
    masks = np.vstack(
        [
            np.ones(layout.num_bits, dtype=bool),
            layout.repair(np.random.default_rng(0).random((2, layout.num_bits)) < 0.4),
        ]
    )
    scores = LSTMEvaluator(model, layout, torch.device("cpu")).evaluate(masks, split, batch_size=7)["accuracy"]
    assert scores.shape == (3, 1) and scores[0, 0] == 1.0
    for mask, score in zip(masks[1:], scores[1:, 0], strict=True):
        with torch.no_grad():
            pred = prune_physically(model, layout, mask, SHAPE)(images_to_float(split["images"])).argmax(-1)
        assert score == pytest.approx((pred == split["labels"]).float().mean().item())


def test_a_search_over_hidden_units_finds_smaller_lstms():
    from evoprune.core.search.api import search_pruning_masks
    from evoprune.core.search.run import SearchConfig
    from tests.conftest import image_split

    model = _lstm_model(1, hidden=16)
    cfg = SearchConfig(pop_size=8, generations=2, max_accuracy_drop=0.9)
    outcome = search_pruning_masks(model, image_split(40, 1), None, cfg, seed=0, device=torch.device("cpu"))
    again = search_pruning_masks(model, image_split(40, 1), None, cfg, seed=0, device=torch.device("cpu"))
    assert np.array_equal(outcome.result.front_X, again.result.front_X)  # same seed, same front
    assert outcome.result.front_X.shape[1] == 16
    assert outcome.result.front_F[:, 1].min() < 1.0  # members with fewer FLOPs than the dense LSTM


def test_hidden_state_pruning_with_threshold_zero_is_the_dense_lstm_and_a_huge_one_silences_it():
    model = _lstm_model(2)
    x = torch.rand(5, *SHAPE)
    with torch.no_grad():
        dense = model(x)
        with hidden_state_pruning(model, [0.0, 0.0]):
            same = model(x)
        with hidden_state_pruning(model, [0.0, 1e9]):
            silenced = model(x)
        restored = model(x)
    assert torch.allclose(same, dense, atol=1e-5)
    assert torch.allclose(silenced, model.head.bias.expand(5, -1))  # the head sees zeros
    assert torch.equal(restored, dense)  # the fused forward is back


def test_hidden_state_counts_and_calibrated_thresholds():
    model = _lstm_model(1, hidden=10)  # 10 units in groups of 4: 4 + 4 + 2
    generator = torch.Generator().manual_seed(1)
    split = {"images": torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=generator)}
    split["labels"] = torch.zeros(64, dtype=torch.long)
    cpu = torch.device("cpu")
    _, silent = run_pruned(model, split, [1e9], 4, cpu)
    assert silent.sparsity() == [1.0] and silent.sequences == 64
    assert silent.skipped_macs == [64 * 28 * 10 * 4 * 10]  # every U·h_t product of every step
    assert silent.dense_macs == [64 * 28 * 4 * 10 * (28 + 10)]
    _, none = run_pruned(model, split, [0.0], 4, cpu)
    assert none.sparsity() == [0.0] and none.skipped_macs == [0]
    thresholds = calibrate_thresholds(model, split, 0.5, 4, cpu)
    _, half = run_pruned(model, split, thresholds, 4, cpu)
    assert 0.3 < half.sparsity()[0] < 0.7
    x = torch.zeros(2, 3, 28)
    with pytest.raises(ValueError, match="thresholds must be >= 0"):
        thresholded_lstm_forward(model.lstm, x, [-0.1])
    with pytest.raises(ValueError, match="1 layers"):
        thresholded_lstm_forward(model.lstm, x, [0.1, 0.1])
    with pytest.raises(ValueError, match=r"sparsity must lie in \[0, 1\)"):
        calibrate_thresholds(model, split, 1.0, 4, cpu)


def test_bad_input_to_the_sequence_model_gets_a_clear_error():
    model = _lstm_model()
    with pytest.raises(ValueError, match=r"expects images of shape \(1, 28, 28\).*got \(1, 32, 32\)"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="cannot be read as 5 steps"):
        build_model({"name": "lstm_seq", "steps": 5})
    with pytest.raises(SplitError, match="early exits .* do not apply to an LSTM"):
        attach_exits(model, [1])
    with pytest.raises(ValueError, match="bidirectional"):
        from evoprune.core.lstm import lstm_modules

        lstm_modules(nn.Sequential(nn.LSTM(3, 4, bidirectional=True)))


def test_hidden_state_contexts_nest_and_fine_tuning_ramps_its_target():
    from evoprune.core.hidden_state import finetune_hidden_state
    from evoprune.core.train import TrainConfig
    from tests.conftest import image_split

    model = _lstm_model(1, hidden=8)
    x = torch.rand(3, *SHAPE)
    with torch.no_grad():
        dense = model(x)
        with hidden_state_pruning(model, [1e9]):
            with hidden_state_pruning(model, [0.0]):
                inner = model(x)
            outer = model(x)  # the outer context is back after the inner one
    assert torch.allclose(inner, dense, atol=1e-5) and torch.allclose(outer, model.head.bias.expand(3, -1))
    assert "forward" not in model.lstm.__dict__
    cfg = TrainConfig(epochs=6, batch_size=20, optimizer="adamw", learning_rate=1e-3)
    cpu = torch.device("cpu")
    thresholds, history = finetune_hidden_state(model, image_split(60, 0), image_split(40, 1), 0.5, 4, cfg, cpu, 0)
    assert history["hidden_sparsity_target"] == pytest.approx([1 / 3, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert len(thresholds) == 1 and thresholds[0] > 0 and "forward" not in model.lstm.__dict__


def test_an_activity_penalty_shrinks_the_hidden_state_during_fine_tuning():
    from evoprune.core.hidden_state import finetune_hidden_state
    from evoprune.core.lstm import unrolled_lstm_forward
    from evoprune.core.train import TrainConfig
    from tests.conftest import image_split

    cfg = TrainConfig(epochs=2, batch_size=20, optimizer="adamw", learning_rate=1e-2)
    cpu = torch.device("cpu")
    x = images_to_float(image_split(40, 2)["images"]).flatten(1).view(40, 28, 28)
    mean_h = {}
    for weight in (0.0, 1.0):
        model = _lstm_model(1, hidden=8)
        finetune_hidden_state(model, image_split(60, 0), image_split(40, 1), 0.3, 4, cfg, cpu, 0, activity_l1=weight)
        with torch.no_grad():
            mean_h[weight] = float(unrolled_lstm_forward(model.lstm, x).abs().mean())
    assert mean_h[1.0] < 0.8 * mean_h[0.0]
    with pytest.raises(ValueError, match="activity_l1 must be >= 0"):
        finetune_hidden_state(_lstm_model(), image_split(8, 0), image_split(8, 1), 0.3, 4, cfg, cpu, 0, activity_l1=-1)
