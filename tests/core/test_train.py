import pytest
import torch
from pydantic import ValidationError
from torch import nn

from evoprune.core.models import build_model
from evoprune.core.train import AugmentConfig, TrainConfig, TrainingDivergedError, augment_batch, evaluate, lr_at, train
from tests.conftest import image_split as _split

CPU = torch.device("cpu")


def _loss(model, split) -> float:
    from evoprune.core.train import predict_logits

    return torch.nn.functional.cross_entropy(predict_logits(model, split["images"], CPU), split["labels"]).item()


def test_one_training_step_lowers_the_loss():
    data = _split(256, 0)
    torch.manual_seed(0)
    model = build_model({"name": "lenet5"})
    before = _loss(model, data)
    one_step = TrainConfig(epochs=1, batch_size=256, learning_rate=0.05, schedule="constant", weight_decay=0.0)
    train(model, data, None, one_step, CPU, seed=0)  # the whole data is one batch: exactly one step
    assert _loss(model, data) < before


def test_a_few_epochs_learn_the_task():
    data = _split(512, 0)
    model = build_model({"name": "lenet5"})
    train(model, data, None, TrainConfig(epochs=4, batch_size=32, optimizer="adamw", learning_rate=3e-3), CPU, seed=0)
    assert evaluate(model, _split(128, 1), CPU) > 0.5  # 10 classes: chance is 0.1


def test_same_seed_gives_identical_weights_and_other_seed_does_not():
    data, cfg = _split(128, 0), TrainConfig(epochs=1, batch_size=32, augment=AugmentConfig(hflip=True, crop_padding=2))

    def run(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(123)
        model = build_model({"name": "vgg", "stages": [[4], [8]], "fc_features": [16]})
        train(model, data, data, cfg, CPU, seed=seed)
        return model.state_dict()

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_history_has_one_entry_per_epoch():
    data = _split(64, 0)
    history = train(build_model({"name": "lenet5"}), data, data, TrainConfig(epochs=3, batch_size=32), CPU, seed=0)
    assert len(history["train_loss"]) == 3 and len(history["val_accuracy"]) == 3
    assert all(0.0 <= a <= 1.0 for a in history["val_accuracy"]) and history["train_seconds"] > 0


def test_nan_guard_names_the_step_and_the_fix():
    data = _split(64, 0)
    data["images"] = data["images"].clone()
    model = build_model({"name": "lenet5"})
    with torch.no_grad():
        model.stages[0][0].weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 0.*Lower `learning_rate`"):
        train(model, data, None, TrainConfig(epochs=1, batch_size=32), CPU, seed=0)


def test_evaluate_restores_train_mode():
    model = build_model({"name": "lenet5"}).train()
    acc = evaluate(model, _split(32, 1), CPU)
    assert model.training and 0.0 <= acc <= 1.0


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_lr_schedule_peaks_at_the_configured_rate(schedule):
    cfg = TrainConfig(learning_rate=0.2, schedule=schedule, warmup_fraction=0.2)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert max(lrs) == pytest.approx(0.2, rel=1e-6)
    assert all(lr >= 0 for lr in lrs)
    if schedule != "constant":
        assert lrs[-1] < 0.05


def test_augment_keeps_shape_and_changes_pixels():
    x = torch.randn(16, 1, 28, 28)
    gen = torch.Generator().manual_seed(0)
    y = augment_batch(x, AugmentConfig(hflip=True, crop_padding=3), gen)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert torch.equal(augment_batch(x, AugmentConfig(), gen), x)


def test_invalid_training_config_names_the_key():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=-0.1)


def test_train_subset_uses_only_the_head_of_the_split_and_channels_last_keeps_its_layout():
    split = _split(40, seed=0)
    split["labels"][16:] = 99  # out of range: training on any of these images would raise
    model = build_model({"name": "vgg", "stages": [[4], [8]], "fc_features": [8]})
    cfg = TrainConfig(epochs=1, batch_size=8, train_subset=16, memory_format="channels_last")
    history = train(model, split, None, cfg, torch.device("cpu"), seed=0)
    assert len(history["train_loss"]) == 1 and history["train_loss"][0] > 0
    conv = model.stages[0][0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(IndexError):
        train(model, split, None, TrainConfig(epochs=1, batch_size=8), torch.device("cpu"), seed=0)


def test_channels_last_falls_back_to_contiguous_for_1x1_convolutions_on_cpu(caplog, monkeypatch):
    """oneDNN's channels_last weight gradient of a 1x1 conv can hang on CPU (torch 2.15): such nets train NCHW,
    with one warning however often they train (the recovery fitness trains hundreds of pruned copies)."""
    monkeypatch.setattr("evoprune.core.train._CONTIGUOUS_WARNED", set())
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.LazyLinear(10)
    )
    model(torch.zeros(1, 1, 28, 28))
    cfg = TrainConfig(epochs=1, batch_size=8, memory_format="channels_last")
    with caplog.at_level("WARNING"):
        for _ in range(2):
            train(model, _split(16, seed=0), None, cfg, torch.device("cpu"), seed=0)
            assert model[1].weight.is_contiguous()
            assert not model[1].weight.is_contiguous(memory_format=torch.channels_last)
    warned = [r for r in caplog.records if "training contiguous" in r.getMessage()]
    assert len(warned) == 1 and "1x1 convolutions (3)" in warned[0].getMessage()


def test_evaluated_on_gives_eval_mode_for_the_block_and_restores_the_mode_even_after_an_error():
    from evoprune.core.runtime import evaluated_on

    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).train()
    with evaluated_on(model, torch.device("cpu")) as inside:
        assert inside is model and not model.training
    assert model.training
    with pytest.raises(RuntimeError, match="boom"), evaluated_on(model, torch.device("cpu")):
        raise RuntimeError("boom")
    assert model.training and next(model.parameters()).device.type == "cpu"


def test_precision_is_validated_and_a_cpu_trains_in_float32_under_either():
    with pytest.raises(ValidationError, match="precision"):
        TrainConfig(precision="float16")
    data = _split(64, 0)
    states = []
    for precision in ("float32", "bfloat16"):  # bf16 autocast applies on CUDA only
        torch.manual_seed(0)
        model = build_model({"name": "lenet5"})
        train(model, data, None, TrainConfig(epochs=1, batch_size=32, precision=precision), CPU, seed=0)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
