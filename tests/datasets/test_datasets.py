import pandas as pd
import pytest
import torch
from kedro.io import DatasetError

from evoprune.core.models import build_model
from evoprune.datasets import RawImagesDataset, TensorDictDataset, TorchModelDataset
from tests.conftest import write_fake_cifar


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
    with pytest.raises(DatasetError, match=r"m.pt does not fit the model lenet5: .*shapes differ.*re-run the stage"):
        ds.load()
    ckpt["spec"] = {"source": "factory", "factory": "gone_package.nets:net"}
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.raises(DatasetError, match=r"Cannot rebuild the model.*cannot import 'gone_package.nets'"):
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


def test_raw_images_dataset_is_read_only(fake_idx_dir, tmp_path):
    ds = RawImagesDataset(path=str(tmp_path), dataset="fashion_mnist", source_dir=str(fake_idx_dir))
    assert ds.load()["train_images"].shape == (600, 28, 28)
    with pytest.raises(DatasetError, match="read-only"):
        ds.save({"train_images": torch.zeros(1)})


def test_raw_images_dataset_reads_cifar10(tmp_path):
    source = write_fake_cifar(tmp_path / "src", "cifar10", per_batch=4, n_test=6)
    ds = RawImagesDataset(path=str(tmp_path / "raw"), dataset="cifar10", source_dir=str(source))
    data = ds.load()
    assert data["train_images"].shape == (20, 3, 32, 32) and data["test_labels"].shape == (6,)
    assert ds._describe()["dataset"] == "cifar10"


def _pruned_members(k: int = 2):
    import numpy as np

    from evoprune.core.exits import attach_exits
    from evoprune.core.masking import prune_physically
    from evoprune.core.units import build_layout

    torch.manual_seed(0)
    model = attach_exits(build_model({"name": "vgg", "stages": [[8], [16]], "fc_features": [16]}), [1]).eval()
    layout = build_layout(model, (1, 28, 28))
    masks = layout.repair(np.random.default_rng(0).random((k, layout.num_bits)) < 0.5)
    pruned = [prune_physically(model, layout, m, (1, 28, 28)) for m in masks]
    with torch.no_grad():
        for p in pruned:  # stands for fine-tuning: weights differ from the unpruned network's
            for t in p.parameters():
                t.add_(0.1 * torch.randn_like(t))
    return {"model": model, "masks": masks, "member_ids": [4, 9][:k], "pruned": [p.eval() for p in pruned]}


def test_finetuned_members_round_trip_rebuilds_the_pruned_networks(tmp_path):
    from evoprune.datasets import FinetunedMembersDataset

    data = _pruned_members()
    ds = FinetunedMembersDataset(filepath=str(tmp_path / "members.pt"))
    ds.save(data)
    loaded = ds.load()
    assert loaded["member_ids"] == [4, 9] and (loaded["masks"] == data["masks"]).all()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        for original, restored in zip(data["pruned"], loaded["pruned"], strict=True):
            assert sum(p.numel() for p in restored.parameters()) == sum(p.numel() for p in original.parameters())
            for a, b in zip(original(x), restored(x), strict=True):
                assert torch.equal(a, b)


def test_finetuned_members_of_a_skipped_variant_round_trip_empty(tmp_path):
    from evoprune.datasets import FinetunedMembersDataset

    data = _pruned_members(1)
    empty = {"model": data["model"], "masks": data["masks"][:0], "member_ids": [], "pruned": []}
    ds = FinetunedMembersDataset(filepath=str(tmp_path / "members.pt"))
    ds.save(empty)
    loaded = ds.load()
    assert loaded["pruned"] == [] and loaded["masks"].shape == (0, data["masks"].shape[1])


def test_finetuned_members_dataset_refuses_another_file(tmp_path):
    from evoprune.datasets import FinetunedMembersDataset

    torch.save({"format": "something else"}, tmp_path / "m.pt")
    with pytest.raises(DatasetError, match="not an evoprune fine-tuned members file"):
        FinetunedMembersDataset(filepath=str(tmp_path / "m.pt")).load()


def test_exported_models_load_without_evoprune_code(tmp_path):
    import onnxruntime as ort

    from evoprune.datasets import ExportedModelsDataset

    data = _pruned_members(1)
    ds = ExportedModelsDataset(path=str(tmp_path / "exports"))
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "stale.onnx").write_bytes(b"old")  # a save replaces the folder
    ds.save({"member4": data["pruned"][0]})
    files = ds.load()
    assert set(files) == {"member4"} and set(files["member4"]) == {"onnx", "torchscript"}
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        expected = data["pruned"][0](x)
        scripted = torch.jit.load(str(files["member4"]["torchscript"]))(x)
    session = ort.InferenceSession(str(files["member4"]["onnx"]), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"images": x.numpy()})
    for e, want in enumerate(expected):
        torch.testing.assert_close(scripted[e], want)
        torch.testing.assert_close(torch.from_numpy(onnx_out[e]), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(DatasetError, match="unknown export formats"):
        ExportedModelsDataset(path=str(tmp_path), formats=["tflite"])


def test_method_results_load_empty_and_save_one_method_without_touching_the_others(tmp_path):
    from evoprune.datasets import MethodResultsDataset

    ds = MethodResultsDataset(path=str(tmp_path / "methods"))
    assert ds.load() == {} and ds.exists()
    ds.save({"dst": pd.DataFrame({"method": ["dst_structured"], "test_accuracy": [0.9]})})
    ds.save({"scoring_net": pd.DataFrame({"method": ["scoring_net"], "test_accuracy": [0.8]})})
    ds.save({"dst": pd.DataFrame({"method": ["dst_structured"], "test_accuracy": [0.91]})})
    loaded = ds.load()
    assert sorted(loaded) == ["dst", "scoring_net"] and loaded["dst"]["test_accuracy"].tolist() == [0.91]
    with pytest.raises(DatasetError, match="must be an identifier"):
        ds.save({"../evil": pd.DataFrame()})


def test_sparse_model_round_trip_keeps_zeros_and_masks(tmp_path):
    from evoprune.core.sparse.magnitude import bake, global_magnitude_prune
    from evoprune.datasets import SparseModelDataset

    torch.manual_seed(0)
    model = bake(global_magnitude_prune(build_model({"name": "lenet5"}), 0.2))
    masks = {n: m.weight != 0 for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    ds = SparseModelDataset(filepath=str(tmp_path / "sparse.pt"))
    ds.save({"model": model, "weight_masks": masks})
    loaded = ds.load()
    state, reloaded = model.state_dict(), loaded["model"].state_dict()
    assert state.keys() == reloaded.keys() and all(torch.equal(state[k], reloaded[k]) for k in state)
    assert loaded["weight_masks"].keys() == masks.keys()
    ckpt = torch.load(tmp_path / "sparse.pt", weights_only=True)
    ckpt["weight_masks"]["head.1"] = torch.ones(3, 3, dtype=torch.bool)
    torch.save(ckpt, tmp_path / "sparse.pt")
    with pytest.raises(DatasetError, match=r"weight masks do not fit the network \(layers \['head.1'\]\); re-run dst"):
        ds.load()


def test_a_sparse_lstm_round_trips_with_masks_on_its_gate_matrices(tmp_path):
    from evoprune.core.sparse.magnitude import bake, global_magnitude_prune
    from evoprune.datasets import SparseModelDataset

    torch.manual_seed(0)
    model = bake(global_magnitude_prune(build_model({"name": "lstm_seq", "hidden_size": 8}), 0.2))
    masks = {f"lstm.{n}": getattr(model.lstm, n) != 0 for n in ("weight_ih_l0", "weight_hh_l0")}
    ds = SparseModelDataset(filepath=str(tmp_path / "sparse.pt"))
    ds.save({"model": model, "weight_masks": masks | {"head": model.head.weight != 0}})
    loaded = ds.load()
    assert torch.equal(loaded["weight_masks"]["lstm.weight_hh_l0"], masks["lstm.weight_hh_l0"])
    assert torch.equal(loaded["model"].lstm.weight_hh_l0, model.lstm.weight_hh_l0)
    ckpt = torch.load(tmp_path / "sparse.pt", weights_only=True)
    ckpt["weight_masks"]["lstm.weight_hh_l0"] = torch.ones(8, 8, dtype=torch.bool)  # gate rows missing
    torch.save(ckpt, tmp_path / "sparse.pt")
    with pytest.raises(DatasetError, match=r"do not fit the network \(layers \['lstm.weight_hh_l0'\]\)"):
        ds.load()


def test_a_scoring_net_round_trips_and_one_of_another_feature_version_is_refused(tmp_path):
    from evoprune.core.scoring_net import FEATURE_NAMES, ScoringNet
    from evoprune.datasets import ScoringNetDataset

    torch.manual_seed(0)
    net = ScoringNet(hidden=(8,))
    ds = ScoringNetDataset(filepath=str(tmp_path / "net.pt"))
    ds.save(net)
    features = torch.randn(5, len(FEATURE_NAMES))
    assert torch.equal(ds.load().scores(features), net.scores(features))
    state = torch.load(tmp_path / "net.pt", weights_only=True)
    state["feature_version"] = "evoprune.scoring_net.features/0"
    torch.save(state, tmp_path / "net.pt")
    with pytest.raises(DatasetError, match="does not match this version.*retrain the Scoring Net"):
        ds.load()
    with pytest.raises(DatasetError, match="saves a ScoringNet"):
        ds.save({"weights": torch.zeros(1)})
