"""Timing and memory: child processes measured with ``wait4``, and differential throughput."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Run", "differential", "run_child", "write_csv"]


@dataclass(frozen=True)
class Run:
    """One timed run of a child process."""

    seconds: float
    peak_rss_mb: float
    returncode: int


def run_child(command: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> Run:
    """Run a command to its end: wall time, and its peak RSS as the kernel counted it."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    stderr = process.stderr.read()  # drained while it runs: a full pipe would block the child
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 1):  # 1: some images failed, still a measured run
        raise RuntimeError(f"{command[0]} exited {process.returncode}: {stderr.decode()[-2000:]}")
    return Run(seconds, usage.ru_maxrss / 1024, process.returncode)


def differential(small: int, small_seconds: float, large: int, large_seconds: float) -> float:
    """Images per second between two runs, so that the fixed startup cost cancels."""
    if large_seconds <= small_seconds:
        raise RuntimeError("the large run was not slower than the small one: too noisy to use")
    return (large - small) / (large_seconds - small_seconds)


def write_csv(path: Path, urls: Sequence[str], per_row: int = 1) -> Path:
    """A request CSV: ``per_row`` URLs on each row, cycling through ``urls``."""
    lines = ["S. No.,Product Name,Input Image Urls"]
    for row, start in enumerate(range(0, len(urls), per_row), start=1):
        cell = ",".join(urls[start : start + per_row])
        lines.append(f'{row},Product {row},"{cell}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
