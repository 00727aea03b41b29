"""Model files checked against the run that uses them: a checkpoint's spec is never trusted blindly."""

import time

import pytest
import torch
from kedro.io import DatasetError

from evoprune.core.exits import attach_exits, build_network, spec_differences
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
