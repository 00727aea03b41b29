"""CIFAR-10/100 python batches: validated without running code, then read by torchvision.

The batches are pickles. Each file is first opened by a restricted unpickler (``core.safe_pickle``)
that allows only numpy's array globals; its ``data`` (uint8, N x 3072), labels and meta file are
checked; only those validated bytes are staged for torchvision's ``CIFAR10``/``CIFAR100`` classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision import datasets as tv_datasets

from evoprune.core import atomic
from evoprune.core.data import (
    NUM_CLASSES,
    DataFileError,
    _check_labels,
    _fix_hint,
    is_staged_from,
    read_staging_manifest,
    source_stamp,
    write_staging_manifest,
)
from evoprune.core.safe_pickle import ForbiddenGlobalError, restricted_loads


class _ValidatedCIFAR10(tv_datasets.CIFAR10):
    """torchvision's CIFAR10 reading files that ``stage_cifar_files`` has just validated.

    torchvision checks the md5 sum of each official file before unpickling it; our own copies (and the
    tiny files the tests write) have other sums. Here the sums are ``None``, which makes torchvision's
    ``check_integrity`` test only that the file exists. That is safe only because every file in
    ``<root>/<base_folder>/`` was validated by ``_validate_cifar`` (restricted unpickler: no code runs;
    keys, dtype, shape and label range checked) in the same ``load_raw_dataset`` call, and because it was
    written there from the very bytes that were validated. With ``dataset.download: true`` the plain
    torchvision classes run instead, with their md5 checks of the official files.
    """

    train_list = [[name, None] for name, _ in tv_datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in tv_datasets.CIFAR10.test_list]
    meta = {**tv_datasets.CIFAR10.meta, "md5": None}


class _ValidatedCIFAR100(tv_datasets.CIFAR100):
    """torchvision's CIFAR100 without md5 sums; see ``_ValidatedCIFAR10`` for why that is safe."""

    train_list = [[name, None] for name, _ in tv_datasets.CIFAR100.train_list]
    test_list = [[name, None] for name, _ in tv_datasets.CIFAR100.test_list]
    meta = {**tv_datasets.CIFAR100.meta, "md5": None}


# dataset name -> (torchvision class, class used on validated copies, key of the labels in a batch)
CIFAR_CLASSES: dict[str, tuple[type[tv_datasets.CIFAR10], type[tv_datasets.CIFAR10], str]] = {
    "cifar10": (tv_datasets.CIFAR10, _ValidatedCIFAR10, "labels"),
    "cifar100": (tv_datasets.CIFAR100, _ValidatedCIFAR100, "fine_labels"),
}


def cifar_files(dataset: str) -> tuple[str, ...]:
    """File names of a CIFAR dataset: training batches, test batch(es), then the meta file."""
    cls = CIFAR_CLASSES[dataset][0]
    return (*(name for name, _ in cls.train_list + cls.test_list), cls.meta["filename"])


def _validate_cifar(payload: bytes, name: str, dataset: str) -> None:
    """Unpickle a CIFAR file without running code and check it holds what torchvision will read.

    A batch: ``data`` uint8 (N, 3072), labels (``labels`` or ``fine_labels``) a list of N ints in range.
    The meta file: the class names torchvision reads (``label_names`` or ``fine_label_names``).
    """
    cls, _, labels_key = CIFAR_CLASSES[dataset]
    try:
        content = restricted_loads(payload)
    except ForbiddenGlobalError as exc:
        raise DataFileError(
            f"{name} is not a CIFAR file: {exc} (a CIFAR batch needs only numpy arrays); refused."
        ) from None
    except Exception as exc:  # truncated or malformed pickles raise many kinds of errors
        raise DataFileError(
            f"{name} is truncated or corrupt: it does not unpickle ({type(exc).__name__}: {exc})."
        ) from exc
    if not isinstance(content, dict):
        raise DataFileError(f"{name} is not a CIFAR file: it holds a {type(content).__name__}, not a dict.")
    if Path(name).name == cls.meta["filename"]:
        names = content.get(cls.meta["key"])
        if not (
            isinstance(names, list) and len(names) == NUM_CLASSES[dataset] and all(isinstance(n, str) for n in names)
        ):
            raise DataFileError(f"{name} is not a {dataset} meta file: no list of {NUM_CLASSES[dataset]} class names.")
        return
    labels_key = "labels" if "labels" in content else labels_key  # the key torchvision reads
    data, labels = content.get("data"), content.get(labels_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFileError(f"{name} is not a {dataset} batch: `data` must be uint8 (N, 3072), got {found}.")
    if not (isinstance(labels, list) and len(labels) == data.shape[0] and all(type(v) is int for v in labels)):
        raise DataFileError(f"{name} is not a {dataset} batch: `{labels_key}` must be a list of {data.shape[0]} ints.")
    _check_labels(np.asarray(labels, dtype=np.int64), name, dataset)


def _cifar_source(source_dir: Path, base_folder: str) -> Path:
    """``source_dir`` may be the unpacked archive's folder (``cifar-10-batches-py``) or the folder above it."""
    return source_dir / base_folder if (source_dir / base_folder).is_dir() else source_dir


def stage_cifar_files(source_dir: str | Path, root: str | Path, dataset: str) -> Path:
    """Validate the CIFAR python batches in ``source_dir`` and copy them into ``<root>/<base_folder>/``.

    A staged file is kept only while its source file is unchanged (path, size, modification time) and it
    still validates; otherwise it is staged again from the source.

    Returns:
        The folder torchvision reads, holding the validated files.
    """
    base_folder = CIFAR_CLASSES[dataset][0].base_folder
    source, staged = _cifar_source(Path(source_dir), base_folder), Path(root) / base_folder
    staged.mkdir(parents=True, exist_ok=True)
    staged_from = read_staging_manifest(staged)
    for name in cifar_files(dataset):
        target, found = staged / name, source / name
        if not found.is_file():
            raise DataFileError(
                f"Missing raw data file {name} for dataset '{dataset}' in {source}. " + _fix_hint(dataset)
            )
        if is_staged_from(target, found, staged_from, lambda b, t=target: _validate_cifar(b, str(t), dataset)):
            continue
        payload = found.read_bytes()
        try:
            _validate_cifar(payload, str(found), dataset)
        except DataFileError as exc:
            raise DataFileError(f"{exc} {_fix_hint(dataset)}") from exc
        atomic.write_bytes(target, payload)
        staged_from[name] = source_stamp(found)
        write_staging_manifest(staged, staged_from)
    return staged
