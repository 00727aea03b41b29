"""Unpickle files that hold numpy arrays without running code from them.

A pickle names the callables it wants called (``GLOBAL``/``STACK_GLOBAL`` opcodes, resolved by
``Unpickler.find_class``); a hostile file names ``os.system``. ``restricted_loads`` resolves only the names
in an allow-list and refuses every other one before anything is called. The default list is what a pickled
numpy array needs, e.g. a CIFAR python batch:

- ``numpy.core.multiarray._reconstruct`` (numpy < 2, as the CIFAR originals were written by Python 2's
  cPickle, protocol 2) or ``numpy._core.multiarray._reconstruct`` (numpy >= 2), ``numpy.ndarray`` and
  ``numpy.dtype``: an array is rebuilt as ``_reconstruct(ndarray, (0,), b"b")`` plus its state (shape,
  ``dtype(...)``, raw bytes);
- ``_codecs.encode``: Python 3 writes ``bytes`` under protocol <= 2 as ``_codecs.encode(text, "latin1")``;
  only that encoding is allowed.

Dicts, lists, strings and numbers need no globals at all.
"""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

# numpy's own array reconstructor, whichever module holds it in the installed numpy version.
_RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]


def _latin1_encode(text: str, encoding: str) -> bytes:
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} (only 'latin1' is allowed)")
    return codecs.encode(text, "latin1")


NUMPY_ARRAY_GLOBALS: Mapping[tuple[str, str], Callable[..., Any]] = MappingProxyType(
    {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
)


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list; nothing from it was called."""


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` only hands out the callables in ``allowed``."""

    def __init__(self, file: io.BufferedIOBase, allowed: Mapping[tuple[str, str], Callable[..., Any]], **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(f"it asks for {module}.{name}, which is not allowed") from None


def restricted_loads(
    payload: bytes,
    allowed: Mapping[tuple[str, str], Callable[..., Any]] = NUMPY_ARRAY_GLOBALS,
    encoding: str = "latin1",
) -> Any:
    """Unpickle ``payload`` resolving only the globals in ``allowed``.

    Args:
        payload: the whole pickle.
        allowed: ``(module, name) -> callable``; every other global is refused.
        encoding: how Python 2 ``str`` objects are decoded (``latin1`` as torchvision reads CIFAR batches).

    Returns:
        The unpickled object.

    Raises:
        ForbiddenGlobalError: the pickle names a global outside ``allowed``.
        pickle.UnpicklingError, EOFError, ValueError, ...: the pickle is truncated or malformed.
    """
    return RestrictedUnpickler(io.BytesIO(payload), allowed, encoding=encoding).load()
