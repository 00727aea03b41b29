"""The recovery fitness (mask_search.search.recovery): candidates scored after a few fine-tune steps."""

import numpy as np
import pytest
import torch

from evoprune.core.exits import attach_exits
from evoprune.core.masking import mask_evaluator
from evoprune.core.models import build_model
from evoprune.core.search import api
from evoprune.core.search.api import search_fingerprint, search_pruning_masks
from evoprune.core.search.distributed import DistributedConfig
from evoprune.core.search.recovery import RecoveryConfig, recovered_accuracy
from evoprune.core.search.run import SearchConfig
from evoprune.core.units import build_layout
from tests.conftest import image_split

CPU = torch.device("cpu")
RECOVERY = {"generations": 2, "steps": 3, "training": {"batch_size": 16, "memory_format": "contiguous"}}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = attach_exits(build_model({"name": "vgg", "stages": [[6], [8]], "fc_features": [8]}), [1])
    model(torch.randn(4, 1, 28, 28))
    return model.eval()


def _cfg(**changes) -> SearchConfig:
    base = dict(pop_size=6, generations=4, max_accuracy_drop=1.0, checkpoint_every=1, recovery=RECOVERY)
    return SearchConfig(**{**base, **changes})


def test_recovered_accuracy_trains_a_pruned_copy_and_scores_equal_masks_equally(net):
    layout = build_layout(net, (1, 28, 28))
    train, validation = image_split(64, 0), image_split(40, 1)
    masks = layout.repair(np.random.default_rng(0).random((2, layout.num_bits)) < 0.6)
    X = np.concatenate([masks, masks[:1]])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = RecoveryConfig(**RECOVERY)
    recovered = recovered_accuracy(net, layout, X, train, validation, cfg, CPU, seed=0)
    assert recovered.shape == (3, 2) and np.array_equal(recovered[0], recovered[2])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the trained net is untouched
    as_masked = mask_evaluator(net, layout, CPU, None).accuracy(X, validation)
    assert not np.allclose(recovered, as_masked)  # the steps changed what the candidates score


def test_the_last_generations_and_the_front_are_scored_after_recovery(net):
    train, validation = image_split(64, 0), image_split(40, 1)
    layout = build_layout(net, (1, 28, 28))
    outcome = search_pruning_masks(net, validation, None, _cfg(), 0, CPU, train_split=train)
    result = outcome.result
    expected = recovered_accuracy(net, layout, result.front_X, train, validation, RecoveryConfig(**RECOVERY), CPU, 0)
    assert np.allclose(result.front_accuracy, expected)
    late = result.evaluated_generation >= 2
    assert late.any() and (~late).any()
    again = search_pruning_masks(net, validation, None, _cfg(), 0, CPU, train_split=train)
    assert np.array_equal(again.result.front_X, result.front_X)  # same seed, same front


def test_a_search_killed_at_the_switch_resumes_to_the_same_front(net, tmp_path, monkeypatch):
    train, validation = image_split(64, 0), image_split(40, 1)
    whole = search_pruning_masks(net, validation, None, _cfg(), 0, CPU, train_split=train)
    original = api.run_search
    monkeypatch.setattr(api, "run_search", lambda *a, **k: original(*a, **{**k, "stop_after": 2}))
    search_pruning_masks(net, validation, None, _cfg(), 0, CPU, checkpoint_dir=tmp_path, train_split=train)
    monkeypatch.setattr(api, "run_search", original)
    resumed = search_pruning_masks(net, validation, None, _cfg(), 0, CPU, checkpoint_dir=tmp_path, train_split=train)
    assert np.array_equal(resumed.result.front_X, whole.result.front_X)
    assert np.allclose(resumed.result.front_accuracy, whole.result.front_accuracy)


def test_the_population_is_scored_again_when_recovery_takes_over(net, tmp_path, monkeypatch):
    train, validation = image_split(64, 0), image_split(40, 1)
    layout = build_layout(net, (1, 28, 28))
    cfg = _cfg(pop_size=8, recovery={**RECOVERY, "generations": 1})
    original = api.run_search
    monkeypatch.setattr(api, "run_search", lambda *a, **k: original(*a, **{**k, "stop_after": 4}))
    search_pruning_masks(net, validation, None, cfg, 0, CPU, checkpoint_dir=tmp_path, train_split=train)
    (state,) = tmp_path.glob("*/state.npz")
    with np.load(state) as saved:  # the population after the one recovered generation
        X, accuracy = saved["X"].astype(bool), saved["accuracy"]
    expected = recovered_accuracy(net, layout, X, train, validation, RecoveryConfig(**RECOVERY), CPU, 0)
    assert np.allclose(accuracy, expected)  # survivors of the plain generations included


def test_recovery_settings_and_training_data_name_another_checkpoint(net):
    validation = image_split(40, 1)
    off = search_fingerprint(net, _cfg(recovery={}), 0, validation, None, None)
    on = search_fingerprint(net, _cfg(), 0, validation, None, None, recovery_split=image_split(48, 0))
    other_data = search_fingerprint(net, _cfg(), 0, validation, None, None, recovery_split=image_split(48, 5))
    assert len({off, on, other_data}) == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"recovery": {**RECOVERY, "generations": 5}}, "exceeds search.generations"),
        ({"objectives": ["policy_error", "flops_ratio"]}, "not the early-exit policy"),
        ({"algorithm": "roulette"}, "roulette algorithm has none"),
    ],
)
def test_impossible_recovery_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        _cfg(**changes)


def test_recovery_needs_the_training_split_and_runs_in_this_process(net):
    validation = image_split(40, 1)
    with pytest.raises(ValueError, match="needs the training split"):
        search_pruning_masks(net, validation, None, _cfg(), 0, CPU)
    remote = DistributedConfig(scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="does not run on Dask workers"):
        search_pruning_masks(net, validation, None, _cfg(), 0, CPU, distributed=remote, train_split=image_split(64, 0))
