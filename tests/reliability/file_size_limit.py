"""Make a write fail midway, as on a full disk: run it in a forked child whose files may not grow past a limit."""

from __future__ import annotations

import os
import resource
import select
import signal
from collections.abc import Callable

import torch


def fails_past_file_size_limit(write: Callable[[], object], limit: int = 1024, timeout: float = 60.0) -> str:
    """Run ``write`` in a forked child with ``RLIMIT_FSIZE = limit`` bytes and SIGXFSZ ignored, so that a
    write past ``limit`` fails with EFBIG ("File too large").

    The child runs single-threaded (torch's thread pool does not survive a fork); one that has not
    finished after ``timeout`` seconds is killed and the test fails.

    Returns:
        The child's error as ``"<type>: <message>"``, or ``""`` if ``write`` succeeded.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        message = ""
        try:
            torch.set_num_threads(1)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            write()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            message = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write_end, message.encode()[:60000])
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        if not select.select([handle], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"the forked write did not finish within {timeout} s")
        message = handle.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise AssertionError(f"the write crashed its process (signal {os.WTERMSIG(status)}) instead of raising")
    return message
