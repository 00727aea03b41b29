"""Dynamic sparse training on an LSTM: thresholds on its gate matrices (unstructured), on its hidden units
(structured, equal to the shrunk LSTM), the magnitude baseline and the sparse counts."""

import numpy as np
import pytest
import torch
from torch import nn

from evoprune.core.masking import prune_physically
from evoprune.core.models import build_model
from evoprune.core.sparse import (
    ControllerConfig,
    SparseTrainingConfig,
    StructuredThresholds,
    UnstructuredThresholds,
    nonzero_flops,
    train_sparse,
    weight_sparsity,
)
from evoprune.core.sparse.magnitude import bake, global_magnitude_prune
from evoprune.core.train import TrainConfig
from evoprune.core.units import build_layout
from tests.conftest import image_split

CPU = torch.device("cpu")
SHAPE = (1, 28, 28)


def _lstm_model(layers: int = 1, hidden: int = 12) -> nn.Module:
    torch.manual_seed(0)
    return build_model({"name": "lstm_seq", "hidden_size": hidden, "num_layers": layers}).eval()


def _images(n: int = 5) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("layers", [1, 2])
def test_unstructured_thresholds_mask_every_gate_matrix_and_the_fused_lstm_uses_them(layers):
    model = _lstm_model(layers)
    x = _images()
    thresholds = UnstructuredThresholds(model)
    lstm_names = [n for n in thresholds.masks if ".weight_" in n]
    assert len(lstm_names) == 2 * layers  # weight_ih_l{k} and weight_hh_l{k} of every layer, plus the head
    with torch.no_grad():
        for name in lstm_names:
            thresholds.masks[name].threshold.fill_(0.1)
    masked = {n: m.detach().clone() for n, m in thresholds.binary_masks().items()}
    assert 0.0 < np.mean([masked[n].float().mean().item() for n in lstm_names]) < 1.0
    out = model(x)

    reference = _lstm_model(layers)  # the same weights, masked by hand
    with torch.no_grad():
        for name in lstm_names:
            attribute = name.rsplit(".", 1)[1]
            getattr(reference.lstm, attribute).mul_(masked[name])
    assert torch.allclose(out, reference(x), atol=1e-6)

    out.sum().backward()
    assert all(thresholds.masks[n].threshold.grad.abs().sum() > 0 for n in lstm_names)
    kept = thresholds.kept()
    assert kept[lstm_names[0]] == (int(masked[lstm_names[0]].sum()), masked[lstm_names[0]].numel())

    thresholds.remove()  # zeros baked into plain tensors of a plain nn.LSTM
    assert type(model.lstm) is nn.LSTM
    assert torch.allclose(model(x), reference(x), atol=1e-6)
    assert weight_sparsity(model)[lstm_names[0]] == pytest.approx(1 - masked[lstm_names[0]].float().mean().item())


@pytest.mark.parametrize("layers", [1, 2])
def test_structured_thresholds_on_hidden_units_equal_the_shrunk_lstm(layers):
    model = _lstm_model(layers)
    x = _images()
    dense = model(x).detach()
    layout = build_layout(model, SHAPE)
    thresholds = StructuredThresholds(model, layout)
    with torch.no_grad():
        for g in layout.groups:
            thresholds.thresholds_by_group[g.name].fill_(1.0)  # drops the units of below-average magnitude
    bits = thresholds.chromosome()
    assert 0 < bits.sum() < layout.num_bits
    masked = model(x)
    masked.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in thresholds.thresholds())

    thresholds.remove()
    assert torch.allclose(model(x), dense, atol=1e-6)  # the dense network again
    shrunk = prune_physically(model, layout, layout.repair(bits[None])[0], SHAPE)
    assert sum(p.numel() for p in shrunk.parameters()) < sum(p.numel() for p in model.parameters())
    assert torch.allclose(masked.detach(), shrunk(x), atol=1e-5)
    assert thresholds.kept_share() == pytest.approx(float(layout.cost(bits[None])["flops"][0] / layout.dense_flops))


def test_magnitude_pruning_of_an_lstm_keeps_the_share_over_its_gate_matrices_and_head():
    model = _lstm_model(hidden=16)
    pruned = global_magnitude_prune(model, 0.1)
    pruned(_images())  # the fused LSTM runs on the pruned weights
    baked = bake(pruned)
    assert type(baked.lstm) is nn.LSTM and not hasattr(baked.lstm, "weight_hh_l0_orig")
    sparsity = weight_sparsity(baked)
    assert 1.0 - sparsity["total"] == pytest.approx(0.1, abs=1e-3)
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l0"} <= set(sparsity)
    dense, sparse = nonzero_flops(model), nonzero_flops(baked)
    assert dense["lstm.weight_hh_l0"] == 2 * 28 * 4 * 16 * 16  # 2 FLOPs per weight per step, 28 steps
    assert sparse["lstm.weight_hh_l0"] == 2 * 28 * int((baked.lstm.weight_hh_l0 != 0).sum())
    assert sparse["total"] < 0.2 * dense["total"]


def test_sparse_training_of_an_lstm_steers_its_kept_weights_and_bakes_zeros():
    data = image_split(256, 0)
    model = _lstm_model(hidden=16)
    training = TrainConfig(epochs=2, batch_size=32, optimizer="adamw", learning_rate=0.01, weight_decay=0.0)
    controller = ControllerConfig(target_kept=0.3, max_alpha=0.05, band=0.05, every=2)
    cfg = SparseTrainingConfig(training=training, alpha=0.05, controller=controller)
    result = train_sparse(model, data, data, cfg, CPU, seed=0)
    kept = 1.0 - weight_sparsity(result.model)["total"]
    assert kept < 0.9  # the thresholds rose: weights of the gate matrices are gone
    assert kept == pytest.approx(result.history["kept_share"][-1], abs=1e-6)
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l0"} <= {row["layer"] for row in result.per_layer}
    assert torch.equal(result.weight_masks["lstm.weight_hh_l0"], result.model.lstm.weight_hh_l0 != 0)
    assert type(result.model.lstm) is nn.LSTM
    assert nonzero_flops(result.model)["total"] < nonzero_flops(_lstm_model(hidden=16))["total"]


def test_structured_sparse_training_of_an_lstm_gives_a_repaired_unit_mask():
    data = image_split(128, 0)
    model = _lstm_model(layers=2, hidden=12)
    training = TrainConfig(epochs=1, batch_size=32, optimizer="adamw", learning_rate=0.01, weight_decay=0.0)
    cfg = SparseTrainingConfig(mode="structured", training=training, alpha=0.5)
    result = train_sparse(model, data, data, cfg, CPU, seed=0)
    layout = build_layout(result.model, SHAPE)
    assert result.unit_mask.shape == (layout.num_bits,)
    for g in layout.groups:
        assert result.unit_mask[g.offset : g.offset + g.size].any()
    assert not any(hasattr(m, "parametrizations") for m in result.model.modules())  # dense weights back
