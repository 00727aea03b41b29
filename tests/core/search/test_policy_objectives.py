import numpy as np
import pytest
import torch
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from evoprune.core.early_exit import exit_costs, simulate_early_exit
from evoprune.core.exits import attach_exits
from evoprune.core.masking import SlicedEvaluator, population_masks
from evoprune.core.models import build_model
from evoprune.core.search.api import search_pruning_masks
from evoprune.core.search.problem import MaskSearchProblem
from evoprune.core.search.run import SearchConfig
from evoprune.core.train import as_exit_list
from evoprune.core.units import build_layout
from tests.conftest import image_split as _split

CPU = torch.device("cpu")
POLICY = (0.12, "max_softmax")  # untrained nets: low confidence, so a low threshold lets samples leave early


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = attach_exits(build_model({"name": "vgg", "stages": [[8], [16], [16]], "fc_features": [16]}), [1, 2])
    model(torch.randn(16, 1, 28, 28))
    return model.eval()


def test_exit_flops_of_the_dense_mask_match_the_counter(net):
    layout = build_layout(net, (1, 28, 28))
    dense = layout.exit_flops(np.ones((1, layout.num_bits), dtype=bool))[0]
    assert dense.tolist() == [c["flops_policy"] for c in exit_costs(net)]
    masks = layout.repair(np.random.default_rng(0).random((4, layout.num_bits)) < 0.5)
    per_exit = layout.exit_flops(masks)
    assert np.all(np.diff(per_exit, axis=1) > 0) and np.all(per_exit[:, -1] == layout.cost(masks)["flops"])


def test_policy_scores_equal_early_exiting_the_masked_network(net):
    layout = build_layout(net, (1, 28, 28))
    split = _split(120, 1)
    masks = layout.repair(np.random.default_rng(1).random((3, layout.num_bits)) < 0.7)
    scores = SlicedEvaluator(net, layout, CPU).evaluate(masks, split, POLICY, batch_size=50)
    assert np.allclose(scores["exit_share"].sum(1), 1.0)
    x = (split["images"].float() / 127.5 - 1).unsqueeze(1)
    for k, mask in enumerate(masks):
        with torch.no_grad(), population_masks(net, layout, torch.as_tensor(mask[None])):
            logits = torch.stack(as_exit_list(net(x)))
        preds, used = simulate_early_exit(logits, *POLICY)
        assert scores["policy_accuracy"][k] == pytest.approx((preds == split["labels"]).double().mean().item())
        assert scores["exit_share"][k].tolist() == pytest.approx((torch.bincount(used, minlength=3) / 120).tolist())


def test_policy_objectives_and_their_constraint(net):
    layout = build_layout(net, (1, 28, 28))
    split = _split(100, 2)
    evaluator = SlicedEvaluator(net, layout, CPU)
    score = lambda X: evaluator.evaluate(X, split, POLICY)  # noqa: E731
    dense = np.ones((1, layout.num_bits), dtype=bool)
    reference = score(dense)
    problem = MaskSearchProblem(layout, score, ["policy_error", "expected_flops_ratio"], reference, 0.1)
    out = problem.evaluate(dense, return_values_of=["F", "G"], return_as_dictionary=True)
    expected = (reference["exit_share"] * layout.exit_flops(dense)).sum() / layout.dense_flops
    assert out["F"][0, 0] == pytest.approx(1 - reference["policy_accuracy"][0])
    assert out["F"][0, 1] == pytest.approx(expected) and out["F"][0, 1] < 1.0
    assert out["G"][0, 0] == pytest.approx(-0.1)
    for objectives in (["policy_error"], ["error", "expected_flops_ratio"]):
        with pytest.raises(ValueError, match="need an early-exit policy"):
            MaskSearchProblem(layout, score, objectives, reference["accuracy"], 0.1)


def test_policy_objectives_need_a_multi_exit_model_and_an_operating_point():
    model = build_model({"name": "lenet5"})
    cfg = SearchConfig(objectives=["policy_error", "expected_flops_ratio"], pop_size=4, generations=1)
    with pytest.raises(ValueError, match="run build_exits first"):
        search_pruning_masks(model, _split(50, 0), None, cfg, 0, CPU, policy=POLICY)


def test_roulette_algorithm_returns_a_non_dominated_feasible_front(net):
    cfg = SearchConfig(algorithm="roulette", objectives=["mean_error", "flops_ratio"], max_accuracy_drop=0.5)
    outcome = search_pruning_masks(net, _split(100, 3), None, cfg, seed=0, device=CPU)
    front = outcome.result.front_F
    assert len(front) >= 1 and outcome.result.evaluated_X[0].all()
    assert len(NonDominatedSorting().do(front, only_non_dominated_front=True)) == len(front)
    assert (outcome.result.evaluated_G[:, 0] <= 0).sum() >= len(front)
