import subprocess
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from evoprune.core.export import export_torchscript
from evoprune.core.finetune import finetune_member, latency_ms, measure, pruned_variant
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.masking import population_masks
from evoprune.core.train import TrainConfig, as_exit_list
from evoprune.core.units import build_layout
from tests.conftest import image_split, tiny_multi_exit

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def member():
    trained, initial = tiny_multi_exit(noise=0.05)
    layout = build_layout(trained, (1, 28, 28))
    mask = layout.repair(np.random.default_rng(0).random((1, layout.num_bits)) < 0.5)[0]
    return trained, initial, layout, mask


def test_keep_variant_before_training_equals_the_masked_network(member):
    trained, initial, layout, mask = member
    pruned = pruned_variant(trained, initial, layout, mask, "keep", seed=0)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad(), population_masks(trained, layout, torch.as_tensor(mask[None])):
        masked = as_exit_list(trained(x))
    with torch.no_grad():
        for a, b in zip(as_exit_list(pruned(x)), masked, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["rewind", "sign", "magnitude"])
def test_pruned_variants_are_smaller_and_keep_their_promise(member, variant):
    trained, initial, layout, mask = member
    pruned = pruned_variant(trained, initial, layout, mask, variant, seed=0)
    assert sum(p.numel() for p in pruned.parameters()) == layout.cost(mask[None])["params"][0]
    first = pruned.backbone.stages[0][0].weight
    kept = np.flatnonzero(mask[: layout.groups[0].size])
    theta0 = initial.backbone.stages[0][0].weight[kept]
    if variant == "rewind":
        assert torch.equal(first, theta0)
    elif variant == "sign":
        assert torch.equal(torch.sign(first), torch.sign(theta0))
    else:
        assert torch.equal(first.abs(), theta0.abs())


def test_finetune_and_measure(member):
    trained, initial, layout, mask = member
    split = image_split(200, 1)
    model, history = finetune_member(
        trained, initial, layout, mask, "rewind", split, split, TrainConfig(epochs=2, batch_size=50), CPU, seed=0
    )
    assert len(history["train_loss"]) == 2
    metrics = measure(model, image_split(100, 2), (0.5, "max_softmax"), CPU, batch_sizes=(1, 50), repeats=2)
    assert metrics["flops"] < build_layout(trained, (1, 28, 28)).dense_flops
    assert metrics["early_exit.share_exit1"] + metrics["early_exit.share_exit2"] == pytest.approx(1.0)
    assert 0.0 <= metrics["exit2.test_accuracy"] <= 1.0 and metrics["latency_ms_batch50"] > 0


@pytest.mark.parametrize("objective", ["final", "all_exits"])
def test_objective_final_trains_the_final_exit_alone(member, objective):
    trained, initial, layout, mask = member
    params = FinetuneParams(objective=objective)
    assert params.exit_loss_weights(trained) == ([0.0, 1.0] if objective == "final" else None)
    cfg = TrainConfig(epochs=1, batch_size=50, optimizer="sgd", weight_decay=0.0)
    before = pruned_variant(trained, initial, layout, mask, "keep", seed=0)
    model, _ = finetune_member(
        trained,
        initial,
        layout,
        mask,
        "keep",
        image_split(200, 1),
        None,
        cfg,
        CPU,
        0,
        params.exit_loss_weights(trained),
    )
    head, backbone = ("exit_heads.0", "backbone.")
    old = before.state_dict()
    moved = {k: not torch.equal(v, old[k]) for k, v in model.state_dict().items() if v.is_floating_point()}
    assert any(v for k, v in moved.items() if k.startswith(backbone))
    assert any(v for k, v in moved.items() if k.startswith(head)) == (objective == "all_exits")


def test_objective_final_refuses_loss_weights():
    with pytest.raises(ValidationError, match="objective final trains the final exit alone"):
        FinetuneParams(objective="final", loss_weights=[1.0, 2.0])


@pytest.mark.parametrize("memory_format", ["channels_last", "contiguous"])
def test_latency_times_copies_in_the_requested_layout(member, memory_format):
    trained, initial, layout, mask = member
    pruned = pruned_variant(trained, initial, layout, mask, "keep", seed=0)
    conv = next(m for m in trained.modules() if isinstance(m, torch.nn.Conv2d))
    strides = conv.weight.stride()
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    timed = latency_ms(pruned, images, (1, 20), 2, CPU, reference=trained, memory_format=memory_format)
    assert set(timed) == {f"{k}_batch{b}" for k in ("latency_ms", "dense_latency_ms", "speedup") for b in (1, 20)}
    assert all(v > 0 for v in timed.values())
    assert conv.weight.stride() == strides  # the originals keep their (NCHW) layout


def test_latency_is_timed_with_the_requested_threads_and_the_count_restored(member, monkeypatch):
    trained, initial, layout, mask = member
    pruned = pruned_variant(trained, initial, layout, mask, "keep", seed=0)
    before, seen = torch.get_num_threads(), []
    forward = type(pruned).forward
    monkeypatch.setattr(
        type(pruned), "forward", lambda self, x: (seen.append(torch.get_num_threads()), forward(self, x))[1]
    )
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    latency_ms(pruned, images, (8,), 2, CPU, reference=trained, threads=1)
    assert seen and set(seen) == {1} and torch.get_num_threads() == before
    seen.clear()
    latency_ms(pruned, images, (8,), 2, CPU, reference=trained)  # None: the process's count
    assert set(seen) == {before}


def test_torchscript_export_loads_without_evoprune(member, tmp_path):
    trained, initial, layout, mask = member
    pruned = pruned_variant(trained, initial, layout, mask, "keep", seed=0)
    path = export_torchscript(pruned, tmp_path / "member.ts")
    x = torch.randn(2, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = as_exit_list(pruned(x))[-1]
    code = (
        "import sys, torch\n"
        "sys.modules['evoprune'] = None  # importing evoprune would fail\n"
        f"m = torch.jit.load({str(path)!r}); x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)\n"
        f"torch.save(m(x)[-1], {str(tmp_path / 'y.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt", weights_only=True), expected)
