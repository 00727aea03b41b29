"""Model files checked against the run that uses them: a checkpoint's spec is never trusted blindly."""

import time

import pytest
import torch
from kedro.io import DatasetError

from evoprune.core.exits import attach_exits, build_network, spec_differences
from evoprune.core.lineage import content_digest, lineage_differences
from evoprune.core.models import build_model
from evoprune.core.models.adapter import CheckpointMismatchError, rebuild_checked
from evoprune.datasets import PrunedMembersDataset, TorchModelDataset
from tests.conftest import run_tiny_session

LENET = {"name": "lenet5"}


def test_spec_differences_name_each_differing_setting():
    net = attach_exits(build_model(LENET), [1, 2])
    assert spec_differences(net.spec, LENET, [1, 2]) == []
    assert spec_differences(build_model(LENET).spec, {"name": "lenet5", "conv_channels": [6, 16]}) == []  # defaults
    diffs = spec_differences(net.spec, {"name": "lenet5", "conv_channels": [8, 16]}, [1])
    assert any(d.startswith("conv_channels: [6, 16] in the file, [8, 16]") for d in diffs)
    assert any(d.startswith("exit_after: ['stages.0', 'stages.1'] in the file, ['stages.0']") for d in diffs)
    vgg = build_model({"name": "vgg", "stages": [[4], [8]], "fc_features": [16]})
    assert any(d.startswith("name: 'vgg' in the file, 'lenet5'") for d in spec_differences(vgg.spec, LENET))
    assert "describes no model" in spec_differences({"name": "transformer_xl"}, LENET)[0]


def test_a_crafted_spec_cannot_make_the_loader_allocate():
    """A spec claiming ~150 GB of weights next to a small state_dict is refused on the meta device, at once."""
    small = build_model({"name": "vgg", "stages": [[4], [8]], "fc_features": [16]})
    huge = {**small.spec, "stages": [[65536], [65536]]}
    start = time.perf_counter()
    with pytest.raises(CheckpointMismatchError, match=r"shapes differ.*\(4, 1, 3, 3\) vs \(65536, 1, 3, 3\)"):
        rebuild_checked(build_network, huge, small.state_dict(), "crafted.pt")
    assert time.perf_counter() - start < 30


def test_model_files_refuse_a_spec_that_does_not_fit_their_weights(tmp_path):
    ds = TorchModelDataset(filepath=str(tmp_path / "m.pt"))
    ds.save(build_model(LENET))
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**ckpt, "spec": {"name": "lenet5", "fc_features": [10**6, 10**6]}}, tmp_path / "m.pt")
    with pytest.raises(DatasetError, match=r"m.pt does not fit the model lenet5.*shapes differ"):
        ds.load()
    assert ds.read_spec() == {"name": "lenet5", "fc_features": [10**6, 10**6]}


def test_members_file_with_masks_of_another_network_is_refused(tmp_path):
    net = attach_exits(build_model(LENET), [1])
    ds = PrunedMembersDataset(filepath=str(tmp_path / "members.pt"))
    ds.save({"model": net, "masks": torch.ones(2, 7, dtype=torch.bool).numpy(), "member_ids": [0, 1]})
    with pytest.raises(
        DatasetError, match=r"masks of shape \(2, 7\) do not fit the network's \d+ units; re-run mask_search"
    ):
        ds.load()


def test_a_model_file_of_another_architecture_stops_a_partial_run_before_any_node(tiny_project):
    """mask_search alone on a multi_exit_model.pt made for another model: refused, naming the file and the fix."""
    foreign = attach_exits(build_model({"name": "vgg", "stages": [[4], [8]], "fc_features": [16]}), [1])
    path = tiny_project / "data/tiny/06_models/multi_exit_model.pt"
    TorchModelDataset(filepath=str(path)).save(foreign)
    before = path.read_bytes()
    with pytest.raises(
        Exception,
        match=r"`multi_exit_model` \(.*multi_exit_model.pt\) was not made by this "
        r"configuration: .*name: 'vgg' in the file, 'lenet5' in train_dense.model.*--to-outputs",
    ):
        run_tiny_session(tiny_project, "mask_search")
    assert path.read_bytes() == before  # nothing overwritten
    assert not (tiny_project / "data/tiny/07_model_output").exists() or not any(
        (tiny_project / "data/tiny/07_model_output").rglob("*.csv")
    )


def test_content_digest_follows_the_values_not_the_layout(tmp_path):
    model = build_model(LENET)
    digest = content_digest(model)
    assert len(digest) == 16 and content_digest(model.to(memory_format=torch.channels_last)) == digest
    ds = TorchModelDataset(filepath=str(tmp_path / "m.pt"))
    model.lineage = {"train_split": "0123456789abcdef"}
    ds.save(model)
    reloaded = ds.load()
    assert content_digest(reloaded) == digest and reloaded.lineage == {"train_split": "0123456789abcdef"}
    with torch.no_grad():
        next(reloaded.parameters()).view(-1)[0] += 1e-6
    assert content_digest(reloaded) != digest
    images = torch.rand(4, 1, 28, 28)
    assert content_digest({"images": images, "labels": torch.arange(4)}) != content_digest(
        {"images": images, "labels": torch.arange(4).flip(0)}
    )
    assert content_digest({"model": reloaded, "masks": {"head.1": torch.ones(2, dtype=torch.bool)}}) != content_digest(
        {"model": model, "masks": {"head.1": torch.ones(2, dtype=torch.bool)}}
    )  # a model inside a mapping counts by its weights
    assert lineage_differences({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "9"}) == ["b"]


def test_a_model_file_of_another_run_is_refused_by_its_lineage(tiny_project):
    """Same architecture, other origin: a multi_exit_model made from another dense model, and a dense model
    trained on other data, are refused before any node runs, naming the input that differs and the fix."""
    run_tiny_session(tiny_project, to_outputs=["multi_exit_model"])
    models = tiny_project / "data/tiny/06_models"
    dense_lineage = torch.load(models / "dense_model.pt", weights_only=True)["lineage"]
    assert set(dense_lineage) == {"dense_model_init", "train_split", "validation_split"}
    exits_lineage = torch.load(models / "multi_exit_model.pt", weights_only=True)["lineage"]
    dense = TorchModelDataset(filepath=str(models / "dense_model.pt")).load()
    assert exits_lineage["dense_model"] == content_digest(dense)

    # another run's dense model in place of this one's: the multi-exit network no longer belongs to it
    original_dense = (models / "dense_model.pt").read_bytes()
    with torch.no_grad():
        next(dense.parameters()).mul_(0.5)
    TorchModelDataset(filepath=str(models / "dense_model.pt")).save(dense)
    exits_before = (models / "multi_exit_model.pt").read_bytes()
    with pytest.raises(
        Exception,
        match=r"`multi_exit_model` \(.*multi_exit_model.pt\) was made from another `dense_model` than the one on "
        r"disk now \(.*dense_model.pt; digest \w+ when it was made, \w+ now\).*--from-inputs=dense_model "
        r"--to-outputs=multi_exit_model",
    ):
        run_tiny_session(tiny_project, "mask_search")
    assert (models / "multi_exit_model.pt").read_bytes() == exits_before

    # the training data changed since the dense model was trained (e.g. data_preparation re-run on other files)
    (models / "dense_model.pt").write_bytes(original_dense)
    train_file = tiny_project / "data/tiny/05_model_input/fashion_mnist_train.pt"
    split = torch.load(train_file, weights_only=True)
    split["labels"] = split["labels"].flip(0)
    torch.save(split, train_file)
    with pytest.raises(Exception, match=r"`dense_model` .* was made from another `train_split` than the one on disk"):
        run_tiny_session(tiny_project, "build_exits")
    assert (models / "dense_model.pt").read_bytes() == original_dense
