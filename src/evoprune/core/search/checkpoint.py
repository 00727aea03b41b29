"""A search checkpoint: one file, written atomically, checked before a search resumes from it.

``<folder>/state.npz`` holds the population (X, F, G, CV, rank, crowding, accuracy, flops, params), the
log of every evaluated candidate (``log_*``) and, as a 0-d unicode array ``meta``, JSON with the format
tag, the search fingerprint, pymoo's counters, the random generator's state, the per-generation
statistics and a digest of the arrays. It is loaded with ``allow_pickle=False``.

A file that cannot be read, lacks the format tag (the old two-file layout), belongs to another search
(fingerprint), does not match its digest (torn) or whose shapes do not fit the problem raises
:class:`CheckpointError`; :func:`load_for_resume` then restarts the search (moving the file aside as
``state.npz.bad``) or stops, as the caller chooses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from evoprune.core import atomic
from evoprune.core.search.problem import EXTRA_VALUES, MaskSearchProblem

CHECKPOINT_FORMAT = "evoprune.search_checkpoint/1"
CHECKPOINT_FILE = "state.npz"
LEGACY_META_FILE = "state.json"  # the two-file layout before format 1 (npz and json written one after the other)
BAD_SUFFIX = ".bad"
ZIP_SIGNATURE = b"PK\x03\x04"  # how every .npz file starts
CHECKPOINT_FILES = {CHECKPOINT_FILE, LEGACY_META_FILE, CHECKPOINT_FILE + BAD_SUFFIX}
POPULATION_KEYS = ("X", "F", "G", "CV", "rank", "crowding", *EXTRA_VALUES)
LOG_KEYS = ("X", "F", "G", "accuracy", "generation")
OnBadCheckpoint = Literal["restart", "stop"]

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A search checkpoint that cannot be resumed; the message names the file and what is wrong."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(
            f"search checkpoint {path} {problem}. Delete it to start this search afresh, or set "
            "mask_search.on_bad_checkpoint: restart (conf/base/parameters_mask_search.yml) to do so automatically."
        )


@dataclass
class Checkpoint:
    """A checked checkpoint: population and log arrays, and the JSON metadata."""

    arrays: dict[str, np.ndarray]
    meta: dict


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save_checkpoint(folder: Path, algorithm, generations: list[dict], log: dict[str, list], fingerprint: str) -> Path:
    """Write ``<folder>/state.npz`` atomically: a reader sees the previous checkpoint or this one, whole.

    Returns: the file written.
    """
    pop = algorithm.pop
    arrays = {k: np.asarray(pop.get(k)) for k in POPULATION_KEYS}
    arrays = {k: v for k, v in arrays.items() if v.dtype != object}  # unset (e.g. GA has no rank): skipped
    arrays.update({f"log_{k}": np.concatenate(v) for k, v in log.items()})
    meta = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "n_iter": algorithm.n_iter,
        "n_eval": algorithm.evaluator.n_eval,
        "rng": algorithm.random_state.bit_generator.state,
        "generations": generations,
        "digest": _digest(arrays),
    }
    path = folder / CHECKPOINT_FILE
    with atomic.atomic_open(path, "wb") as handle:
        np.savez(handle, meta=np.array(json.dumps(meta, default=int)), **arrays)
    (folder / LEGACY_META_FILE).unlink(missing_ok=True)  # an old layout's half: never paired with this file
    return path


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read (and CRC-checked) now; CheckpointError if that fails."""
    try:
        with open(path, "rb") as handle:
            signature = handle.read(4)
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read ({exc})") from exc
    if signature != ZIP_SIGNATURE:
        raise CheckpointError(path, "is not an .npz archive (no zip signature: garbage, empty or another kind of file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise CheckpointError(path, f"is corrupt or truncated ({type(exc).__name__}: {exc})") from exc


def _read_meta(path: Path, arrays: dict[str, np.ndarray]) -> dict:
    """The JSON metadata stored as the 0-d unicode array ``meta``, with its format tag checked."""
    meta = arrays.pop("meta", None)
    if meta is None or meta.shape != () or meta.dtype.kind != "U":
        raise CheckpointError(
            path,
            "has no format tag: it was written by an older evoprune (state.npz + state.json) or is not a checkpoint",
        )
    try:
        meta = json.loads(str(meta))
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"has unreadable metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(path, f"has format {found!r}, expected {CHECKPOINT_FORMAT!r}")
    missing = sorted({"fingerprint", "n_iter", "n_eval", "rng", "generations", "digest"} - set(meta))
    if missing:
        raise CheckpointError(path, f"lacks the metadata {missing}")
    return meta


def _check_shapes(path: Path, arrays: dict[str, np.ndarray], problem: MaskSearchProblem) -> None:
    """Columns fit the problem (bits, objectives, constraints, exits); rows agree within population and log."""
    n_exits = problem.reference_accuracy.size
    columns = {"X": problem.n_var, "F": problem.n_obj, "G": problem.n_ieq_constr, "accuracy": n_exits}
    for prefix, keys in (("", ("X", "F", "G", "CV", "accuracy")), ("log_", LOG_KEYS)):
        missing = [prefix + k for k in keys if prefix + k not in arrays]
        if missing:
            raise CheckpointError(path, f"lacks the arrays {missing}")
        rows = {prefix + k: arrays[prefix + k].shape[0] if arrays[prefix + k].ndim else None for k in keys}
        if len(set(rows.values())) != 1:
            raise CheckpointError(path, f"has arrays of different lengths {rows}")
        for key, n in columns.items():
            shape = arrays[prefix + key].shape
            if len(shape) != 2 or shape[1] != n:
                raise CheckpointError(
                    path, f"does not fit this problem: {prefix}{key} has shape {shape}, expected (*, {n})"
                )


def _check_identity(path: Path, meta: dict, arrays: dict[str, np.ndarray], fingerprint: str) -> None:
    """The checkpoint is this search's (fingerprint) and whole (its arrays match the digest in its metadata)."""
    if meta["fingerprint"] != fingerprint:
        raise CheckpointError(
            path,
            f"belongs to another search (fingerprint {meta['fingerprint']}, this search {fingerprint}: other data, "
            "model, seed or settings)",
        )
    if meta["digest"] != _digest(arrays):
        raise CheckpointError(path, "is torn: its arrays do not match the digest in its metadata")


def _check_counters(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """pymoo's counters agree with the log, and numpy accepts the random generator state."""
    n_logged, n_generations = len(arrays["log_X"]), len(meta["generations"])
    if meta["n_eval"] != n_logged or meta["n_iter"] != n_generations + 1:  # pymoo's n_iter: the next generation
        raise CheckpointError(
            path,
            f"is inconsistent: pymoo counted {meta['n_eval']} evaluations and is at iteration {meta['n_iter']}, "
            f"the log holds {n_logged} candidates and {n_generations} generations (iteration {n_generations + 1})",
        )
    try:
        np.random.PCG64().state = meta["rng"]
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(path, f"holds an invalid random generator state ({exc})") from exc


def read_checkpoint(path: Path, problem: MaskSearchProblem, fingerprint: str) -> Checkpoint:
    """Read and check a checkpoint file (nothing is changed until every check has passed).

    Raises:
        CheckpointError: the file is corrupt, truncated, torn, of an older format, of another search, or
            its shapes do not fit ``problem``.
    """
    arrays = _read_npz(path)
    meta = _read_meta(path, arrays)
    _check_identity(path, meta, arrays, fingerprint)
    _check_shapes(path, arrays, problem)
    _check_counters(path, meta, arrays)
    return Checkpoint(arrays, meta)


def _set_aside(folder: Path) -> Path:
    """Move a bad checkpoint out of the way (``state.npz.bad``) and drop an old layout's ``state.json``."""
    file, bad = folder / CHECKPOINT_FILE, folder / (CHECKPOINT_FILE + BAD_SUFFIX)
    if file.exists():
        os.replace(file, bad)
    (folder / LEGACY_META_FILE).unlink(missing_ok=True)
    return bad


def load_for_resume(
    folder: Path, problem: MaskSearchProblem, fingerprint: str, on_bad: OnBadCheckpoint = "restart"
) -> Checkpoint | None:
    """The checkpoint in ``folder`` to resume from, or None to start afresh. Temporary files of a write
    killed midway are removed first.

    Args:
        on_bad: what a checkpoint that cannot be resumed does: ``restart`` logs a warning naming the file
            and the reason, moves it aside as ``state.npz.bad`` and returns None; ``stop`` raises.

    Raises:
        CheckpointError: with ``on_bad="stop"``, for a checkpoint that cannot be resumed.
    """
    if on_bad not in ("restart", "stop"):
        raise ValueError(f"on_bad_checkpoint must be 'restart' or 'stop', got {on_bad!r}")
    file, legacy = folder / CHECKPOINT_FILE, folder / LEGACY_META_FILE
    for leftover in folder.glob(f".{CHECKPOINT_FILE}.*{atomic.TEMP_SUFFIX}"):  # of a write killed midway
        leftover.unlink(missing_ok=True)
    if not file.exists() and not legacy.exists():
        return None
    try:
        if legacy.exists():
            raise CheckpointError(
                file if file.exists() else legacy,
                "is the old two-file layout (state.npz + state.json, written one after the other: the pair may "
                "come from two generations)",
            )
        return read_checkpoint(file, problem, fingerprint)
    except CheckpointError as exc:
        if on_bad == "stop":
            raise
        bad = _set_aside(folder)
        logger.warning("%s: %s; the search starts afresh (the file is kept as %s).", exc.path, exc.problem, bad)
        return None
