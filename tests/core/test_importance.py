"""Every importance criterion: what it measures, that it is a plain callable, and its reproducibility."""

import copy

import numpy as np
import pytest
import torch
import torch_pruning as tp

from evoprune.core.baselines import mask_within_budget
from evoprune.core.exits import attach_exits
from evoprune.core.importance import (
    BASELINE_CRITERIA,
    GroupHessian,
    GroupL1,
    GroupLAMP,
    GroupRandom,
    GroupTaylor,
    baseline_criterion,
    group_scores,
    own_filter_l1,
    set_fisher_diagonal,
)
from evoprune.core.models import build_model
from evoprune.core.train import exits_loss
from evoprune.core.units import build_layout

SHAPE = (1, 28, 28)


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = attach_exits(build_model({"name": "lenet5"}), [1]).eval()
    return model, build_layout(model, SHAPE)


def test_own_filter_l1_is_the_l1_norm_of_each_units_filter(net):
    model, layout = net
    scores = own_filter_l1(model, layout)
    conv1 = layout.groups[0]
    weight = dict(model.named_modules())[conv1.name].weight
    expected = weight.detach().abs().reshape(conv1.size, -1).sum(1).numpy()
    np.testing.assert_allclose(scores[conv1.offset : conv1.offset + conv1.size], expected, rtol=1e-6)
    assert scores.shape == (layout.num_bits,)


def test_group_l1_is_torch_prunings_group_magnitude_importance(net):
    model, layout = net
    scores = GroupL1(SHAPE)(model, layout)
    again = group_scores(model, layout, SHAPE, tp.importance.GroupMagnitudeImportance(p=1))
    np.testing.assert_array_equal(scores, again)


def test_group_l1_counts_the_consumers_weights_and_own_filter_l1_does_not(net):
    model, layout = net
    conv1 = layout.groups[0]
    block = slice(conv1.offset, conv1.offset + conv1.size)
    own_before = own_filter_l1(model, layout)
    with torch.no_grad():  # shrink only what consumes conv1's channel 3 (conv2's and the exit head's inputs)
        model.backbone.stages[1][0].weight[:, 3].mul_(1e-3)
        model.exit_heads[0][2].weight.view(model.exit_heads[0][2].out_features, 6, -1)[:, 3].mul_(1e-3)
    assert GroupL1(SHAPE)(model, layout)[block].argmin() == 3
    np.testing.assert_array_equal(own_filter_l1(model, layout)[block], own_before[block])


def test_both_l1_criteria_drop_a_tiny_filter_first(net):
    model, layout = net
    conv1 = layout.groups[0]
    with torch.no_grad():  # conv1's channel 3: tiny filter and tiny consumers
        model.backbone.stages[0][0].weight[3].mul_(1e-3)
        model.backbone.stages[1][0].weight[:, 3].mul_(1e-3)
        model.exit_heads[0][2].weight.view(model.exit_heads[0][2].out_features, 6, -1)[:, 3].mul_(1e-3)
    block = slice(conv1.offset, conv1.offset + conv1.size)
    for criterion in (own_filter_l1, GroupL1(SHAPE)):
        scores = criterion(model, layout)
        assert scores[block].argmin() == 3
        assert not mask_within_budget(layout, scores, 0.9)[conv1.offset + 3]


def test_random_scores_follow_the_seed(net):
    model, layout = net
    a, b = (GroupRandom(SHAPE, s)(model, layout) for s in (0, 0))
    c = GroupRandom(SHAPE, 1)(model, layout)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def _calibration(n: int = 48):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, *SHAPE, generator=generator), torch.randint(0, 10, (n,), generator=generator)


@pytest.mark.parametrize("name", BASELINE_CRITERIA)
def test_baseline_criteria_by_name_are_the_classes(net, name):
    model, layout = net
    calibration = _calibration()
    criterion = baseline_criterion(name, SHAPE, 0, calibration)
    expected = {
        "l1": GroupL1(SHAPE),
        "random": GroupRandom(SHAPE, 0),
        "taylor": GroupTaylor(SHAPE, calibration),
        "hessian": GroupHessian(SHAPE, calibration),
        "lamp": GroupLAMP(SHAPE),
    }[name]
    assert type(criterion) is type(expected)
    np.testing.assert_array_equal(criterion(model, layout), expected(model, layout))


@pytest.mark.parametrize("name", ["taylor", "hessian"])
def test_gradient_criteria_leave_the_model_untouched_and_need_a_calibration_batch(net, name):
    model, layout = net
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = baseline_criterion(name, SHAPE, 0, _calibration())(model.train(), layout)
    assert np.isfinite(scores).all() and scores.std() > 0
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=f"'{name}' criterion reads gradients: pass a calibration batch"):
        baseline_criterion(name, SHAPE, 0)


def test_taylor_is_torch_prunings_taylor_importance_on_the_loss_gradient(net):
    model, layout = net
    inputs, labels = _calibration()
    reference = copy.deepcopy(model)
    exits_loss(reference(inputs), labels, None, 0.0).backward()
    expected = group_scores(reference, layout, SHAPE, tp.importance.GroupTaylorImportance())
    np.testing.assert_allclose(GroupTaylor(SHAPE, (inputs, labels))(model, layout), expected, rtol=1e-5)


def test_fisher_diagonal_is_the_mean_squared_per_sample_gradient(net):
    model, _ = net
    inputs, labels = _calibration(70)  # more than one chunk of per-sample gradients
    squares = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, y in zip(inputs, labels, strict=True):  # the definition, one sample at a time
        model.zero_grad()
        exits_loss(model(x[None]), y[None], None, 0.0).backward()
        for n, p in model.named_parameters():
            squares[n] += p.grad.pow(2)
    model.zero_grad(set_to_none=True)
    set_fisher_diagonal(model, (inputs, labels))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, squares[n] / len(labels), rtol=1e-4, atol=1e-9)


def test_torch_prunings_own_hessian_accumulation_keeps_only_the_last_sample(net):
    """Why GroupHessian computes the Fisher diagonal itself: in torch-pruning 1.6.1 accumulate_grad tests
    ``name in`` a dict keyed by parameters, so every call overwrites. When this fails upstream is fixed."""
    model, _ = net
    inputs, labels = _calibration(2)
    importance = tp.importance.GroupHessianImportance()
    for x, y in zip(inputs, labels, strict=True):
        model.zero_grad()
        exits_loss(model(x[None]), y[None], None, 0.0).backward()
        importance.accumulate_grad(model)
    weight = next(model.parameters())
    assert torch.equal(importance._accu_grad[weight], weight.grad.pow(2))  # the last sample's squares alone
    assert importance._counter[weight] == 1


def test_unknown_baseline_criterion_names_the_choices_and_the_key():
    with pytest.raises(
        ValueError,
        match=r"unknown baseline criterion 'l2'; choose from \['l1', 'random', 'taylor', 'hessian', 'lamp'\].*baselines",
    ):
        baseline_criterion("l2", SHAPE, 0)
