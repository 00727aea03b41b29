"""MNIST-like image datasets: stage the raw IDX files, read them with torchvision, split them.

Offline, the raw files come from a local folder (Debian's ``dataset-fashion-mnist`` puts them in
/usr/share/datasets/fashion-mnist as .gz files whose checksums torchvision does not know).
torchvision reads the *unzipped* files from ``<root>/<ClassName>/raw/``, so we validate each file,
decompress it there, and let torchvision's dataset class do the reading.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import torch
from torchvision import datasets as tv_datasets

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
_HOW_TO_GET = {
    "fashion_mnist": "install Debian's package (`apt-get install dataset-fashion-mnist`, files land in "
    "/usr/share/datasets/fashion-mnist)",
    "mnist": "copy the four MNIST IDX files (.gz or unzipped) into one folder",
}
# IDX type byte -> bytes per element (uint8, int8, int16, int32, float32, float64)
_IDX_ITEMSIZE = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


class DataFileError(RuntimeError):
    """A raw data file is missing, truncated or not an IDX file."""


def _fix_hint(dataset: str) -> str:
    return (
        f"To get it: {_HOW_TO_GET[dataset]} and set `dataset.source_dir` in conf/base/globals.yml "
        "(or conf/local/globals.yml) to that folder, or set `dataset.download: true` on a machine "
        "with internet access."
    )


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

    Files already staged and valid are kept. Each file may be plain or ``.gz``.

    Returns:
        ``raw_dir``, holding the four unzipped, validated files.
    """
    source_dir, raw_dir = Path(source_dir), Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        target = raw_dir / name
        if target.exists():
            try:
                parse_idx_header(target.read_bytes(), str(target))
                continue
            except DataFileError:
                target.unlink()  # a broken copy of ours: stage it again from the source
        candidates = [source_dir / name, source_dir / f"{name}.gz"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise DataFileError(
                f"Missing raw data file {name}(.gz) for dataset '{dataset}' in {source_dir}. " + _fix_hint(dataset)
            )
        payload = _read_payload(found)
        try:
            parse_idx_header(payload, str(found))
        except DataFileError as exc:
            raise DataFileError(f"{exc} {_fix_hint(dataset)}") from exc
        tmp = target.with_suffix(".part")
        tmp.write_bytes(payload)
        shutil.move(tmp, target)
    return raw_dir


def load_raw_dataset(
    root: str | Path, dataset: str, source_dir: str | Path | None, download: bool = False
) -> dict[str, torch.Tensor]:
    """Read an MNIST-like dataset with torchvision's dataset class.

    Args:
        root: torchvision root; files live in ``<root>/<ClassName>/raw/``.
        dataset: one of ``DATASET_CLASSES``.
        source_dir: folder with the four IDX files (plain or .gz), staged into the root first;
            ignored when ``download`` is true.
        download: let torchvision download the files (needs internet).

    Returns:
        ``train_images`` (N, 28, 28) uint8, ``train_labels`` (N,) int64, ``test_images``, ``test_labels``.
    """
    if dataset not in DATASET_CLASSES:
        raise ValueError(f"Unknown dataset '{dataset}'; choose one of {sorted(DATASET_CLASSES)}.")
    cls = DATASET_CLASSES[dataset]
    if not download:
        if source_dir is None:
            raise DataFileError(f"No `dataset.source_dir` given for '{dataset}'. " + _fix_hint(dataset))
        stage_raw_files(source_dir, Path(root) / cls.__name__ / "raw", dataset)
    out: dict[str, torch.Tensor] = {}
    for split, train in (("train", True), ("test", False)):
        ds = cls(root=str(root), train=train, download=download)
        images, labels = ds.data.to(torch.uint8), ds.targets.to(torch.int64)
        if images.shape[0] != labels.shape[0]:
            raise DataFileError(
                f"{dataset} {split}: {images.shape[0]} images but {labels.shape[0]} labels; "
                "the image and label files do not belong together. " + _fix_hint(dataset)
            )
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return out


def make_split(images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """One split as a dict of tensors: ``images`` (N, H, W) uint8 and ``labels`` (N,) int64."""
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


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, C, H, W) -> float (N, C, H, W) scaled to [-1, 1]."""
    x = images if images.dim() == 4 else images.unsqueeze(1)
    return x.float().div_(127.5).sub_(1.0)
