"""Image datasets: stage and validate the raw files, read them with torchvision, adapt their shape, split them.

Offline, the raw files come from a local folder the user points ``dataset.source_dir`` at:

- MNIST-like IDX files (Debian's ``dataset-fashion-mnist`` puts them in /usr/share/datasets/fashion-mnist
  as .gz files whose checksums torchvision does not know). torchvision reads the *unzipped* files from
  ``<root>/<ClassName>/raw/``, so we validate each file, decompress it there, and let torchvision's
  dataset class do the reading.
- CIFAR-10/100 python batches (pickles). Each one is validated with a restricted unpickler (no code can run,
  see ``core.safe_pickle``) and its validated bytes are written to ``<root>/<base_folder>/``; only then does
  torchvision unpickle them (see ``_ValidatedCIFAR10``).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets as tv_datasets

from evoprune.core import atomic

# dataset name -> torchvision class; every one of them uses the same four IDX files.
DATASET_CLASSES: dict[str, type[tv_datasets.MNIST]] = {
    "fashion_mnist": tv_datasets.FashionMNIST,
    "mnist": tv_datasets.MNIST,
}
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
NUM_CLASSES = {"fashion_mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}
NATIVE_SHAPE = {"fashion_mnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}


def prepared_shape(
    dataset: str, image_size: int | tuple[int, int] | list[int] | None, channels: int | None
) -> tuple[int, int, int]:
    """One prepared image's shape (C, H, W): the dataset's own, changed by data_preparation's
    ``image_size`` and ``channels``."""
    c, h, w = NATIVE_SHAPE[dataset]
    if image_size is not None:
        h, w = _size_hw(image_size)
    return (channels or c), h, w


def check_data_fits_model(
    dataset: str,
    image_size: int | tuple[int, int] | list[int] | None,
    channels: int | None,
    model_shape: tuple[int, int, int],
    model_classes: int,
) -> None:
    """Fail before any training if the prepared images or labels do not fit ``train_dense.model``."""
    shape = prepared_shape(dataset, image_size, channels)
    if tuple(shape) != tuple(model_shape):
        raise ValueError(
            f"data_preparation gives {dataset} images of shape {shape} (C, H, W) but train_dense.model expects "
            f"{tuple(model_shape)} (in_channels, input_size). Set data_preparation.image_size / channels "
            f"(e.g. image_size: {model_shape[1]}, channels: {model_shape[0]}) or the model's in_channels / input_size."
        )
    if model_classes != NUM_CLASSES[dataset]:
        raise ValueError(
            f"{dataset} has {NUM_CLASSES[dataset]} classes but train_dense.model.num_classes is {model_classes}; "
            "set num_classes to match."
        )


_HOW_TO_GET = {
    "fashion_mnist": "install Debian's package (`apt-get install dataset-fashion-mnist`, files land in "
    "/usr/share/datasets/fashion-mnist)",
    "mnist": "copy the four MNIST IDX files (.gz or unzipped) into one folder",
    "cifar10": "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it "
    "(it holds cifar-10-batches-py/)",
    "cifar100": "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it "
    "(it holds cifar-100-python/)",
}
# IDX type byte -> bytes per element (uint8, int8, int16, int32, float32, float64)
_IDX_ITEMSIZE = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
_PARAMS_FILE = "conf/base/parameters_data_preparation.yml"


class DataFileError(RuntimeError):
    """A raw data file is missing, truncated, corrupt or holds values it cannot hold."""


def _fix_hint(dataset: str) -> str:
    return (
        f"To get it: {_HOW_TO_GET[dataset]} and set `dataset.source_dir` in conf/base/globals.yml "
        "(or conf/local/globals.yml) to that folder, or set `dataset.download: true` on a machine "
        "with internet access."
    )


STAGING_MANIFEST = ".staged_from.json"  # staged file name -> the source file it was copied from (path, size, mtime)


def source_stamp(path: Path) -> dict[str, object]:
    """What identifies a source file's content cheaply: its resolved path, size and modification time."""
    stat = path.stat()
    return {"source": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_staging_manifest(folder: Path) -> dict[str, dict[str, object]]:
    """The staging record of ``folder`` (empty when missing or unreadable: every file is staged again)."""
    try:
        manifest = json.loads((folder / STAGING_MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def write_staging_manifest(folder: Path, manifest: dict[str, dict[str, object]]) -> None:
    atomic.write_bytes(folder / STAGING_MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())


def is_staged_from(target: Path, source: Path, manifest: dict[str, dict[str, object]], validate) -> bool:
    """True when ``target`` was staged from ``source`` as it is now and still passes ``validate(bytes)``;
    a stale or broken copy is deleted (the caller stages it again)."""
    if not target.exists():
        return False
    if manifest.get(target.name) == source_stamp(source):
        try:
            validate(target.read_bytes())
            return True
        except DataFileError:
            pass
    target.unlink()
    return False


def _check_labels(labels: np.ndarray, name: str, dataset: str) -> None:
    """Labels must lie in [0, number of classes of ``dataset``)."""
    num_classes = NUM_CLASSES[dataset]
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise DataFileError(
            f"{name} holds {bad.size} label(s) outside 0..{num_classes - 1} (e.g. {int(bad[0])}): it is not a "
            f"{dataset} label file, or it is corrupt."
        )


# ---------------------------------------------------------------------------------------------- IDX files


def parse_idx_header(payload: bytes, name: str) -> tuple[int, ...]:
    """Check an IDX file's header and length; return its shape.

    Args:
        payload: the whole (decompressed) file content.
        name: the file's name, quoted in errors.

    Returns:
        The shape stored in the header, e.g. ``(60000, 28, 28)``.

    Raises:
        DataFileError: if the magic number is wrong or the file is shorter/longer than its header says.
    """
    if len(payload) < 4 or payload[0] != 0 or payload[1] != 0 or payload[2] not in _IDX_ITEMSIZE:
        raise DataFileError(f"{name} is not an IDX file (bad magic number {payload[:4]!r}).")
    ndim = payload[3]
    header_len = 4 + 4 * ndim
    if ndim == 0 or len(payload) < header_len:
        raise DataFileError(f"{name} is truncated: its IDX header is incomplete.")
    shape = tuple(int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_len + _IDX_ITEMSIZE[payload[2]] * int(torch.tensor(shape).prod())
    if len(payload) != expected:
        kind = "truncated" if len(payload) < expected else "longer than its header says"
        raise DataFileError(
            f"{name} is {kind}: header says shape {shape} ({expected} bytes), file has {len(payload)} bytes."
        )
    return shape


def _validate_idx(payload: bytes, name: str, dataset: str) -> None:
    """Header and length of every IDX file; a label file must also be 1-D uint8 with labels in range."""
    shape = parse_idx_header(payload, name)
    if "labels" in Path(name).name:
        if len(shape) != 1 or payload[2] != 0x08:
            raise DataFileError(f"{name} is not a label file: expected 1-D uint8 labels, header says shape {shape}.")
        _check_labels(np.frombuffer(payload, np.uint8, offset=8), name, dataset)
    elif len(shape) != 3 or payload[2] != 0x08:
        raise DataFileError(f"{name} is not an image file: expected uint8 images (N, H, W), header says shape {shape}.")


def _read_payload(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (EOFError, OSError) as exc:  # truncated or not gzip at all
        raise DataFileError(f"{path} is a corrupt or truncated gzip file ({exc}).") from exc


def stage_raw_files(source_dir: str | Path, raw_dir: str | Path, dataset: str) -> Path:
    """Validate the four IDX files in ``source_dir`` and unzip them into ``raw_dir``.

    A staged file is kept only while its source file is the one it was staged from (same path, size and
    modification time, recorded in ``raw_dir/.staged_from.json``) and it still validates; otherwise it
    is staged again. Each file may be plain or ``.gz``.

    Returns:
        ``raw_dir``, holding the four unzipped, validated files.
    """
    source_dir, raw_dir = Path(source_dir), Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    staged_from = read_staging_manifest(raw_dir)
    for name in IDX_FILES:
        candidates = [source_dir / name, source_dir / f"{name}.gz"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise DataFileError(
                f"Missing raw data file {name}(.gz) for dataset '{dataset}' in {source_dir}. " + _fix_hint(dataset)
            )
        target = raw_dir / name
        if is_staged_from(target, found, staged_from, lambda b, t=target: _validate_idx(b, str(t), dataset)):
            continue
        payload = _read_payload(found)
        try:
            _validate_idx(payload, str(found), dataset)
        except DataFileError as exc:
            raise DataFileError(f"{exc} {_fix_hint(dataset)}") from exc
        atomic.write_bytes(target, payload)
        staged_from[name] = source_stamp(found)
        write_staging_manifest(raw_dir, staged_from)
    return raw_dir


# ------------------------------------------------------------------------------------------- any dataset


def _read_split(dataset: str, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split through torchvision: images uint8 (N, H, W) or (N, 3, H, W), labels int64 (N,)."""
    if dataset in DATASET_CLASSES:
        ds = DATASET_CLASSES[dataset](root=str(root), train=train, download=download)
        return ds.data.to(torch.uint8), ds.targets.to(torch.int64)
    from evoprune.core.cifar import CIFAR_CLASSES

    official, validated, _ = CIFAR_CLASSES[dataset]
    ds = (official if download else validated)(root=str(root), train=train, download=download)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # torchvision's (N, H, W, C) -> (N, C, H, W)
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)


def load_raw_dataset(
    root: str | Path, dataset: str, source_dir: str | Path | None, download: bool = False
) -> dict[str, torch.Tensor]:
    """Validate and stage the raw files, then read them with torchvision's dataset class.

    Args:
        root: torchvision root; IDX files live in ``<root>/<ClassName>/raw/``, CIFAR batches in
            ``<root>/cifar-10-batches-py/`` or ``<root>/cifar-100-python/``.
        dataset: one of ``NUM_CLASSES`` (``fashion_mnist``, ``mnist``, ``cifar10``, ``cifar100``).
        source_dir: folder with the raw files (the four IDX files, plain or .gz; or the unpacked CIFAR
            folder or the folder above it), staged into the root first; ignored when ``download`` is true.
        download: let torchvision download the files (needs internet).

    Returns:
        ``train_images`` uint8 (N, 28, 28) for the MNIST family or (N, 3, 32, 32) for CIFAR,
        ``train_labels`` (N,) int64, ``test_images``, ``test_labels``.
    """
    if dataset not in NUM_CLASSES:
        raise ValueError(
            f"`dataset.name` must be one of {sorted(NUM_CLASSES)}, got '{dataset}' (conf/base/globals.yml)."
        )
    if not download:
        if source_dir is None:
            raise DataFileError(f"No `dataset.source_dir` given for '{dataset}'. " + _fix_hint(dataset))
        if dataset in DATASET_CLASSES:
            stage_raw_files(source_dir, Path(root) / DATASET_CLASSES[dataset].__name__ / "raw", dataset)
        else:
            from evoprune.core.cifar import stage_cifar_files

            stage_cifar_files(source_dir, root, dataset)
    out: dict[str, torch.Tensor] = {}
    for split, train in (("train", True), ("test", False)):
        images, labels = _read_split(dataset, Path(root), train, download)
        if images.shape[0] != labels.shape[0]:
            raise DataFileError(
                f"{dataset} {split}: {images.shape[0]} images but {labels.shape[0]} labels; "
                "the image and label files do not belong together. " + _fix_hint(dataset)
            )
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return out


# ------------------------------------------------------------------------------------------ image shapes


def _size_hw(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if h < 1 or w < 1:
        raise ValueError(f"`data_preparation.image_size` must be positive pixels, got {image_size} ({_PARAMS_FILE}).")
    return int(h), int(w)


def pad_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre uint8 images (N, C, H, W) on a zero canvas (N, C, height, width); an odd margin's extra
    pixel goes to the bottom/right. E.g. 28 -> 32 adds 2 pixels on each side."""
    n, c, h, w = images.shape
    if height < h or width < w:
        raise ValueError(
            f"`data_preparation.image_size` [{height}, {width}] is smaller than the images ({h}x{w}) and "
            f"`data_preparation.resize_mode` is 'pad', which cannot shrink them: set `resize_mode: resize` "
            f"or an `image_size` of at least [{h}, {w}] ({_PARAMS_FILE})."
        )
    top, left = (height - h) // 2, (width - w) // 2
    out = images.new_zeros(n, c, height, width)
    out[:, :, top : top + h, left : left + w] = images
    return out


def resize_images(images: torch.Tensor, height: int, width: int, chunk_size: int = 4096) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 images (N, C, H, W) to (N, C, height, width), rounded back to
    uint8; ``chunk_size`` images at a time bound the float copy's memory."""
    out = images.new_empty(images.shape[0], images.shape[1], height, width)
    for start in range(0, images.shape[0], chunk_size):
        chunk = images[start : start + chunk_size].float()
        resized = F.interpolate(chunk, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + chunk_size] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def adapt_images(
    images: torch.Tensor,
    image_size: int | tuple[int, int] | list[int] | None = None,
    resize_mode: str = "pad",
    channels: int | None = None,
) -> torch.Tensor:
    """Bring uint8 images to the model's input shape, on the CPU, without a per-image loop.

    Args:
        images: uint8 (N, H, W) or (N, C, H, W).
        image_size: ``None`` keeps the size; a side, or (height, width), in pixels.
        resize_mode: ``pad`` (centre zero-padding; cannot shrink) or ``resize`` (antialiased bilinear).
        channels: ``None`` keeps the channels; 1, or 3 (a grey image is replicated to 3 equal channels).

    Returns:
        uint8 (N, C, H', W') when ``channels`` is set or the images have a channel axis, else (N, H', W').
        ``images`` itself when nothing is asked.
    """
    if resize_mode not in ("pad", "resize"):
        raise ValueError(
            f"`data_preparation.resize_mode` must be 'pad' or 'resize', got {resize_mode!r} ({_PARAMS_FILE})."
        )
    if image_size is None and channels is None:
        return images
    x = images if images.dim() == 4 else images.unsqueeze(1)  # (N, C, H, W)
    have = x.shape[1]
    if channels is not None and channels != have and not (have == 1 and channels == 3):
        fix = "set `channels: null` to keep them" if have == 3 else "set `channels: null` or `channels: 3`"
        raise ValueError(
            f"`data_preparation.channels` is {channels} but the images have {have} channel(s); only grey images "
            f"can be replicated to 3 channels, and colour images are never turned grey: {fix} ({_PARAMS_FILE})."
        )
    if image_size is not None and (hw := _size_hw(image_size)) != tuple(x.shape[2:]):
        x = pad_images(x, *hw) if resize_mode == "pad" else resize_images(x, *hw)
    if channels is not None and channels != have:
        x = x.expand(-1, channels, -1, -1)
    return x.contiguous() if channels is not None or images.dim() == 4 else x.squeeze(1).contiguous()


# ------------------------------------------------------------------------------------------------ splits


def make_split(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """One split as a dict of tensors: ``images`` uint8 (N, H, W) or (N, C, H, W) and ``labels`` (N,) int64."""
    return {"images": images.contiguous(), "labels": labels.contiguous()}


def split_train_validation(
    images: torch.Tensor, labels: torch.Tensor, validation_size: int, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Seeded random split of the training set into train and validation splits."""
    n = images.shape[0]
    if not 0 < validation_size < n:
        raise ValueError(
            f"`data_preparation.validation_size` must be between 1 and {n - 1} "
            f"(the training set has {n} images), got {validation_size}."
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:validation_size], order[validation_size:]
    return make_split(images[train_idx], labels[train_idx]), make_split(images[val_idx], labels[val_idx])


def draw_samples(
    split: dict[str, torch.Tensor], count: int, seed: int, needed_by: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` samples of ``split`` (uint8 images, as the pipelines hold them) drawn without replacement with
    ``seed`` (all of them when it holds fewer): float images and labels. An empty split is refused, naming
    ``needed_by``, what needs the images."""
    total = split["labels"].shape[0]
    if not total:
        raise ValueError(f"the split is empty; {needed_by} need calibration images.")
    pick = torch.as_tensor(np.random.default_rng(seed).choice(total, min(count, total), replace=False))
    return images_to_float(split["images"][pick]), split["labels"][pick]


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, C, H, W) -> float (N, C, H, W) scaled to [-1, 1]."""
    x = images if images.dim() == 4 else images.unsqueeze(1)
    return x.float().div_(127.5).sub_(1.0)
