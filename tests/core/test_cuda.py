"""The core on a GPU, checked against the CPU: the tiled evaluator (chosen by the device) and its bf16 ranking
mode, training, a mask search, a physically pruned member's fine-tune and latency tables, all on CUDA.

Skipped without CUDA (CI has none). Free of Kedro and MLflow, so that a GPU machine with PyTorch and the core's
own dependencies runs it: ``python -m pytest --noconftest tests/core/test_cuda.py``.
"""

import copy

import numpy as np
import pytest
import torch

from evoprune.core.data import images_to_float
from evoprune.core.exits import attach_exits
from evoprune.core.finetune import finetune_member
from evoprune.core.latency import LatencySettings, measure_masks_ms, profile_latency
from evoprune.core.masking import SlicedEvaluator, TiledEvaluator, mask_evaluator
from evoprune.core.models import build_model
from evoprune.core.reinit import VARIANTS, reinit_model
from evoprune.core.search.api import search_pruning_masks
from evoprune.core.search.run import SearchConfig
from evoprune.core.sparse import SparseTrainingConfig, train_sparse
from evoprune.core.train import TrainConfig, as_exit_list, evaluate, train
from evoprune.core.units import build_layout
from tests.fake_images import image_split

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SHAPE = (1, 28, 28)
RECIPE = TrainConfig(epochs=6, batch_size=50)


def _masks(layout, k: int, seed: int, keep: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return layout.repair(rng.random((k, layout.num_bits)) < keep)


def _lenet5_with_exit(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return attach_exits(build_model({"name": "lenet5"}), [1])


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """LeNet-5 with one exit trained on the CPU: the reference the CUDA runs are compared with."""
    model = _lenet5_with_exit(0)
    train(model, image_split(600, 0), None, RECIPE, CPU, seed=0)
    return model.cpu().eval()


def test_on_cuda_the_tiled_evaluator_is_chosen_and_scores_as_the_cpu_does(trained):
    torch.manual_seed(0)
    vgg = build_model({"name": "vgg", "stages": [[8], [16], [16]], "fc_features": [32]})
    vgg(torch.randn(8, *SHAPE))  # non-trivial BatchNorm statistics
    vgg = attach_exits(vgg, [1, 2], {"conv_channels": 4, "pool_size": 2, "hidden_features": 16}).eval()
    split = image_split(200, 10)
    for net in (vgg, trained):
        layout = build_layout(net, SHAPE)
        masks = _masks(layout, 8, seed=11)
        cpu = SlicedEvaluator(net, layout, CPU).accuracy(masks, split)
        cuda = mask_evaluator(copy.deepcopy(net), layout, CUDA)
        assert isinstance(cuda, TiledEvaluator)
        scores = cuda.accuracy(masks, split)
        assert np.abs(scores - cpu).max() <= 1 / 200  # CUDA kernels round differently
        np.testing.assert_array_equal(cuda.accuracy(torch.as_tensor(masks, device=CUDA), split), scores)


def test_bf16_tiled_scores_stay_within_two_points_of_float32(trained):
    layout = build_layout(trained, SHAPE)
    split = image_split(1000, 3)
    masks = _masks(layout, 16, seed=4)
    full = mask_evaluator(copy.deepcopy(trained), layout, CUDA).accuracy(masks, split)
    half = mask_evaluator(copy.deepcopy(trained), layout, CUDA, precision="bfloat16").accuracy(masks, split)
    assert np.abs(half - full).max() <= 0.02


def test_training_on_cuda_learns_as_on_the_cpu(trained):
    model = _lenet5_with_exit(0)
    history = train(model, image_split(600, 0), None, RECIPE, CUDA, seed=0)
    assert np.isfinite(history["train_loss"]).all()
    test = image_split(300, 1)
    on_cpu, on_cuda = evaluate(trained, test, CPU), evaluate(model, test, CUDA)
    assert on_cpu >= 0.8 and on_cuda >= on_cpu - 0.05


def test_a_search_on_cuda_scores_its_front_as_the_cpu_does(trained):
    validation = image_split(300, 2)
    cfg = SearchConfig(pop_size=8, generations=2, max_accuracy_drop=0.5)
    outcome = search_pruning_masks(copy.deepcopy(trained), validation, None, cfg, seed=0, device=CUDA)
    front = outcome.result.front_X
    assert len(front) and outcome.result.front_F[:, 1].min() < 1.0
    np.testing.assert_allclose(outcome.result.front_F[:, 1], outcome.layout.flops_ratio(front))
    cpu = SlicedEvaluator(trained, outcome.layout, CPU).accuracy(front, validation)
    assert np.abs(outcome.result.front_accuracy - cpu).max() <= 2 / 300


def test_a_pruned_member_finetunes_on_cuda_and_runs_the_same_on_the_cpu(trained):
    layout = build_layout(trained, SHAPE)
    mask = _masks(layout, 1, seed=5)[0]
    model, history = finetune_member(
        trained, _lenet5_with_exit(1), layout, mask, "keep", image_split(600, 0), None, RECIPE, CUDA, seed=0
    )
    assert sum(p.numel() for p in model.parameters()) == layout.cost(mask[None])["params"][0]
    assert next(model.parameters()).device == CPU and np.isfinite(history["train_loss"]).all()
    assert evaluate(model, image_split(300, 1), CUDA) >= 0.5  # a network on the CPU, evaluated on CUDA
    assert next(model.parameters()).device == CPU  # ... and handed back where it was
    x = images_to_float(image_split(64, 3)["images"])
    with torch.no_grad():
        on_cpu = as_exit_list(model(x))[-1]
        on_cuda = as_exit_list(copy.deepcopy(model).to(CUDA)(x.to(CUDA)))[-1].cpu()
    torch.testing.assert_close(on_cuda, on_cpu, atol=1e-2, rtol=1e-2)  # TF32 convolutions on CUDA


def test_latency_tables_are_measured_on_cuda_and_keyed_by_the_gpu(trained):
    layout = build_layout(trained, SHAPE)
    settings = LatencySettings(batch_size=256, repeats=3, grid_points=3, calibration_masks=4, threads=None)
    latency = profile_latency(copy.deepcopy(trained), layout, settings, CUDA)
    assert latency.key["device"] == f"cuda:{torch.cuda.get_device_name(CUDA)}"
    assert all((t.ms > 0).all() and (np.diff(t.ms, axis=1) >= 0).all() for t in latency.tables)
    masks = _masks(layout, 3, seed=6)
    measured = measure_masks_ms(trained, layout, masks, settings, CUDA)
    assert (measured.ms > 0).all() and np.isfinite(latency.predict_ms(layout, masks)).all()
    assert latency.ratio(layout, np.ones((1, layout.num_bits), dtype=bool))[0] == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["structured", "unstructured"])
def test_dynamic_sparse_training_of_an_lstm_on_cuda_hands_back_a_plain_cpu_model(mode):
    """An LSTM re-reads its (parametrized) weights while it moves between devices: the thresholds must be gone
    before the trained network goes back to the CPU."""
    torch.manual_seed(0)
    model = build_model({"name": "lstm_seq", "hidden_size": 12, "num_layers": 2}).eval()
    data = image_split(128, 0)
    training = TrainConfig(epochs=1, batch_size=32, optimizer="adamw", learning_rate=0.01, weight_decay=0.0)
    result = train_sparse(model, data, data, SparseTrainingConfig(mode=mode, training=training, alpha=0.5), CUDA, 0)
    assert all(p.device == CPU for p in result.model.parameters())
    assert not any(hasattr(m, "parametrizations") for m in result.model.modules())


@pytest.mark.parametrize("variant", VARIANTS)
def test_reinit_variants_of_networks_on_cuda_equal_the_cpus(trained, variant):
    """Fresh draws are made on the CPU (one generator for every device), then placed beside theta0."""
    initial = _lenet5_with_exit(1).eval()
    on_cpu = reinit_model(trained, initial, lambda: _lenet5_with_exit(2), variant, seed=3).state_dict()
    on_cuda = reinit_model(
        copy.deepcopy(trained).to(CUDA), copy.deepcopy(initial).to(CUDA), lambda: _lenet5_with_exit(2), variant, seed=3
    ).state_dict()
    for key, value in on_cpu.items():
        torch.testing.assert_close(on_cuda[key].cpu(), value, rtol=0, atol=0)


def test_evaluated_on_moves_a_cpu_network_to_cuda_for_the_block_and_back():
    from evoprune.core.runtime import evaluated_on

    model = _lenet5_with_exit(0).train()
    with evaluated_on(model, CUDA):
        assert next(model.parameters()).is_cuda and not model.training
    assert next(model.parameters()).device == CPU and model.training
