import gzip

import numpy as np
import pytest
import torch

from evoprune.core.data import (
    IDX_FILES,
    DataFileError,
    images_to_float,
    load_raw_dataset,
    parse_idx_header,
    split_train_validation,
    stage_raw_files,
)
from tests.conftest import make_images, write_fake_dataset, write_idx


@pytest.mark.parametrize("compress", [True, False])
def test_staged_files_are_read_by_torchvision(tmp_path, compress):
    source = write_fake_dataset(tmp_path / "src", n_train=50, n_test=20, compress=compress)
    data = load_raw_dataset(tmp_path / "root", "fashion_mnist", source)
    expected_x, expected_y = make_images(50, seed=0)
    assert data["train_images"].dtype == torch.uint8 and data["train_labels"].dtype == torch.int64
    assert data["train_images"].shape == (50, 28, 28) and data["test_images"].shape == (20, 28, 28)
    assert torch.equal(data["train_images"], torch.from_numpy(expected_x))
    assert torch.equal(data["train_labels"], torch.from_numpy(expected_y).long())
    assert (tmp_path / "root" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_mnist_is_a_configuration_change(tmp_path):
    source = write_fake_dataset(tmp_path / "src", n_train=30, n_test=10)
    data = load_raw_dataset(tmp_path / "root", "mnist", source)
    assert data["test_images"].shape == (10, 28, 28)
    assert (tmp_path / "root" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()


def test_truncated_gz_file_is_named(tmp_path):
    source = write_fake_dataset(tmp_path / "src", n_train=30, n_test=10)
    broken = source / "train-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:-40])
    with pytest.raises(DataFileError, match="train-images-idx3-ubyte.gz"):
        load_raw_dataset(tmp_path / "root", "fashion_mnist", source)


def test_truncated_plain_file_reports_sizes(tmp_path):
    x, _ = make_images(10, seed=0)
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte", x, compress=False)
    payload = path.read_bytes()[:-100]
    with pytest.raises(DataFileError, match=r"truncated: header says shape \(10, 28, 28\)"):
        parse_idx_header(payload, str(path))


def test_not_an_idx_file(tmp_path):
    with pytest.raises(DataFileError, match="not an IDX file"):
        parse_idx_header(b"PK\x03\x04 hello", "x.zip")


def test_missing_file_says_how_to_get_it(tmp_path):
    source = write_fake_dataset(tmp_path / "src", n_train=30, n_test=10)
    (source / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataFileError, match=r"t10k-labels-idx1-ubyte.*apt-get install dataset-fashion-mnist"):
        load_raw_dataset(tmp_path / "root", "fashion_mnist", source)


def test_corrupt_staged_copy_is_restaged(tmp_path):
    source = write_fake_dataset(tmp_path / "src", n_train=30, n_test=10)
    raw = stage_raw_files(source, tmp_path / "raw", "fashion_mnist")
    (raw / IDX_FILES[0]).write_bytes(b"\x00\x00\x08\x03garbage")
    stage_raw_files(source, raw, "fashion_mnist")
    assert parse_idx_header((raw / IDX_FILES[0]).read_bytes(), "x") == (30, 28, 28)


def test_gzip_that_is_not_gzip(tmp_path):
    source = write_fake_dataset(tmp_path / "src", n_train=30, n_test=10)
    (source / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataFileError, match="train-labels-idx1-ubyte.gz is a corrupt or truncated gzip"):
        load_raw_dataset(tmp_path / "root", "fashion_mnist", source)


def test_split_is_seeded_and_disjoint():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1).expand(100, 2, 2).contiguous()
    labels = torch.arange(100) % 10
    train_a, val_a = split_train_validation(images, labels, 20, seed=3)
    train_b, val_b = split_train_validation(images, labels, 20, seed=3)
    _, val_c = split_train_validation(images, labels, 20, seed=4)
    assert torch.equal(val_a["labels"], val_b["labels"]) and torch.equal(train_a["images"], train_b["images"])
    assert not torch.equal(val_a["images"], val_c["images"])
    ids = torch.cat([train_a["images"][:, 0, 0], val_a["images"][:, 0, 0]])
    assert sorted(ids.tolist()) == list(range(100))


def test_split_refuses_impossible_validation_size():
    with pytest.raises(ValueError, match=r"validation_size.*got 100"):
        split_train_validation(torch.zeros(100, 2, 2, dtype=torch.uint8), torch.zeros(100, dtype=torch.long), 100, 0)


def test_images_to_float_range_and_shape():
    x = images_to_float(torch.tensor([[[0, 255]]], dtype=torch.uint8))
    assert x.shape == (1, 1, 1, 2) and x.min().item() == -1.0 and x.max().item() == 1.0


def test_gzip_roundtrip_of_helper(tmp_path):
    x = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = write_idx(tmp_path / "a", x, compress=True)
    assert parse_idx_header(gzip.decompress(path.read_bytes()), "a") == (3, 4)
