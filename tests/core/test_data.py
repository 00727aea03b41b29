import gzip
import os

import numpy as np
import pytest
import torch

from evoprune.core.data import (
    IDX_FILES,
    DataFileError,
    adapt_images,
    images_to_float,
    load_raw_dataset,
    parse_idx_header,
    resize_images,
    split_train_validation,
    stage_raw_files,
)
from tests.conftest import (
    cifar_pickle,
    make_images,
    read_fake_cifar_batch,
    write_fake_cifar,
    write_fake_dataset,
    write_idx,
)


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


def test_staged_copies_follow_their_source(tmp_path):
    """A staged file is kept while its source is unchanged, and staged again when the source folder or
    the source file changes (a valid but stale copy is never trusted)."""
    first = write_fake_dataset(tmp_path / "first", n_train=30, n_test=10)
    root = tmp_path / "root"
    data = load_raw_dataset(root, "fashion_mnist", first)
    staged = root / "FashionMNIST" / "raw" / IDX_FILES[0]
    stamp = staged.stat().st_mtime_ns
    load_raw_dataset(root, "fashion_mnist", first)
    assert staged.stat().st_mtime_ns == stamp  # unchanged source: the staged copy is kept

    second = write_fake_dataset(tmp_path / "second", n_train=40, n_test=10)  # another source folder
    assert load_raw_dataset(root, "fashion_mnist", second)["train_images"].shape[0] == 40

    x, y = make_images(40, seed=7)  # the same source file rewritten in place
    write_idx(second / IDX_FILES[0], x, compress=True)
    write_idx(second / IDX_FILES[1], y, compress=True)
    reread = load_raw_dataset(root, "fashion_mnist", second)
    assert torch.equal(reread["train_images"], torch.from_numpy(x))
    assert not torch.equal(reread["train_images"][:30], data["train_images"])


def test_staged_cifar_copies_follow_their_source(tmp_path):
    root = tmp_path / "root"
    first = write_fake_cifar(tmp_path / "first", "cifar10", per_batch=6)
    assert load_raw_dataset(root, "cifar10", first)["train_images"].shape[0] == 30
    second = write_fake_cifar(tmp_path / "second", "cifar10", per_batch=4)
    assert load_raw_dataset(root, "cifar10", second)["train_images"].shape[0] == 20


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


def test_idx_labels_out_of_range_are_refused_naming_the_file(tmp_path):
    source = write_fake_dataset(tmp_path / "src", n_train=30, n_test=10)
    x, y = make_images(30, seed=0)
    y[7] = 10  # the MNIST family has classes 0..9
    write_idx(source / "train-labels-idx1-ubyte", y, compress=True)
    with pytest.raises(DataFileError, match=r"train-labels-idx1-ubyte.gz holds 1 label\(s\) outside 0..9 \(e.g. 10\)"):
        load_raw_dataset(tmp_path / "root", "fashion_mnist", source)


def test_an_image_file_named_as_labels_is_refused(tmp_path):
    source = write_fake_dataset(tmp_path / "src", n_train=30, n_test=10)
    (source / "t10k-labels-idx1-ubyte.gz").write_bytes((source / "t10k-images-idx3-ubyte.gz").read_bytes())
    with pytest.raises(DataFileError, match=r"t10k-labels-idx1-ubyte.gz is not a label file.*\(10, 28, 28\)"):
        load_raw_dataset(tmp_path / "root", "fashion_mnist", source)


# ------------------------------------------------------------------------------------------ image shapes


def _grey(n=3, h=28, w=28):
    return torch.randint(1, 256, (n, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_nothing_asked_leaves_the_images_alone():
    images = _grey()
    assert adapt_images(images) is images


def test_padding_puts_zeros_around_the_unchanged_image():
    images = _grey()  # no zero pixels: every zero in the output is padding
    out = adapt_images(images, image_size=32, resize_mode="pad")
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[:, 2:30, 2:30], images)
    assert int((out == 0).sum()) == 3 * (32 * 32 - 28 * 28)


def test_an_odd_margin_puts_the_extra_pixel_bottom_right():
    out = adapt_images(_grey(1, 4, 4), image_size=[7, 5], resize_mode="pad", channels=1)
    assert out.shape == (1, 1, 7, 5)
    assert torch.equal((out[0, 0] > 0).nonzero()[[0, -1]], torch.tensor([[1, 0], [4, 3]]))


def test_pad_refuses_to_shrink_naming_the_keys_and_the_fix():
    with pytest.raises(ValueError, match=r"`data_preparation.image_size` \[24, 24\].*28x28.*`resize_mode: resize`"):
        adapt_images(_grey(), image_size=24, resize_mode="pad")


def test_grey_images_replicate_to_three_equal_channels():
    images = _grey()
    out = adapt_images(images, channels=3)
    assert out.shape == (3, 3, 28, 28) and out.is_contiguous()
    assert all(torch.equal(out[:, c], images) for c in range(3))
    assert adapt_images(images, channels=1).shape == (3, 1, 28, 28)


def test_colour_images_are_never_turned_grey():
    with pytest.raises(ValueError, match=r"`data_preparation.channels` is 1 but the images have 3 channel.*null"):
        adapt_images(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), channels=1)


def test_unknown_resize_mode_is_named():
    with pytest.raises(ValueError, match=r"`data_preparation.resize_mode` must be 'pad' or 'resize', got 'crop'"):
        adapt_images(_grey(), image_size=32, resize_mode="crop")


@pytest.mark.parametrize("size", [32, (20, 36)])
def test_resize_keeps_a_flat_image_flat_and_colour_4d(size):
    images = torch.full((4, 3, 28, 28), 77, dtype=torch.uint8)
    out = adapt_images(images, image_size=size, resize_mode="resize")
    hw = (size, size) if isinstance(size, int) else size
    assert out.shape == (4, 3, *hw) and out.dtype == torch.uint8
    assert bool((out == 77).all())


def test_resize_is_antialiased_and_rounded():
    stripes = torch.tensor([0, 255, 0, 0] * 8, dtype=torch.uint8).expand(32, 32).reshape(1, 1, 32, 32)
    out = resize_images(stripes, 8, 8)
    # each output pixel averages its 4 columns (63.75 -> 64); plain bilinear would sample 2 of them (127.5)
    assert out.dtype == torch.uint8 and bool((out[..., 1:-1] == 64).all())


def test_resize_in_chunks_equals_one_pass():
    images = _grey(7).unsqueeze(1)
    assert torch.equal(resize_images(images, 20, 20, chunk_size=3), resize_images(images, 20, 20, chunk_size=100))


def test_grey_resized_and_replicated_for_a_colour_model():
    out = adapt_images(_grey(), image_size=32, resize_mode="resize", channels=3)
    assert out.shape == (3, 3, 32, 32) and torch.equal(out[:, 0], out[:, 2])


# ---------------------------------------------------------------------------------- CIFAR python batches


@pytest.mark.parametrize("py2_style", [False, True])
def test_cifar10_is_read_through_torchvision_as_n_c_h_w(tmp_path, py2_style):
    source = write_fake_cifar(tmp_path / "src", "cifar10", per_batch=6, n_test=10, py2_style=py2_style)
    data = load_raw_dataset(tmp_path / "root", "cifar10", source)
    batches = [read_fake_cifar_batch(source / "cifar-10-batches-py" / f"data_batch_{i}") for i in range(1, 6)]
    expected = torch.from_numpy(np.concatenate([b["data"] for b in batches])).view(30, 3, 32, 32)
    assert data["train_images"].dtype == torch.uint8 and data["test_images"].shape == (10, 3, 32, 32)
    assert torch.equal(data["train_images"], expected)  # channel planes R, G, B stay planes
    assert data["train_labels"].tolist() == [v for b in batches for v in b["labels"]]
    assert (tmp_path / "root" / "cifar-10-batches-py" / "batches.meta").is_file()


def test_cifar100_reads_the_fine_labels_from_the_folder_itself(tmp_path):
    source = write_fake_cifar(tmp_path / "src", "cifar100", per_batch=6, n_test=10) / "cifar-100-python"
    data = load_raw_dataset(tmp_path / "root", "cifar100", source)
    train = read_fake_cifar_batch(source / "train")
    assert data["train_images"].shape == (30, 3, 32, 32)
    assert data["train_labels"].tolist() == train["fine_labels"] and max(train["fine_labels"]) >= 20


def test_a_malicious_cifar_batch_is_refused_without_running_code(tmp_path):
    class RunsAShellCommand:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    source = write_fake_cifar(tmp_path / "src", "cifar10")
    (source / "cifar-10-batches-py" / "data_batch_3").write_bytes(cifar_pickle({"data": RunsAShellCommand()}))
    with pytest.raises(DataFileError, match=r"data_batch_3 is not a CIFAR file: it asks for posix.system.*refused"):
        load_raw_dataset(tmp_path / "root", "cifar10", source)
    assert not (tmp_path / "pwned").exists()


def test_a_malicious_staged_copy_is_replaced_before_torchvision_reads_it(tmp_path):
    class RunsAShellCommand:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    source = write_fake_cifar(tmp_path / "src", "cifar10")
    staged = tmp_path / "root" / "cifar-10-batches-py"
    staged.mkdir(parents=True)
    (staged / "test_batch").write_bytes(cifar_pickle({"data": RunsAShellCommand()}))
    data = load_raw_dataset(tmp_path / "root", "cifar10", source)
    assert data["test_images"].shape == (10, 3, 32, 32) and not (tmp_path / "pwned").exists()


def test_a_truncated_cifar_batch_is_refused_naming_the_file(tmp_path):
    source = write_fake_cifar(tmp_path / "src", "cifar10")
    batch = source / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:-500])
    with pytest.raises(DataFileError, match=r"data_batch_2 is truncated or corrupt.*cifar-10-python.tar.gz"):
        load_raw_dataset(tmp_path / "root", "cifar10", source)


def test_cifar_labels_out_of_range_are_refused(tmp_path):
    source = write_fake_cifar(tmp_path / "src", "cifar10")
    path = source / "cifar-10-batches-py" / "test_batch"
    batch = read_fake_cifar_batch(path)
    batch["labels"][4] = 10
    path.write_bytes(cifar_pickle(batch))
    with pytest.raises(DataFileError, match=r"test_batch holds 1 label\(s\) outside 0..9 \(e.g. 10\)"):
        load_raw_dataset(tmp_path / "root", "cifar10", source)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("data", np.zeros((6, 3072), np.float32), r"`data` must be uint8 \(N, 3072\), got float32 \(6, 3072\)"),
        ("data", np.zeros((6, 1024), np.uint8), r"`data` must be uint8 \(N, 3072\), got uint8 \(6, 1024\)"),
        ("labels", [1, 2], r"`labels` must be a list of 6 ints"),
    ],
)
def test_a_cifar_batch_with_wrong_content_is_refused(tmp_path, key, value, message):
    source = write_fake_cifar(tmp_path / "src", "cifar10", per_batch=6)
    path = source / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(cifar_pickle({**read_fake_cifar_batch(path), key: value}))
    with pytest.raises(DataFileError, match="data_batch_1 is not a cifar10 batch: " + message):
        load_raw_dataset(tmp_path / "root", "cifar10", source)


def test_a_missing_cifar_file_says_how_to_get_it(tmp_path):
    source = write_fake_cifar(tmp_path / "src", "cifar100")
    (source / "cifar-100-python" / "meta").unlink()
    with pytest.raises(
        DataFileError, match=r"Missing raw data file meta for dataset 'cifar100'.*cifar-100-python.tar.gz"
    ):
        load_raw_dataset(tmp_path / "root", "cifar100", source)


def test_an_unknown_dataset_name_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"`dataset.name` must be one of \['cifar10', 'cifar100', 'fashion_mnist'"):
        load_raw_dataset(tmp_path, "svhn", tmp_path)


def test_an_image_file_of_another_shape_is_refused(tmp_path):
    source = write_fake_dataset(tmp_path / "src", n_train=30, n_test=10)
    write_idx(source / "train-images-idx3-ubyte", np.zeros((30, 784), np.uint8), compress=True)
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte.gz is not an image file.*\(30, 784\)"):
        load_raw_dataset(tmp_path / "root", "fashion_mnist", source)
