import numpy as np
import onnx
import pytest
import torch

from evoprune.core.data import images_to_float
from evoprune.core.exits import attach_exits, input_shape
from evoprune.core.export import export_onnx, onnx_max_abs_error
from evoprune.core.masking import prune_physically
from evoprune.core.models import build_model
from evoprune.core.units import build_layout
from tests.conftest import image_split


@pytest.fixture(scope="module")
def pruned_lenet():
    """A LeNet-5 with one early exit, physically pruned with a random repaired mask."""
    torch.manual_seed(0)
    model = attach_exits(build_model({"name": "lenet5"}), [1]).eval()
    layout = build_layout(model, input_shape(model))
    mask = layout.repair(np.random.default_rng(0).random((1, layout.num_bits)) < 0.5)[0]
    return prune_physically(model, layout, mask, input_shape(model))


@pytest.fixture(scope="module")
def images():
    return images_to_float(image_split(7, seed=3)["images"])  # (7, 1, 28, 28): not the export batch of 1


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_pruned_multi_exit_onnx_matches_torch_on_another_batch_size(pruned_lenet, images, tmp_path):
    path = export_onnx(pruned_lenet, tmp_path / "member.onnx")
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["exit1", "exit2"]
    assert len(graph.output) == pruned_lenet.num_exits
    assert [i.name for i in graph.input] == ["images"] and _dims(graph.input[0]) == ["batch", 1, 28, 28]
    assert onnx_max_abs_error(pruned_lenet, path, images) <= 1e-4


def test_dense_staged_net_onnx_has_one_logits_output(images, tmp_path):
    torch.manual_seed(0)
    model = build_model({"name": "lenet5"})
    path = export_onnx(model, tmp_path / "dense.onnx")
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["logits"]
    assert onnx_max_abs_error(model, path, images) <= 1e-4


def test_fixed_batch_export_and_output_count_check(pruned_lenet, images, tmp_path):
    path = export_onnx(pruned_lenet, tmp_path / "fixed.onnx", batch_size_dynamic=False)
    assert _dims(onnx.load(str(path)).graph.input[0]) == [1, 1, 28, 28]
    assert onnx_max_abs_error(pruned_lenet, path, images[:1]) <= 1e-4
    with pytest.raises(ValueError, match="has 2 outputs, the model returns 1"):
        onnx_max_abs_error(build_model({"name": "lenet5"}), path, images[:1])
