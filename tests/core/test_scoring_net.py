"""The Scoring Net's core: unit features, gates and soft FLOPs, masks at a budget, staged training, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from evoprune.core.baselines import mask_within_budget
from evoprune.core.data import images_to_float
from evoprune.core.masking import prune_physically
from evoprune.core.models import build_model
from evoprune.core.models.adapter import input_shape
from evoprune.core.scoring_net import (
    FEATURE_NAMES,
    GatesStageConfig,
    RefineStageConfig,
    ScoringNet,
    ScoringNetConfig,
    SoftFlops,
    at_budget,
    fit_to_targets,
    group_flops_share,
    load_scoring_net,
    mask_at_budget,
    scoring_net_state,
    train_scoring_net,
    unit_features,
    unit_gates,
)
from evoprune.core.scoring_net.features import UNIT_FEATURE_NAMES
from evoprune.core.train import TrainConfig, train
from evoprune.core.units import ChromosomeLayout, UnitGroup, build_layout
from tests.conftest import image_split

UNIT_COLUMNS = len(UNIT_FEATURE_NAMES)
RESNET = {"name": "resnet_cifar", "width": 4, "in_channels": 1, "input_size": 28}


@pytest.fixture(scope="module")
def lenet():
    """A LeNet-5 trained on fake images (99% accurate; 0.2 s), its layout and data (shared, never modified)."""
    torch.manual_seed(0)
    model = build_model({"name": "lenet5"})
    split = image_split(384, seed=0)
    cfg = TrainConfig(
        epochs=2, batch_size=64, optimizer="adamw", learning_rate=3e-3, schedule="constant", weight_decay=0.0
    )
    train(model, split, None, cfg, torch.device("cpu"), seed=0)
    return model.eval(), build_layout(model, input_shape(model)), split


@pytest.fixture(scope="module")
def lenet_features(lenet):
    model, layout, split = lenet
    return unit_features(model, layout, images_to_float(split["images"][:128]), split["labels"][:128], budget=0.5)


def _vgg_with_random_gammas() -> nn.Module:
    torch.manual_seed(1)
    model = build_model({"name": "vgg", "stages": [[6], [8]], "fc_features": [12]}).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.uniform_(-2.0, 2.0)
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model


def _tiny_split_features(model: nn.Module, layout: ChromosomeLayout, budget: float = 0.5) -> torch.Tensor:
    split = image_split(48, seed=3)
    return unit_features(model, layout, images_to_float(split["images"]), split["labels"], budget)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _quick_config(**overrides) -> ScoringNetConfig:
    stages = [
        GatesStageConfig(steps=3, batch_size=32, learning_rate=1e-2),
        RefineStageConfig(steps=2, batch_size=32, learning_rate=1e-2),
    ]
    return ScoringNetConfig(**{"stages": stages, "feature_images": 64, "eval_budgets": [], **overrides})


# ---- features ------------------------------------------------------------------------------------------


def test_features_are_finite_and_z_scored_within_each_group(lenet, lenet_features):
    _, layout, _ = lenet
    f = lenet_features
    assert f.shape == (layout.num_bits, len(FEATURE_NAMES)) and len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert bool(torch.isfinite(f).all())
    for g in layout.groups:
        block = f[g.offset : g.offset + g.size, :UNIT_COLUMNS].double()
        assert torch.allclose(block.mean(0), torch.zeros(UNIT_COLUMNS, dtype=torch.float64), atol=1e-5), g.name
        varying = block.std(0, unbiased=False) > 0
        assert torch.allclose(
            block.std(0, unbiased=False)[varying], torch.ones(int(varying.sum()), dtype=torch.float64)
        )
    weight_l1 = f[:, FEATURE_NAMES.index("weight_l1")]
    taylor = f[:, FEATURE_NAMES.index("taylor")]
    assert weight_l1.std() > 0.5 and taylor.std() > 0.5  # real per-unit signal, not zeros
    assert bool((f[:, FEATURE_NAMES.index("bn_gamma")] == 0).all())  # LeNet-5 has no BatchNorm


def test_layer_features_describe_depth_cost_width_and_budget(lenet, lenet_features):
    _, layout, _ = lenet
    f, shares = lenet_features, group_flops_share(layout)
    first, last = layout.groups[0], layout.groups[-1]
    assert f[first.offset, FEATURE_NAMES.index("depth")] == 0.0 and f[last.offset, FEATURE_NAMES.index("depth")] == 1.0
    for i, g in enumerate(layout.groups):
        rows = f[g.offset : g.offset + g.size]
        assert torch.allclose(rows[:, FEATURE_NAMES.index("flops_share")], torch.tensor(float(shares[i])))
        assert torch.allclose(rows[:, FEATURE_NAMES.index("log_width")], torch.tensor(float(np.log(g.size))))
    # a LeNet-5 group controls its own layer's outputs and the next layer's inputs: both layers' FLOPs
    flops = [layer.flops_per_pair * len(layer.out_bits) * len(layer.in_bits) for layer in layout.layers]
    assert np.allclose(shares, [(flops[i] + flops[i + 1]) / layout.dense_flops for i in range(len(layout.groups))])
    assert bool((f[:, -1] == 0.5).all()) and bool((at_budget(f, 0.3)[:, -1] == 0.3).all()) and f[0, -1] == 0.5


def test_features_of_a_batchnorm_network_read_the_gammas_and_leave_the_model_alone():
    model = _vgg_with_random_gammas()
    layout = build_layout(model, input_shape(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    f = _tiny_split_features(model, layout)
    assert bool(torch.isfinite(f).all())
    gamma = f[:, FEATURE_NAMES.index("bn_gamma")]
    for g in layout.groups:
        assert gamma[g.offset : g.offset + g.size].std() > 0.5, g.name
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_taylor_ranks_a_silenced_unit_last(lenet):
    model, layout, split = lenet
    net = build_model({"name": "lenet5"})
    net.load_state_dict(model.state_dict())
    g = layout.groups[2]  # head.1: an fc layer
    with torch.no_grad():
        dict(net.named_modules())[g.name].weight[5].zero_()
        dict(net.named_modules())[g.name].bias[5] = -10.0  # never active after ReLU
    f = unit_features(net, layout, images_to_float(split["images"][:64]), split["labels"][:64], 0.5)
    block = f[g.offset : g.offset + g.size]
    for name in ("weight_l1", "weight_l2"):
        assert int(block[:, FEATURE_NAMES.index(name)].argmin()) == 5, name
    for name in ("mean_activation", "taylor"):  # other dead units of the trained net may tie with it
        column = block[:, FEATURE_NAMES.index(name)]
        assert column[5] == column.min() < column.max(), name
    apoz = block[:, FEATURE_NAMES.index("apoz")]
    assert apoz[5] == apoz.max() > apoz.min()


# ---- gates and soft FLOPs ------------------------------------------------------------------------------


def test_soft_flops_equals_the_analytic_cost_on_binary_masks_and_is_differentiable(lenet):
    _, layout, _ = lenet
    rng = np.random.default_rng(0)
    masks = rng.random((8, layout.num_bits)) < rng.uniform(0.1, 0.9, (8, 1))
    soft = SoftFlops(layout)
    expected = layout.cost(masks)["flops"] / layout.dense_flops
    assert np.allclose(soft(torch.as_tensor(masks).float()).numpy(), expected, rtol=1e-12)
    assert float(soft(torch.ones(layout.num_bits))) == pytest.approx(1.0)
    gates = torch.full((layout.num_bits,), 0.5, requires_grad=True)
    soft(gates).backward()
    assert bool((gates.grad > 0).all())  # every unit costs FLOPs


@pytest.mark.parametrize("kind", ["lenet5", "vgg", "resnet"])
def test_binary_gates_equal_the_physically_pruned_network(lenet, kind):
    if kind == "lenet5":
        model, layout = lenet[0], lenet[1]
    else:  # BatchNorms; residual groups whose bits gate every branch that adds into them
        torch.manual_seed(2)
        model = _vgg_with_random_gammas() if kind == "vgg" else build_model(RESNET).eval()
        layout = build_layout(model, input_shape(model))
    mask = np.random.default_rng(1).random(layout.num_bits) < 0.6
    mask = layout.repair(mask[None])[0]
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad(), unit_gates(model, layout, torch.as_tensor(mask)):
        gated = model(x)
    pruned = prune_physically(model, layout, mask, input_shape(model))
    with torch.no_grad():
        assert torch.allclose(gated, pruned(x), atol=1e-5)
        assert not torch.allclose(gated, model(x), atol=1e-3)  # hooks are gone after the block


# ---- masks at a budget ---------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.8])
def test_mask_at_budget_meets_the_budget_within_one_unit(lenet, lenet_features, budget):
    _, layout, _ = lenet
    torch.manual_seed(0)
    mask = mask_at_budget(ScoringNet(), lenet_features, layout, budget)
    ratio = layout.cost(mask[None])["flops"][0] / layout.dense_flops
    assert mask.shape == (layout.num_bits,) and ratio <= budget + 1e-12
    removed = np.flatnonzero(~mask)
    assert len(removed) > 0
    plus_one = np.repeat(mask[None], len(removed), 0)
    plus_one[np.arange(len(removed)), removed] = True
    assert (layout.cost(plus_one)["flops"] / layout.dense_flops > budget).all()  # any unit back breaks the budget
    assert all(mask[g.offset : g.offset + g.size].any() for g in layout.groups)


def test_a_zero_net_ties_every_unit_and_removes_them_in_bit_order(lenet, lenet_features):
    _, layout, _ = lenet
    net = ScoringNet()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    assert bool((net.scores(lenet_features) == 0).all())
    mask = mask_at_budget(net, lenet_features, layout, 0.5)
    assert np.array_equal(mask, mask_within_budget(layout, np.zeros(layout.num_bits), 0.5))
    # ties go in bit order: the first conv's units 0, 1, 2, 3 go first (then the FLOPs fit: 2 of its 6 channels
    # keep 43% of LeNet-5's FLOPs, 3 would keep 57%), the later groups are whole
    assert mask[: layout.groups[0].size].tolist() == [False] * 4 + [True] * 2
    assert mask[layout.groups[0].size :].all()


def test_mask_at_budget_takes_a_feature_function(lenet, lenet_features):
    _, layout, _ = lenet
    torch.manual_seed(2)
    net, seen = ScoringNet(), []

    def features(budget: float) -> torch.Tensor:
        seen.append(budget)
        return at_budget(lenet_features, budget)

    assert np.array_equal(mask_at_budget(net, features, layout, 0.4), mask_at_budget(net, lenet_features, layout, 0.4))
    assert seen == [0.4]


# ---- the net learns a planted ranking ------------------------------------------------------------------


def test_the_net_learns_a_planted_ranking():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(200, len(FEATURE_NAMES), generator=gen)
    importance = features[:, 3]  # the planted column
    target = torch.argsort(torch.argsort(importance)).float() / (len(importance) - 1)  # rank in [0, 1]
    torch.manual_seed(0)
    net = ScoringNet()
    before = _spearman(net.scores(features).numpy(), importance.numpy())
    losses = fit_to_targets(net, features, target, steps=80, learning_rate=3e-2)
    scores = net.scores(features).numpy()
    assert losses[-1] < 0.05 * losses[0]
    assert _spearman(scores, importance.numpy()) > 0.97 > abs(before)
    top = set(np.argsort(-scores)[:20]) & set(np.argsort(-importance.numpy())[:20])
    assert len(top) >= 15


# ---- staged training -----------------------------------------------------------------------------------


def test_same_seed_gives_the_same_masks_and_another_seed_other_scores(lenet):
    model, layout, split = lenet
    cfg = _quick_config()
    runs = [train_scoring_net(model, split, cfg, seed=s, layout=layout) for s in (7, 7, 8)]
    masks = [mask_at_budget(r.net, r.features, layout, b) for r in runs for b in (0.3, 0.6)]
    assert np.array_equal(masks[0], masks[2]) and np.array_equal(masks[1], masks[3])
    assert torch.equal(runs[0].net.scores(runs[0].features), runs[1].net.scores(runs[1].features))
    assert not torch.allclose(runs[0].net.scores(runs[0].features), runs[2].net.scores(runs[2].features))
    assert runs[0].history["stages"][0]["budget"] == runs[1].history["stages"][0]["budget"]


def test_feature_dropout_changes_what_the_net_learns_and_is_bounded(lenet):
    model, layout, split = lenet
    plain = [st.model_copy(update={"feature_dropout": 0.0}) for st in _quick_config().stages]
    nets = {
        p: train_scoring_net(model, split, _quick_config(stages=[plain[0].model_copy(update={"feature_dropout": p})]),
                             seed=3, layout=layout)
        for p in (0.0, 0.9)
    }  # fmt: skip
    scores = {p: r.net.scores(r.features) for p, r in nets.items()}
    assert not torch.allclose(scores[0.0], scores[0.9])  # the same seed and steps, other inputs seen
    assert torch.equal(nets[0.0].features, nets[0.9].features)  # the features themselves are not altered
    with pytest.raises(ValidationError, match="feature_dropout"):
        GatesStageConfig(feature_dropout=1.0)


def test_training_reports_each_stage_and_leaves_the_model_alone(lenet):
    model, layout, split = lenet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_scoring_net(
        model, split, _quick_config(eval_budgets=[0.5]), seed=0, validation_split=image_split(64, seed=1), layout=layout
    )
    stages = result.history["stages"]
    assert [s["stage"] for s in stages] == ["gates", "refine"]
    assert [len(s["loss"]) for s in stages] == [3, 2] and result.history["feature_seconds"] > 0
    for s in stages:
        assert s["seconds"] > 0 and np.isfinite(s["loss"]).all()
        assert 0.0 <= s["accuracy_at_budget"]["0.5"] <= 1.0 and s["eval_flops_ratio"]["0.5"] <= 0.5 + 1e-12
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_the_gates_stage_pulls_the_expected_flops_to_the_budget(lenet):
    model, layout, split = lenet
    stage = GatesStageConfig(steps=10, batch_size=32, learning_rate=5e-2, budget_range=(0.1, 0.1), flops_weight=100.0)
    result = train_scoring_net(model, split, _quick_config(stages=[stage]), seed=0, layout=layout)
    expected = result.history["stages"][0]["expected_flops_ratio"]
    assert expected[0] > 0.2 and expected[-1] < 0.15


def test_a_single_straight_through_stage_trains_on_the_deployed_hard_masks(lenet):
    model, layout, split = lenet
    stage = GatesStageConfig(steps=3, batch_size=32, straight_through=True, optimizer="sgd", learning_rate=0.1)
    result = train_scoring_net(model, split, _quick_config(stages=[stage]), seed=0, layout=layout)
    torch.manual_seed(0)
    untrained = ScoringNet()
    assert not torch.allclose(result.net.scores(result.features), untrained.scores(result.features))


# ---- checkpoints ---------------------------------------------------------------------------------------


def test_a_saved_net_reloads_with_weights_only_and_scores_identically(tmp_path, lenet_features):
    torch.manual_seed(3)
    net = ScoringNet(hidden=(16, 8))
    torch.save(scoring_net_state(net), tmp_path / "scoring_net.pt")
    loaded = load_scoring_net(torch.load(tmp_path / "scoring_net.pt", weights_only=True))
    assert loaded.hidden == (16, 8)
    assert torch.equal(loaded.scores(lenet_features), net.scores(lenet_features))


def test_the_l1_prior_and_ignored_features_survive_a_checkpoint(tmp_path, lenet_features):
    torch.manual_seed(3)
    net = ScoringNet(hidden=(8,), l1_prior=2.0, ignored_features=["apoz"])
    plain = ScoringNet(hidden=(8,))
    plain.load_state_dict(net.state_dict())
    column = FEATURE_NAMES.index("group_l1")
    without_apoz = lenet_features.clone()
    without_apoz[:, FEATURE_NAMES.index("apoz")] = 0.0
    expected = plain.scores(without_apoz) + 2.0 * lenet_features[:, column]
    assert torch.allclose(net.scores(lenet_features), expected)
    torch.save(scoring_net_state(net), tmp_path / "scoring_net.pt")
    loaded = load_scoring_net(torch.load(tmp_path / "scoring_net.pt", weights_only=True))
    assert (loaded.l1_prior, loaded.ignored_features) == (2.0, ("apoz",))
    assert torch.equal(loaded.scores(lenet_features), net.scores(lenet_features))
    with pytest.raises(ValueError, match="ignored_features.*not features"):
        ScoringNet(ignored_features=["gamma"])


def test_training_ignores_features_that_are_zero_on_every_source_and_cycles_extra_sources(lenet):
    model, _, split = lenet
    cfg = ScoringNetConfig(stages=[GatesStageConfig(steps=4)], feature_images=64, l1_prior=1.0)
    result = train_scoring_net(model, split, cfg, seed=0, extra_sources=[(model, split)])
    assert result.net.ignored_features == ("bn_gamma",)  # LeNet-5 has no BatchNorm
    assert result.net.l1_prior == 1.0 and len(result.history["stages"][0]["loss"]) == 4


@pytest.mark.parametrize(
    "change", [{"feature_version": "evoprune.scoring_net.features/0"}, {"feature_names": list(FEATURE_NAMES[:-1])}]
)
def test_a_net_trained_on_other_features_refuses_to_load(change):
    state = {**scoring_net_state(ScoringNet()), **change}
    with pytest.raises(ValueError, match="does not match this version.*retrain the Scoring Net"):
        load_scoring_net(state)
    with pytest.raises(ValueError, match="not a Scoring Net checkpoint"):
        load_scoring_net({"state_dict": {}})


# ---- clear errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0.0, -0.2, 1.5])
def test_a_budget_outside_zero_one_is_refused(lenet, lenet_features, budget):
    model, layout, split = lenet
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
        mask_at_budget(ScoringNet(), lenet_features, layout, budget)
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
        unit_features(model, layout, images_to_float(split["images"][:8]), split["labels"][:8], budget)
    with pytest.raises(ValidationError, match="budget_range"):
        GatesStageConfig(budget_range=(0.5, budget) if budget > 1 else (budget, 0.5))
    with pytest.raises(ValidationError, match="eval_budgets"):
        ScoringNetConfig(eval_budgets=[budget])


def test_stage_configs_forbid_unknown_keys_and_dispatch_on_the_stage_name():
    with pytest.raises(ValidationError, match="learning_rat"):
        GatesStageConfig(learning_rat=0.1)
    cfg = ScoringNetConfig.model_validate({"stages": [{"stage": "refine"}, {"stage": "gates", "steps": 3}]})
    assert isinstance(cfg.stages[0], RefineStageConfig) and cfg.stages[0].straight_through
    assert cfg.stages[0].loss == "distillation" and cfg.stages[1].steps == 3 and cfg.stages[1].loss == "cross_entropy"
    with pytest.raises(ValidationError, match="stage"):
        ScoringNetConfig.model_validate({"stages": [{"stage": "prune"}]})


def test_a_model_without_prunable_units_is_refused_before_training():
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    model.spec = {"in_channels": 1, "input_size": 28}
    layout = build_layout(model, (1, 28, 28))
    assert not layout.groups
    split = image_split(16, seed=0)
    with pytest.raises(ValueError, match="no prunable unit"):
        train_scoring_net(model, split, _quick_config(), seed=0, layout=layout)
    with pytest.raises(ValueError, match="no prunable unit"):
        unit_features(model, layout, images_to_float(split["images"]), split["labels"], 0.5)


def test_an_lstm_layout_is_refused_with_a_clear_error():
    layout = ChromosomeLayout((UnitGroup("lstm.l0", 4, 0, ()),), (), (), 1.0, 1)
    with pytest.raises(ValueError, match="LSTM models are not supported"):
        with unit_gates(nn.Identity(), layout, torch.ones(4)):
            pass


def test_the_digits_are_a_real_28_by_28_uint8_dataset_split_by_seed():
    from evoprune.core.scoring_net import digits_split

    train_split, test_split = digits_split(seed=0)
    assert train_split["images"].shape[1:] == (28, 28) and train_split["images"].dtype == torch.uint8
    assert len(train_split["labels"]) + len(test_split["labels"]) == 1797
    assert set(test_split["labels"].tolist()) == set(range(10)) and int(train_split["images"].max()) > 200
    again, _ = digits_split(seed=0)
    other, _ = digits_split(seed=1)
    assert torch.equal(again["labels"], train_split["labels"]) and not torch.equal(
        other["labels"], train_split["labels"]
    )


def test_zero_shot_transfer_scores_both_criteria_at_each_budget_on_another_model():
    from evoprune.core.scoring_net import criteria_comparison

    torch.manual_seed(0)
    net = ScoringNet(hidden=(8,))
    model = build_model({"name": "vgg", "stages": [[4], [8]], "fc_features": [16]}).eval()  # not the net's model
    split = image_split(64, 0)
    rows = criteria_comparison(
        {"scoring_net": net}, model, split, image_split(32, 1), [0.3, 0.6], seed=0, feature_images=32
    )
    assert [(r["budget"], r["method"]) for r in rows] == [
        (0.3, "scoring_net"),
        (0.3, "l1"),
        (0.6, "scoring_net"),
        (0.6, "l1"),
    ]
    assert all(r["flops_ratio"] <= r["budget"] + 1e-9 and 0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    assert rows[0]["units_kept"] < rows[2]["units_kept"]  # a larger budget keeps more units
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        criteria_comparison({"scoring_net": net}, model, split, split, [1.5], seed=0)
