"""Transfer of a Scoring Net to other models, datasets and class splits (core/scoring_net/transfer.py)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from evoprune.core.baselines import mask_within_budget
from evoprune.core.finetune_pool import ParallelParams
from evoprune.core.importance import GroupL1
from evoprune.core.masking import prune_physically
from evoprune.core.models import build_model
from evoprune.core.models.adapter import input_shape
from evoprune.core.scoring_net import (
    ExtraSourcesConfig,
    GatesStageConfig,
    RefineStageConfig,
    ScoringNet,
    ScoringNetConfig,
    TransferConfig,
    TransferTarget,
    class_subset,
    criteria_comparison,
    train_scoring_net,
    transfer_to_target,
)
from evoprune.core.scoring_net.transfer import TransferFinetune
from evoprune.core.train import TrainConfig, evaluate, train
from evoprune.core.units import build_layout
from tests.conftest import image_split

FAST = {"epochs": 1, "batch_size": 64, "optimizer": "adamw", "learning_rate": 3e-3}
NET_CONFIG = ScoringNetConfig(
    stages=[GatesStageConfig(steps=4, batch_size=32), RefineStageConfig(steps=2, batch_size=32)],
    feature_images=64,
    eval_budgets=[0.5],
    extra_sources=ExtraSourcesConfig(count=1, train_images=100, training=FAST),  # the class split's source net
)


def test_a_class_subset_keeps_those_classes_relabelled_in_their_order():
    split = {"images": torch.arange(6)[:, None], "labels": torch.tensor([7, 0, 5, 9, 5, 3])}
    subset = class_subset(split, [9, 5])
    assert subset["images"][:, 0].tolist() == [2, 3, 4] and subset["labels"].tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match=r"no sample of classes \[1, 2\]"):
        class_subset(split, [1, 2])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": {"name": "lenet5", "num_classes": 5}}, "leave num_classes out"),
        ({"dataset": "digits", "source_classes": [0, 1]}, "needs dataset fashion_mnist"),
        ({"classes": [5, 6, 7], "source_classes": [0, 1]}, "same number of classes"),
        ({"classes": [5, 5]}, "at least 2 distinct labels"),
        ({"classes": [3, 10]}, "in 0..9"),
        ({"name": "with space"}, "pattern"),
    ],
)
def test_a_target_that_cannot_be_run_is_refused_with_what_to_change(fields, message):
    with pytest.raises(ValidationError, match=message):
        TransferTarget(**{"name": "t", **fields})
    with pytest.raises(ValidationError, match=r"\(0, 1\]"):
        TransferConfig(budgets=[0.0])


def test_adapting_starts_from_the_given_net_and_leaves_it_unchanged(tiny_lenet):
    model, split = tiny_lenet
    torch.manual_seed(3)
    start = ScoringNet(hidden=(8,))
    before = {k: v.clone() for k, v in start.state_dict().items()}
    still = NET_CONFIG.model_copy(update={"stages": [GatesStageConfig(steps=1, learning_rate=1e-12)]})
    adapted = train_scoring_net(model, split, still, seed=0, initial=start).net
    fresh = train_scoring_net(model, split, still, seed=0).net
    assert all(torch.equal(v, start.state_dict()[k]) for k, v in before.items())  # the given net is not touched
    assert adapted.hidden == (8,) and fresh.hidden == NET_CONFIG.hidden  # the initial net's widths win
    for k, v in adapted.state_dict().items():
        assert torch.allclose(v, before[k], atol=1e-9)


@pytest.fixture(scope="module")
def tiny_lenet():
    torch.manual_seed(0)
    return build_model({"name": "lenet5"}).eval(), image_split(256, 0)


def test_a_class_split_target_compares_zero_shot_adapted_native_and_l1_at_each_budget():
    fashion = (image_split(400, 0), image_split(160, 1))
    target = TransferTarget(
        name="split", classes=[5, 6, 7, 8, 9], source_classes=[0, 1, 2, 3, 4], training=FAST, train_images=150
    )
    cfg = TransferConfig(budgets=[0.3, 0.7], adaptation_steps=2, targets=[target])
    rows = transfer_to_target(ScoringNet(), NET_CONFIG, target, fashion, cfg, seed=0)
    methods = ["scoring_net_zero_shot", "scoring_net_adapted", "scoring_net_native", "l1"]
    assert [(r["budget"], r["method"]) for r in rows] == [(b, m) for b in (0.3, 0.7) for m in methods]
    assert {r["source"] for r in rows} == {"classes 0,1,2,3,4"} and {r["target"] for r in rows} == {"split"}
    for r in rows:
        assert r["flops_ratio"] <= r["budget"] + 1e-9 and 0.0 <= r["test_accuracy"] <= 1.0
        assert r["margin_vs_l1_pt"] == pytest.approx(
            100
            * (
                r["test_accuracy"]
                - next(x for x in rows if x["method"] == "l1" and x["budget"] == r["budget"])["test_accuracy"]
            )
        )
    seconds = {r["method"]: r["net_seconds"] for r in rows}
    assert (
        seconds["scoring_net_zero_shot"] == 0.0 and seconds["scoring_net_adapted"] > 0 < seconds["scoring_net_native"]
    )
    again = transfer_to_target(ScoringNet(), NET_CONFIG, target, fashion, cfg, seed=0)  # same seed, same rows
    assert [(r["units_kept"], r["test_accuracy"]) for r in again] == [
        (r["units_kept"], r["test_accuracy"]) for r in rows
    ]


def test_the_digits_target_needs_no_download_and_has_no_adapted_rows_without_adaptation_steps():
    fashion = (image_split(64, 0), image_split(32, 1))  # unused by a digits target
    target = TransferTarget(name="digits", dataset="digits", training=FAST, train_images=200)
    cfg = TransferConfig(budgets=[0.5], adaptation_steps=0, native_reference=False, test_images=100, targets=[target])
    rows = transfer_to_target(ScoringNet(), NET_CONFIG, target, fashion, cfg, seed=0)
    assert [r["method"] for r in rows] == ["scoring_net_zero_shot", "l1"]
    assert rows[0]["dataset"] == "digits" and rows[0]["source"] == "run" and 0.0 < rows[0]["dense_accuracy"] <= 1.0


def test_fine_tuned_rows_equal_pruning_and_training_each_mask_by_hand(tiny_lenet):
    model, split = tiny_lenet
    test = image_split(96, 3)
    recipe = TrainConfig(**FAST)
    finetune = TransferFinetune(recipe, split, ParallelParams(workers=1))
    rows = criteria_comparison({}, model, split, test, [0.4, 0.7], seed=5, feature_images=64, finetune=finetune)
    assert [r["method"] for r in rows] == ["l1", "l1"]
    layout = build_layout(model, input_shape(model))
    for row in rows:
        mask = mask_within_budget(layout, GroupL1(input_shape(model))(model, layout), row["budget"])
        by_hand = prune_physically(model, layout, mask, input_shape(model))
        train(by_hand, split, None, recipe, torch.device("cpu"), 5, "by hand")
        assert row["finetuned_accuracy"] == evaluate(by_hand, test, torch.device("cpu"))
    untuned = criteria_comparison({}, model, split, test, [0.4, 0.7], seed=5, feature_images=64)
    assert [r["test_accuracy"] for r in untuned] == [r["test_accuracy"] for r in rows]
    assert all("finetuned_accuracy" not in r for r in untuned)


def test_a_target_with_a_finetune_recipe_reports_margins_over_l1_after_fine_tuning():
    fashion = (image_split(64, 0), image_split(32, 1))
    target = TransferTarget(name="digits", dataset="digits", training=FAST, train_images=200)
    cfg = TransferConfig(
        budgets=[0.5], adaptation_steps=0, native_reference=False, test_images=100, targets=[target], finetune=FAST
    )
    rows = transfer_to_target(
        ScoringNet(), NET_CONFIG, target, fashion, cfg, seed=0, parallel=ParallelParams(workers=1)
    )
    zero_shot, l1 = rows
    assert zero_shot["finetuned_margin_vs_l1_pt"] == pytest.approx(
        100 * (zero_shot["finetuned_accuracy"] - l1["finetuned_accuracy"])
    )
    assert l1["finetuned_margin_vs_l1_pt"] == 0.0 and 0.0 < l1["finetuned_accuracy"] <= 1.0
