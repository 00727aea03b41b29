"""Atomic file writes: a reader sees the previous file or the new one, never half of one.

Every writer goes to a temporary file in the target's folder (same file system), which is flushed and
fsync'ed and then renamed over the target with ``os.replace`` (atomic on POSIX and Windows). A write that
fails (disk full, file size limit, ...) removes the temporary file, leaves the previous file as it was and
raises :class:`AtomicWriteError` naming the target and the cause.

Writers that turn an ``OSError`` into their own error type (``torch.save``'s zip writer raises
``RuntimeError``) should serialise to bytes first and use :func:`write_bytes`.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"  # temporary files and folders are named ".<target name>.<random>.tmp"

_SPACE = "free space or raise the limit"
_ACCESS = "make the folder writable for this user"
_REASONS = {  # errno -> (cause, what to do)
    errno.EFBIG: ("file too large for this process's file size limit (ulimit -f)", _SPACE),
    errno.ENOSPC: ("no space left on device", _SPACE),
    errno.EDQUOT: ("disk quota exceeded", _SPACE),
    errno.EACCES: ("permission denied", _ACCESS),
    errno.EPERM: ("operation not permitted", _ACCESS),
    errno.EROFS: ("read-only file system", "write the outputs to a writable file system"),
}

_UMASK = os.umask(0o022)  # read the process umask (there is no getter) and put it back
os.umask(_UMASK)


class AtomicWriteError(OSError):
    """A file could not be written; the previous file at ``path`` (if any) is unchanged."""

    def __init__(self, path: str | Path, cause: OSError):
        self.path = Path(path)
        reason, fix = _REASONS.get(cause.errno or -1, (cause.strerror or str(cause), "fix the cause"))
        message = (
            f"could not write {self.path}: {reason} ({cause}). The previous file, if any, is unchanged and no "
            f"temporary file is left; {fix}, then run the step again."
        )
        if cause.errno is None:
            super().__init__(message)
        else:
            super().__init__(cause.errno, message)


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file or folder this module creates (left behind only by a killed process)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name beside ``path``; on a clean exit the file written there replaces ``path``.

    For writers that take a file name (``torch.onnx.export``, ``torch.jit.save``); missing parent folders
    are created. Whatever goes wrong, the temporary file is removed and ``path`` keeps its old content.

    Raises:
        AtomicWriteError: creating, writing, fsync or rename failed (an ``OSError``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.close(fd)
    except OSError as exc:
        raise AtomicWriteError(path, exc) from exc
    tmp = Path(name)
    try:
        tmp.chmod(0o666 & ~_UMASK)  # as a plain open() would create it (mkstemp makes it private)
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AtomicWriteError(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path``.

    Args:
        path: the target file; missing parent folders are created.
        mode: ``"w"`` or ``"wb"`` (``"x"``/``"xb"`` are treated alike); appending cannot be atomic.
        open_kwargs: passed to ``open`` (``encoding``, ``newline``, ...).

    Raises:
        AtomicWriteError: the write, flush, fsync or rename failed (an ``OSError``).
        ValueError: ``mode`` is not a write mode.
    """
    if mode.replace("x", "w").replace("t", "") not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode.replace("x", "w"), **open_kwargs) as handle:
        yield handle


def write_bytes(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as handle:
        handle.write(payload)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Fill a temporary folder beside ``path``; on a clean exit it takes the place of ``path``.

    The old folder is renamed aside, the new one renamed in, then the old one deleted: a reader never
    sees a half-filled folder (a kill between the two renames leaves ``path`` missing and the old folder
    inside ``.<name>.<random>.tmp``). Writers may use plain file names under the yielded folder.

    Raises:
        AtomicWriteError: creating, filling or renaming the folder failed (an ``OSError``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX))
        tmp.chmod(0o777 & ~_UMASK)
    except OSError as exc:
        raise AtomicWriteError(path, exc) from exc
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync_file(file)
        _swap_in(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AtomicWriteError(path, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, path: Path) -> None:
    """Rename ``new`` to ``path``, moving an existing ``path`` aside first and deleting it afterwards."""
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX))
        os.replace(path, old / path.name)
    os.replace(new, path)
    _fsync_folder(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
