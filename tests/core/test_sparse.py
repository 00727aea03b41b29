"""Dynamic sparse training: the estimator, thresholds, reset rule, controller, structured form, baselines."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from evoprune.core.exits import attach_exits
from evoprune.core.masking import prune_physically
from evoprune.core.models import build_model
from evoprune.core.models.adapter import input_shape
from evoprune.core.sparse import (
    ControllerConfig,
    SparseTrainingConfig,
    SparsityController,
    StructuredThresholds,
    UnstructuredThresholds,
    long_tailed_derivative,
    nonzero_flops,
    step,
    train_sparse,
    weight_sparsity,
)
from evoprune.core.sparse.compare import method_metrics
from evoprune.core.sparse.magnitude import bake, global_magnitude_prune
from evoprune.core.train import TrainConfig, TrainingDivergedError
from evoprune.core.units import build_layout
from tests.conftest import image_split

CPU = torch.device("cpu")
SMALL_VGG = {"name": "vgg", "stages": [[4], [8]], "fc_features": [16]}


def _config(mode="unstructured", epochs=2, **kwargs) -> SparseTrainingConfig:
    training = TrainConfig(epochs=epochs, batch_size=32, learning_rate=0.01, schedule="constant", weight_decay=0.0)
    return SparseTrainingConfig(mode=mode, training=training, **kwargs)


def test_the_estimator_gradient_is_the_long_tailed_formula_at_sample_points():
    x = torch.tensor([-1.5, -1.0, -0.7, -0.4, -0.1, 0.0, 0.2, 0.4, 0.41, 0.9, 1.0, 1.2], requires_grad=True)
    out = step(x)
    assert out.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]  # step(0) = 0: strictly above the threshold
    out.backward(torch.full_like(x, 2.0))
    expected = [0.0, 0.4, 0.4, 2 - 1.6, 2 - 0.4, 2.0, 2 - 0.8, 2 - 1.6, 0.4, 0.4, 0.4, 0.0]
    assert torch.allclose(x.grad, 2.0 * torch.tensor(expected))
    assert torch.allclose(long_tailed_derivative(x.detach()), torch.tensor(expected))


def test_a_weight_below_its_threshold_is_masked_and_still_receives_a_gradient():
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.05, 0.5, -0.6], [0.3, -0.02, 0.8]]))
    thresholds = UnstructuredThresholds(layer)
    with torch.no_grad():
        thresholds.masks[""].threshold.fill_(0.1)
    assert thresholds.binary_masks()[""].tolist() == [[False, True, True], [True, False, True]]
    assert torch.equal(layer.weight[0, 0], torch.tensor(0.0))  # the layer computes with the masked weight
    layer(torch.ones(4, 3)).sum().backward()
    original = layer.parametrizations.weight.original
    assert original.grad[0, 0] != 0 and original.grad[1, 1] != 0  # can come back
    assert (thresholds.masks[""].threshold.grad != 0).all()
    assert thresholds.kept() == {"": (4, 6)}


def test_the_reset_rule_sets_the_thresholds_of_a_collapsed_layer_to_zero():
    model = build_model({"name": "lenet5"})
    thresholds = UnstructuredThresholds(model)
    names = list(thresholds.masks)
    with torch.no_grad():
        thresholds.masks[names[0]].threshold.fill_(100.0)  # keeps nothing
        thresholds.masks[names[1]].threshold.fill_(1e-4)  # keeps almost everything
    assert thresholds.reset(0.01) == [names[0]]
    assert (thresholds.masks[names[0]].threshold == 0).all() and (thresholds.masks[names[1]].threshold == 1e-4).all()


def test_unstructured_training_learns_sparse_masks_reproducibly():
    data = image_split(256, 0)

    def run(seed: int):
        torch.manual_seed(0)
        model = attach_exits(build_model({"name": "lenet5"}), [1])
        return train_sparse(model, data, data, _config(alpha=5e-2), CPU, seed)

    first, second = run(1), run(1)
    assert first.weight_masks.keys() == second.weight_masks.keys()
    assert all(torch.equal(first.weight_masks[k], second.weight_masks[k]) for k in first.weight_masks)
    assert any("exit_heads" in name for name in first.weight_masks)  # exit heads are masked too
    kept = first.history["kept_share"]
    assert len(kept) == 2 and kept[-1] < 1.0 and len(first.history["kept.backbone.stages.0.0"]) == 2
    for name, mask in first.weight_masks.items():  # the model computes with zeros where the mask drops
        layer = dict(first.model.named_modules())[name]
        assert torch.all(layer.weight[~mask] == 0)
    assert 1.0 - weight_sparsity(first.model)["total"] == pytest.approx(kept[-1], abs=1e-9)


def test_the_controller_reaches_the_target_share_kept():
    data = image_split(512, 0)
    torch.manual_seed(0)
    model = build_model({"name": "lenet5"})
    cfg = _config(epochs=8, controller=ControllerConfig(target_kept=0.2, every=1))
    cfg.training.batch_size = 16
    result = train_sparse(model, data, None, cfg, CPU, 0)
    kept = result.history["kept_share"]
    assert kept[0] > 0.5 and kept[-1] == pytest.approx(0.2, abs=0.01)  # from dense to the target, within 1 pt
    assert result.resets == 0 and result.history["alpha"][-1] < cfg.controller.max_alpha  # gentle near the target


def test_the_ramped_target_falls_cubically_from_all_kept_to_the_target():
    controller = SparsityController(ControllerConfig(target_kept=0.1, ramp=0.5))
    targets = [controller.target(p) for p in (0.0, 0.1, 0.25, 0.4, 0.5, 0.9)]
    assert targets[0] == 1.0 and targets[-2:] == [0.1, 0.1]
    assert targets[2] == pytest.approx(0.1 + 0.9 * 0.5**3)  # Zhu & Gupta: t + (1 - t)(1 - p / ramp)^3
    assert all(a > b for a, b in zip(targets[:5], targets[1:5], strict=False))
    assert SparsityController(ControllerConfig(target_kept=0.1)).target(0.0) == 0.1  # no ramp: the target at once


def test_a_ramped_controller_follows_the_gradual_target_and_ends_at_it():
    data = image_split(512, 0)
    torch.manual_seed(0)
    controller = ControllerConfig(target_kept=0.2, max_alpha=0.2, every=1, ramp=0.6)
    cfg = _config(epochs=8, controller=controller)
    cfg.training.batch_size = 16  # 32 steps per epoch
    kept = train_sparse(build_model({"name": "lenet5"}), data, None, cfg, CPU, 0).history["kept_share"]
    targets = [SparsityController(controller).target((epoch + 1) / 8) for epoch in range(8)]
    assert kept[0] > 0.5  # after the first epoch most weights are still kept
    assert kept == pytest.approx(targets, abs=0.05)  # each epoch ends near the ramp's target
    assert kept[-1] == pytest.approx(0.2, abs=0.01)


def test_structured_masks_prune_physically_to_the_masked_models_logits():
    data = image_split(128, 0)
    torch.manual_seed(0)
    model = attach_exits(build_model({"name": "resnet_cifar", "depth": 8, "width": 4, "input_size": 16}), ["layer1"])
    data = {"images": data["images"][:, 6:22, 6:22].contiguous(), "labels": data["labels"]}
    cfg = _config("structured", epochs=3, controller=ControllerConfig(target_kept=0.5, max_alpha=10.0, every=1))
    cfg.training.batch_size = 16
    result = train_sparse(model, data, None, cfg, CPU, 0)
    mask = result.unit_mask
    layout = build_layout(result.model, input_shape(result.model))
    assert 0 < mask.sum() < layout.num_bits
    hooks = StructuredThresholds(result.model, layout)
    with torch.no_grad():  # thresholds that reproduce `mask` exactly: keep above 0, drop above every magnitude
        for g in layout.groups:
            hooks.thresholds_by_group[g.name].copy_(
                torch.where(torch.as_tensor(mask[g.offset : g.offset + g.size]), -1.0, 1e9)
            )
    x = torch.rand(5, *input_shape(result.model)) * 2 - 1
    with torch.no_grad():
        masked = result.model.eval()(x)
    hooks.remove()
    pruned = prune_physically(result.model, layout, mask, input_shape(result.model))
    with torch.no_grad():
        physical = pruned(x)
    for a, b in zip(masked, physical, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_magnitude_pruning_keeps_the_share_and_nonzero_flops_count_only_kept_weights():
    torch.manual_seed(0)
    model = build_model({"name": "lenet5"})
    pruned = bake(global_magnitude_prune(model, 0.1))
    assert 1.0 - weight_sparsity(pruned)["total"] == pytest.approx(0.1, abs=1e-3)
    dense_flops, sparse_flops = nonzero_flops(model)["total"], nonzero_flops(pruned)["total"]
    assert 0 < sparse_flops < 0.5 * dense_flops
    with pytest.raises(ValueError, match="kept_share must lie in"):
        global_magnitude_prune(model, 0.0)


def test_a_diverging_loss_stops_with_the_training_loops_error():
    data = image_split(64, 0)
    model = build_model({"name": "lenet5"})
    with torch.no_grad():
        model.head[-1].weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"dst\[unstructured\]: loss is nan at epoch 1.*learning_rate"):
        train_sparse(model, data, None, _config(), CPU, 0)


def test_a_model_without_conv_linear_or_lstm_layers_is_refused():
    with pytest.raises(ValueError, match="no conv, linear or LSTM layer"):
        UnstructuredThresholds(nn.Sequential(nn.ReLU()))


def test_structured_chromosome_follows_the_thresholds():
    torch.manual_seed(0)
    model = build_model(SMALL_VGG)
    layout = build_layout(model, input_shape(model))
    hooks = StructuredThresholds(model, layout)
    assert hooks.chromosome().all() and hooks.kept_share() == pytest.approx(1.0)
    first = layout.groups[0]
    with torch.no_grad():
        hooks.thresholds_by_group[first.name].fill_(1e9)
    assert not hooks.chromosome()[first.offset : first.offset + first.size].any()
    assert hooks.reset(0.01) == [first.name] and np.asarray(hooks.chromosome()).all()


def test_method_metrics_name_replicate_seeds_and_leave_the_run_seed_and_seedless_rows_as_before():
    table = pd.DataFrame(
        [
            {"method": "dst_unstructured", "seed": np.nan, "test_accuracy": 0.80, "weights_kept": 0.1},
            {"method": "dst_structured", "seed": 42, "test_accuracy": 0.85, "weights_kept": np.nan},
            {"method": "dst_structured", "seed": 43, "test_accuracy": 0.86, "weights_kept": np.nan},
            {"method": "l1_at_dst_flops", "seed": 43, "test_accuracy": 0.84, "weights_kept": np.nan},
        ]
    )
    metrics = method_metrics(table, run_seed=42)
    assert metrics["dst_unstructured.test_accuracy"] == 0.80 and metrics["dst_unstructured.weights_kept"] == 0.1
    assert metrics["dst_structured.test_accuracy"] == 0.85  # the run's seed keeps the single-seed name
    assert metrics["dst_structured.seed43.test_accuracy"] == 0.86
    assert metrics["l1_at_dst_flops.seed43.test_accuracy"] == 0.84 and "l1_at_dst_flops.test_accuracy" not in metrics
    assert "dst_structured.weights_kept" not in metrics  # empty cells are left out
    assert not any(k.endswith((".seed", ".member")) for k in metrics)  # labels, not measurements
    one_seed = table.iloc[:2]
    assert method_metrics(one_seed, run_seed=42) == method_metrics(one_seed)  # one seed: the names of before
