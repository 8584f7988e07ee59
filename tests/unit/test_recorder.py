"""The outcome recorder: batches gather the jobs in flight, and a lone job never waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from bulkresize.models import ImageOutcome, ImageStatus
from bulkresize.service import _Recorder

DONE = ImageOutcome(ImageStatus.DONE, output_key="k", bytes_in=1, bytes_out=1)


class CountingRepository:
    """Just enough of a repository: counts the batches it is given."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def record_images(self, records: Sequence[tuple[str, int, int, ImageOutcome]]) -> list[Any]:
        self.batches.append(len(records))
        return [None] * len(records)


@pytest.fixture
def repository() -> CountingRepository:
    return CountingRepository()


def _recorder(repository: CountingRepository, linger: float) -> _Recorder:
    recorder = _Recorder(repository)  # type: ignore[arg-type]
    recorder._LINGER = linger  # type: ignore[misc]
    return recorder


def test_a_lone_job_is_written_at_once(repository: CountingRepository) -> None:
    recorder = _recorder(repository, linger=5.0)
    try:
        started = time.monotonic()
        with recorder.job():
            recorder.record("r", 1, 1, DONE)
        assert time.monotonic() - started < 1.0  # did not wait for the 5 s linger
    finally:
        recorder.close()
    assert repository.batches == [1]


def test_jobs_in_flight_share_a_batch(repository: CountingRepository) -> None:
    recorder = _recorder(repository, linger=5.0)
    jobs = 8
    entered = threading.Barrier(jobs)

    def job(n: int) -> None:
        with recorder.job():
            entered.wait()  # all eight are in flight before any outcome is handed over
            time.sleep(0.01 * n)
            recorder.record("r", n, 1, DONE)

    threads = [threading.Thread(target=job, args=(n,)) for n in range(jobs)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    recorder.close()
    # One batch for the first outcome's wait, all others gathered by it; the batch was written
    # as soon as the last job handed its outcome over, not after the linger.
    assert sum(repository.batches) == jobs
    assert len(repository.batches) <= 2
    assert time.monotonic() - started < 2.0


def test_a_straggler_holds_a_batch_for_the_linger_at_most(
    repository: CountingRepository,
) -> None:
    recorder = _recorder(repository, linger=0.3)
    release = threading.Event()

    def straggler() -> None:
        with recorder.job():
            release.wait()

    thread = threading.Thread(target=straggler)
    thread.start()
    try:
        started = time.monotonic()
        with recorder.job():
            recorder.record("r", 1, 1, DONE)
        waited = time.monotonic() - started
    finally:
        release.set()
        thread.join()
        recorder.close()
    assert 0.25 <= waited < 3.0
    assert repository.batches == [1]
