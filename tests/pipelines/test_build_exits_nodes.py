import pytest
import torch
from matplotlib.figure import Figure
from pydantic import ValidationError

from evoprune.core.models import build_model
from evoprune.pipelines.build_exits.nodes import (
    BuildExitsParams,
    attach_exit_heads,
    evaluate_exits,
    initial_multi_exit_weights,
    measure_latency,
    plot_early_exit_tradeoff,
    plot_exit_accuracy,
    train_exit_heads,
)
from tests.conftest import image_split as _split


@pytest.fixture(scope="module")
def trained():
    params = BuildExitsParams(
        training={"epochs": 2, "batch_size": 32, "optimizer": "adamw", "learning_rate": 3e-3},
        thresholds=[0.3, 0.6, 0.9],
        latency={"batch_size": 50, "repeats": 2},
    )
    dense = build_model({"name": "lenet5"})
    model = attach_exit_heads(dense, params, seed=0)
    assert model.backbone is not dense, "the node must not share (and so mutate) the dense model"
    model, history = train_exit_heads(model, _split(300, 0), _split(100, 1), params, seed=0, device="cpu")
    return model, params, history


def test_evaluate_exits_tables_are_consistent(trained):
    model, params, history = trained
    summary, table, operating, metrics = evaluate_exits(model, _split(100, 1), _split(100, 2), params, device="cpu")
    assert summary["exit"].tolist() == [1, 2] and summary["after"].tolist() == ["stages.0", "output"]
    assert table["threshold"].tolist() == [0.3, 0.6, 0.9, 1.0]
    shares = table[["test_share_exit1", "test_share_exit2"]].to_numpy()
    expected = shares @ summary["flops_policy"].to_numpy()
    assert table["test_expected_flops"].to_numpy() == pytest.approx(expected)
    assert table["test_accuracy"].iloc[-1] == pytest.approx(summary["test_accuracy"].iloc[-1])
    assert operating["threshold"] in table["threshold"].tolist()
    assert metrics["exit1.flops"]["value"] == summary["flops"].iloc[0]
    assert isinstance(plot_exit_accuracy(summary), Figure)
    assert isinstance(plot_early_exit_tradeoff(table, summary, operating), Figure)
    latency = measure_latency(model, _split(100, 2), operating, params, device="cpu")
    assert latency["latency.dense_ms"]["value"] > 0 and latency["latency.speedup"]["value"] > 0


def test_no_exits_pass_the_dense_network_on_as_the_one_exit():
    params = BuildExitsParams(exit_after=[], thresholds=[0.5, 0.9], latency={"batch_size": 20, "repeats": 1})
    dense, init = build_model({"name": "lenet300"}), build_model({"name": "lenet300"})
    model = attach_exit_heads(dense, params, seed=0)
    assert model is not dense and not hasattr(model, "exit_heads")
    assert initial_multi_exit_weights(init, model).state_dict().keys() == init.state_dict().keys()
    trained, history = train_exit_heads(model, _split(20, 0), _split(20, 1), params, seed=0, device="cpu")
    assert trained is model and history == {}
    summary, table, operating, metrics = evaluate_exits(model, _split(50, 1), _split(50, 2), params, device="cpu")
    assert summary["after"].tolist() == ["output"] and summary["flops"].iloc[0] == summary["flops_policy"].iloc[0]
    assert (table["test_share_exit1"] == 1.0).all() and (table["test_flops_saving"] == 0.0).all()
    assert operating["test_accuracy_drop"] == 0.0 and metrics["exit1.flops"]["value"] > 0
    latency = measure_latency(model, _split(50, 2), operating, params, device="cpu")
    assert latency["latency.speedup"]["value"] == 1.0 and latency["latency.dense_ms"]["value"] > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"thresholds": [0.5, 0.0]}, r"thresholds must lie in \(0, 1\]"),
        ({"thresholds": [1.2]}, r"thresholds must lie in \(0, 1\]"),
        ({"exit_after": [0]}, "exit_after"),
        ({"mode": "frozen"}, "mode"),
        ({"criterion": "margin"}, "criterion"),
        ({"loss_weights": [1.0, -1.0]}, "loss_weights"),
    ],
)
def test_bad_build_exits_params_name_the_key(override, message):
    with pytest.raises(ValidationError, match=message):
        BuildExitsParams(**override)


def test_loss_weights_must_match_the_exits():
    params = BuildExitsParams(mode="joint", loss_weights=[1.0, 1.0, 1.0], training={"epochs": 1})
    model = attach_exit_heads(build_model({"name": "lenet5"}), params, seed=0)
    with pytest.raises(ValueError, match="`loss_weights` has 3 entries but the model has 2 exits"):
        train_exit_heads(model, _split(40, 0), None, params, seed=0, device="cpu")


def test_initial_multi_exit_weights_pair_theta0_with_the_initial_heads():
    params = BuildExitsParams(training={"epochs": 1})
    torch.manual_seed(0)
    dense_init = build_model({"name": "lenet5"})
    trained = build_model({"name": "lenet5"})  # stands for the trained backbone: other weights
    untrained = attach_exit_heads(trained, params, seed=0)
    theta0 = initial_multi_exit_weights(dense_init, untrained)
    assert all(torch.equal(v, dense_init.state_dict()[k]) for k, v in theta0.backbone.state_dict().items())
    assert all(torch.equal(v, untrained.exit_heads.state_dict()[k]) for k, v in theta0.exit_heads.state_dict().items())
    assert not torch.equal(untrained.backbone.stages[0][0].weight, dense_init.stages[0][0].weight)  # input untouched
