"""Child interpreters that run one of our modules: producer processes, the isolated validator.

Not :mod:`multiprocessing`: its ``spawn`` runs the caller's script again in each child (a
script without an ``if __name__ == "__main__"`` guard starts over), needs a resource-tracker
process beside them (12 MB for the whole run), and ``fork`` is unsafe in a process with threads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import IO

__all__ = ["describe_exit", "start_python_child", "wait_or_kill"]


def start_python_child(
    module: str,
    *args: str,
    pass_fds: Sequence[int] = (),
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``python -P -m module args`` with this process's import path and environment.

    The child gets this process's ``sys.path`` as its ``PYTHONPATH`` and no other (``-P``: not
    the working directory), so it imports what the caller imports, plug-ins included. It runs
    in a session of its own: the terminal's Ctrl-C is the parent's to handle.

    Raises:
        OSError: The process could not be started.
    """
    path = os.pathsep.join(entry or os.getcwd() for entry in sys.path)
    return subprocess.Popen(  # noqa: S603  # our own module, by this interpreter
        [sys.executable, "-P", "-m", module, *args],
        pass_fds=tuple(pass_fds),
        stdin=stdin,
        stdout=stdout,
        env={**os.environ, "PYTHONPATH": path},
        start_new_session=True,
    )


def wait_or_kill(process: subprocess.Popen[bytes], seconds: float) -> None:
    """Wait for a child to exit; kill it if it takes longer than ``seconds``."""
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def describe_exit(code: int) -> str:
    """How a child ended, from its return code: ``exit code 70``, ``killed by signal 9``."""
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"
