"""Timing and memory: child processes measured with ``wait4``, and differential throughput."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PeakRSS",
    "Run",
    "cpu_by_command",
    "cpu_of",
    "cpu_spent",
    "differential",
    "run_child",
    "write_csv",
]


@dataclass(frozen=True)
class Run:
    """One timed run of a child process."""

    seconds: float
    peak_rss_mb: float
    returncode: int


def run_child(command: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> Run:
    """Run a command to its end: wall time, and the peak RSS of it and its children.

    The peak is read from ``VmHWM`` in ``/proc/<pid>/status`` while the child runs, not from
    ``wait4``: Linux seeds a child's ``ru_maxrss`` with the RSS of the process it was forked
    from, so a large benchmark process would inflate every child's figure.
    """
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    peak = PeakRSS(process.pid)
    _, stderr = process.communicate()  # drained while it runs: a full pipe would block it
    seconds = time.perf_counter() - started
    peak.stop()
    if process.returncode not in (0, 1):  # 1: some images failed, still a measured run
        raise RuntimeError(f"{command[0]} exited {process.returncode}: {stderr.decode()[-2000:]}")
    return Run(seconds, peak.megabytes, process.returncode)


#: Looks between two walks of the process tree for new descendants (every 100 ms).
_RESCAN_EVERY = 5


class PeakRSS:
    """Follows the peak resident memory of a process and its children until it exits.

    The process's own ``VmHWM`` catches its peaks between two looks; the sum of ``VmRSS`` over
    the process and every descendant (``bulkresize process`` validates in a child, say) is
    taken at each look, with the descendants found anew every fifth look. The figure is the
    larger of the two peaks.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self._pid = pid
        self._interval = interval
        self._kib = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        tree_pids: list[int] = []
        looks = 0
        while not self._done.is_set():
            own = _status_kib(self._pid, "VmHWM:")
            if own is None:
                return  # the process is gone
            # Walking every thread's children costs about 1.3 ms of CPU for a pipeline of 40
            # threads: at every look, 3 % of a 2-core machine taken from what is measured.
            if looks % _RESCAN_EVERY == 0:
                tree_pids = _descendants(self._pid)
            looks += 1
            tree = sum(_status_kib(pid, "VmRSS:") or 0 for pid in tree_pids)
            self._kib = max(self._kib, own, tree)
            self._done.wait(self._interval)

    def stop(self) -> None:
        """Stop following."""
        self._done.set()
        self._thread.join()

    @property
    def megabytes(self) -> float:
        """The highest peak seen, in MiB."""
        return self._kib / 1024


def _status_kib(pid: int, field: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status``; ``None`` once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return 0  # a zombie has no memory fields


def _descendants(pid: int) -> list[int]:
    """The process and all its descendants, from ``/proc/<pid>/task/*/children``."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in children.read_text().split())
            except (OSError, ValueError):
                continue  # the thread or the process ended meanwhile
    return found


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) one process has used so far; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_command() -> dict[str, float]:
    """CPU seconds (user + system) used so far by every process, summed by command name.

    Taken before and after a run, the difference shows where a whole system's CPU went: the
    pipeline's processes, but also moto, PostgreSQL, Redis and the origin.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        used = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        totals[name] = totals.get(name, 0.0) + used
    return totals


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Seconds per command between two ``cpu_by_command()`` readings, largest first."""
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    return dict(
        sorted(((n, round(s, 2)) for n, s in spent.items() if s >= 0.05), key=lambda x: -x[1])
    )


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
