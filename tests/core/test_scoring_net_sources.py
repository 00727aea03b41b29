"""Extra source networks for the Scoring Net: trained networks of the run's architecture on their own subsets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evoprune.core.exits import attach_exits
from evoprune.core.models import build_model
from evoprune.core.models.adapter import model_spec
from evoprune.core.scoring_net import (
    ExtraSourcesConfig,
    GatesStageConfig,
    ScoringNetConfig,
    extra_source_networks,
    train_scoring_net_with_sources,
)
from evoprune.core.scoring_net.sources import dense_spec, first_images
from evoprune.core.train import accuracy_per_exit
from tests.conftest import image_split

FAST = {"epochs": 3, "batch_size": 32, "optimizer": "adamw", "learning_rate": 3e-3, "schedule": "constant"}


@pytest.fixture(scope="module")
def multi_exit_lenet():
    torch.manual_seed(0)
    return attach_exits(build_model({"name": "lenet5"}), [1]).eval()


def test_the_sources_are_trained_networks_of_the_runs_backbone_on_their_own_subsets(multi_exit_lenet):
    split, test = image_split(400, seed=0), image_split(200, seed=1)
    cfg = ExtraSourcesConfig(count=2, train_images=150, training=FAST)
    sources, seconds = extra_source_networks(multi_exit_lenet, split, cfg, seed=3)
    assert len(sources) == 2 and seconds > 0
    for network, subset in sources:  # the plain backbone (no exits), trained on 150 images of the split
        assert model_spec(network) == {**dense_spec(multi_exit_lenet)} and model_spec(network)["name"] == "lenet5"
        assert len(subset["labels"]) == 150 and accuracy_per_exit(network, test, torch.device("cpu"))[-1] > 0.5
    (first, first_subset), (second, second_subset) = sources
    assert not torch.equal(first_subset["labels"], second_subset["labels"])  # each its own shuffle (seed 103, 104)
    assert torch.equal(first_subset["images"], first_images(split, 150, 3 + 100)["images"])
    weights = [list(n.state_dict().values()) for n in (first, second)]
    assert any(not torch.equal(a, b) for a, b in zip(*weights, strict=True))
    again, _ = extra_source_networks(multi_exit_lenet, split, cfg, seed=3)  # same seed, same networks
    assert all(torch.equal(a, b) for a, b in zip(weights[0], again[0][0].state_dict().values(), strict=True))


def test_another_spec_keeps_the_runs_classes_and_no_count_trains_nothing(multi_exit_lenet):
    split = image_split(200, seed=0)
    cfg = ExtraSourcesConfig(count=1, model={"name": "lenet300"}, train_images=100, training={**FAST, "epochs": 1})
    [(network, _)], _ = extra_source_networks(multi_exit_lenet, split, cfg, seed=0)
    assert model_spec(network)["name"] == "lenet300" and model_spec(network)["num_classes"] == 10
    assert extra_source_networks(multi_exit_lenet, split, ExtraSourcesConfig(count=0), seed=0) == ([], 0.0)
    widths = [{"name": "lenet5", "conv_channels": [4, 8]}, {"name": "lenet5", "conv_channels": [8, 4]}]
    several = cfg.model_copy(update={"count": 3, "model": widths})  # network k builds spec k mod 2
    networks, _ = extra_source_networks(multi_exit_lenet, split, several, seed=0)
    assert [model_spec(n)["conv_channels"] for n, _ in networks] == [[4, 8], [8, 4], [4, 8]]


def test_an_empty_split_and_unknown_keys_are_refused_before_training(multi_exit_lenet):
    empty = {"images": torch.zeros(0, 28, 28, dtype=torch.uint8), "labels": torch.zeros(0, dtype=torch.long)}
    with pytest.raises(ValueError, match="training split is empty"):
        extra_source_networks(multi_exit_lenet, empty, ExtraSourcesConfig(count=1), seed=0)
    with pytest.raises(ValueError, match="extra_forbidden|Extra inputs"):
        ScoringNetConfig(extra_sources={"count": 1, "networks": 2})
    with pytest.raises(ValueError, match="lenet7"):  # a misspelt architecture, before any training
        ExtraSourcesConfig(model=[{"name": "lenet5"}, {"name": "lenet7"}])
    with pytest.raises(ValueError, match="empty list"):
        ExtraSourcesConfig(model=[])


def test_training_with_sources_refuses_a_model_without_units_before_training_any_source():
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    model.spec = {"name": "lenet300", "in_channels": 1, "input_size": 28, "num_classes": 10}
    empty = {"images": torch.zeros(0, 28, 28, dtype=torch.uint8), "labels": torch.zeros(0, dtype=torch.long)}
    cfg = ScoringNetConfig(extra_sources={"count": 1})  # training a source on the empty split would fail otherwise
    with pytest.raises(ValueError, match="no prunable unit"):
        train_scoring_net_with_sources(model, empty, cfg, seed=0)


def test_training_with_sources_records_their_seconds_and_trains_on_them(multi_exit_lenet):
    split = image_split(300, seed=0)
    stages = [GatesStageConfig(steps=2, batch_size=32)]
    sources = ExtraSourcesConfig(count=1, train_images=100, training={**FAST, "epochs": 1})
    cfg = ScoringNetConfig(stages=stages, feature_images=32, eval_budgets=[], extra_sources=sources)
    result = train_scoring_net_with_sources(multi_exit_lenet, split, cfg, seed=0)
    alone = train_scoring_net_with_sources(
        multi_exit_lenet, split, cfg.model_copy(update={"extra_sources": ExtraSourcesConfig(count=0)}), seed=0
    )
    assert result.history["extra_sources_seconds"] > 0 == alone.history["extra_sources_seconds"]
    assert not torch.equal(result.net.scores(result.features), alone.net.scores(alone.features))  # the source counted
