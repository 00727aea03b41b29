import pytest
import torch
from kedro.io import DatasetError

from evoprune.core.models import build_model
from evoprune.datasets import MNISTLikeDataset, TensorDictDataset, TorchModelDataset


def test_model_round_trip_gives_equal_tensors(tmp_path):
    model = build_model({"name": "vgg", "stages": [[4], [8]], "fc_features": [16]})
    model(torch.randn(4, 1, 28, 28))  # moves BatchNorm running statistics away from their init
    ds = TorchModelDataset(filepath=str(tmp_path / "m.pt"))
    ds.save(model)
    loaded = ds.load()
    assert loaded.spec == model.spec
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys() and all(torch.equal(original[k], restored[k]) for k in original)


def test_model_dataset_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(DatasetError, match="weights_only=True failed"):
        TorchModelDataset(filepath=str(path)).load()
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(DatasetError, match="not an evoprune model checkpoint"):
        TorchModelDataset(filepath=str(path)).load()


def test_model_dataset_refuses_a_checkpoint_of_another_architecture(tmp_path):
    ds = TorchModelDataset(filepath=str(tmp_path / "m.pt"))
    ds.save(build_model({"name": "lenet5"}))
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    ckpt["spec"]["conv_channels"] = [8, 16]
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.raises(DatasetError, match="does not match its architecture spec"):
        ds.load()


def test_model_dataset_refuses_plain_modules(tmp_path):
    with pytest.raises(DatasetError, match="carry a `spec`"):
        TorchModelDataset(filepath=str(tmp_path / "m.pt")).save(torch.nn.Linear(2, 2))


def test_tensor_dict_round_trip(tmp_path):
    data = {"images": torch.randint(0, 255, (5, 28, 28), dtype=torch.uint8), "labels": torch.arange(5)}
    ds = TensorDictDataset(filepath=str(tmp_path / "s.pt"))
    ds.save(data)
    loaded = ds.load()
    assert ds.exists() and all(torch.equal(loaded[k], data[k]) for k in data)


def test_mnist_like_dataset_is_read_only(fake_idx_dir, tmp_path):
    ds = MNISTLikeDataset(path=str(tmp_path), dataset="fashion_mnist", source_dir=str(fake_idx_dir))
    assert ds.load()["train_images"].shape == (600, 28, 28)
    with pytest.raises(DatasetError, match="read-only"):
        ds.save({"train_images": torch.zeros(1)})
