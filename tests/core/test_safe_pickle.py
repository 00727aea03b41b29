import codecs
import os
import pickle
import pickletools

import numpy as np
import pytest

from evoprune.core.safe_pickle import NUMPY_ARRAY_GLOBALS, ForbiddenGlobalError, restricted_loads
from tests.conftest import cifar_pickle


def _globals_of(payload: bytes) -> set[tuple[str, str]]:
    return {tuple(arg.split(" ")) for op, arg, _ in pickletools.genops(payload) if op.name == "GLOBAL"}


@pytest.mark.parametrize("py2_style", [False, True])
def test_a_cifar_like_batch_needs_only_the_allowed_globals(py2_style):
    batch = {"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251, "labels": [3, 9], "filenames": ["a"]}
    payload = cifar_pickle(batch, py2_style)
    used = _globals_of(payload)
    assert used <= set(NUMPY_ARRAY_GLOBALS), used - set(NUMPY_ARRAY_GLOBALS)
    expected_module = "numpy.core.multiarray" if py2_style else "numpy._core.multiarray"
    assert (expected_module, "_reconstruct") in used
    ops = {op.name for op, _, _ in pickletools.genops(payload)}
    assert ("BINSTRING" in ops) == py2_style  # the originals hold the pixels as a Python 2 str
    loaded = restricted_loads(payload)
    assert np.array_equal(loaded["data"], batch["data"]) and loaded["labels"] == [3, 9]


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_calls_os_system_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _RunsAShellCommand(marker)}, protocol=2)
    assert ("posix", "system") in _globals_of(payload)
    with pytest.raises(ForbiddenGlobalError, match=r"posix\.system, which is not allowed"):
        restricted_loads(payload)
    assert not marker.exists()


class _EncodesWithAnotherCodec:
    def __reduce__(self):
        return codecs.encode, ("payload", "rot13")


def test_codecs_encode_only_with_latin1():
    with pytest.raises(pickle.UnpicklingError, match="only 'latin1'"):
        restricted_loads(pickle.dumps(_EncodesWithAnotherCodec(), protocol=2))
