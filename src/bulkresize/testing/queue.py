"""The queue conformance suite."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from bulkresize.queues.base import Job, Queue

__all__ = ["QueueContract"]


class _Recorder:
    """A handler that records the jobs it runs; it can fail a job's first runs on purpose."""

    def __init__(self, fail_first: dict[str, int] | None = None, delay: float = 0.0) -> None:
        self.seen: Counter[str] = Counter()
        self.payloads: dict[str, dict[str, object]] = {}
        self._fail_first = dict(fail_first or {})
        self._delay = delay
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.expected: set[str] = set()

    def __call__(self, job: Job) -> None:
        with self._lock:
            self.seen[job.id] += 1
            self.payloads[job.id] = dict(job.payload)
            failing = self._fail_first.get(job.id, 0) >= self.seen[job.id]
        if self._delay:
            time.sleep(self._delay)
        if failing:
            raise RuntimeError(f"deliberate failure of {job.id}")
        with self._lock:
            if self.expected and self.expected <= {j for j, n in self.seen.items() if n}:
                self.done.set()


class QueueContract:
    """Mix into a test class and provide the ``queue`` fixture (fresh and empty).

    The handler runs in this process (``start()`` for background threads); distributed
    backends provide a fixture whose ``start()`` runs an in-process worker for tests.
    """

    @pytest.fixture
    def queue(self) -> Queue:
        """The backend under test. Override this fixture."""
        raise NotImplementedError("provide a `queue` fixture")

    @pytest.fixture
    def retries_failed_jobs(self) -> bool:
        """Set to False for a backend that does not retry a job whose handler raised."""
        return True

    @pytest.fixture
    def wait_seconds(self) -> float:
        """How long a job may take to be picked up and run."""
        return 20.0

    def _jobs(self, count: int) -> list[Job]:
        return [
            Job(id=f"job-{n}", kind="test", payload={"n": n, "text": 'é,\n"x"'})
            for n in range(count)
        ]

    def test_every_job_runs_with_its_payload(self, queue: Queue, wait_seconds: float) -> None:
        recorder = _Recorder()
        jobs = self._jobs(25)
        recorder.expected = {job.id for job in jobs}
        queue.enqueue(jobs)
        queue.start(recorder)
        assert recorder.done.wait(wait_seconds), f"ran only {len(recorder.seen)} of 25 jobs"
        assert recorder.payloads["job-7"] == {"n": 7, "text": 'é,\n"x"'}

    def test_jobs_enqueued_after_start_run(self, queue: Queue, wait_seconds: float) -> None:
        recorder = _Recorder()
        queue.start(recorder)
        jobs = self._jobs(5)
        recorder.expected = {job.id for job in jobs}
        queue.enqueue(jobs)
        assert recorder.done.wait(wait_seconds)

    def test_a_job_whose_handler_raises_runs_again(
        self, queue: Queue, retries_failed_jobs: bool, wait_seconds: float
    ) -> None:
        if not retries_failed_jobs:
            pytest.skip("backend does not retry")
        recorder = _Recorder(fail_first={"job-0": 1})
        recorder.expected = {"job-0"}
        queue.enqueue(self._jobs(1))
        queue.start(recorder)
        deadline = time.monotonic() + wait_seconds
        while recorder.seen["job-0"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert recorder.seen["job-0"] >= 2

    def test_is_pending_until_the_job_has_run(self, queue: Queue, wait_seconds: float) -> None:
        recorder = _Recorder(delay=0.3)
        recorder.expected = {"job-0"}
        queue.enqueue(self._jobs(1))
        assert queue.is_pending("job-0")
        assert not queue.is_pending("job-never-queued")
        queue.start(recorder)
        deadline = time.monotonic() + wait_seconds
        while queue.is_pending("job-0") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not queue.is_pending("job-0")
        assert recorder.seen["job-0"] == 1

    def test_work_in_burst_mode_returns_when_the_queue_is_empty(self, queue: Queue) -> None:
        recorder = _Recorder()
        queue.enqueue(self._jobs(10))
        started = time.monotonic()
        queue.work(recorder, burst=True)
        assert time.monotonic() - started < 60
        assert set(recorder.seen) == {f"job-{n}" for n in range(10)}
