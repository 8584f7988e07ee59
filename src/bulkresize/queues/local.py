"""The embedded queue: jobs run on threads in this process. No services needed."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from bulkresize.errors import ConfigurationError, QueueError
from bulkresize.queues.base import Job, JobHandler, Queue

__all__ = ["LocalQueue"]

logger = logging.getLogger(__name__)


class LocalQueue(Queue):
    """Runs jobs on a pool of threads in this process (``local://``).

    Jobs live in memory only: after a crash, the service's ``resume()`` re-queues from the
    repository every image that was still pending, so nothing accepted is lost. A job whose
    handler raises is retried with backoff, up to ``max_attempts`` times. A job ID that is
    already pending is not queued twice.

    Args:
        workers: Threads that run jobs; each job downloads one image, so this bounds the
            downloads in flight.
        max_attempts: Runs of a job whose handler keeps raising.
        retry_delay: Seconds before the first retry; doubled each time.
    """

    in_process = True

    def __init__(self, *, workers: int = 16, max_attempts: int = 3, retry_delay: float = 0.5):
        if workers < 1 or max_attempts < 1:
            raise ConfigurationError("workers and max_attempts must be at least 1")
        self._workers = workers
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._jobs: collections.deque[Job] = collections.deque()
        self._pending: set[str] = set()
        self._running = 0
        self._condition = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._handler: JobHandler | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build from ``local://``, optionally ``local://?workers=32``.

        Options: ``workers`` (default: the ``download_concurrency`` setting).
        """
        query = parse_qs(urlsplit(url).query)
        for name in ("workers", "max_attempts"):
            if name in query:
                try:
                    options[name] = int(query[name][-1])
                except ValueError:
                    raise ConfigurationError(f"local queue: {name} must be a number") from None
        known = {"workers", "max_attempts", "retry_delay"}
        return cls(**{name: value for name, value in options.items() if name in known})

    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Queue jobs in memory; a job whose ID is already pending is skipped."""
        with self._condition:
            if self._closed:
                raise QueueError("the local queue is closed")
            for job in jobs:
                if job.id in self._pending:
                    continue
                self._pending.add(job.id)
                self._jobs.append(job)
            self._condition.notify_all()

    def is_pending(self, job_id: str) -> bool:
        """Whether the job is queued or running here."""
        with self._condition:
            return job_id in self._pending

    def start(self, handler: JobHandler) -> None:
        """Start the worker threads; they run jobs with ``handler`` until ``close()``."""
        with self._condition:
            if self._closed:
                raise QueueError("the local queue is closed")
            if self._handler is not None:
                raise QueueError("the local queue is already started")
            self._handler = handler
            for number in range(self._workers):
                thread = threading.Thread(
                    target=self._run, name=f"bulkresize-local-{number}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def work(self, handler: JobHandler, *, burst: bool = False) -> None:
        """Run jobs until ``close()``, or with ``burst`` until the queue is empty."""
        self.start(handler)
        if burst:
            self.join()
        else:
            with self._condition:
                while not self._closed:
                    self._condition.wait()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no job is queued or running. Returns False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while self._pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._condition.wait(remaining)
            return True

    def close(self) -> None:
        """Stop taking jobs, let running ones finish, and drop the rest.

        Dropped jobs stay pending in the repository, to be resumed.
        """
        with self._condition:
            self._closed = True
            self._jobs.clear()
            self._pending.clear()
            self._condition.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()
        self._threads.clear()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._jobs and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                job = self._jobs.popleft()
                handler = self._handler
            assert handler is not None
            try:
                self._attempt(handler, job)
            finally:
                with self._condition:
                    self._pending.discard(job.id)
                    self._condition.notify_all()

    def _attempt(self, handler: JobHandler, job: Job) -> None:
        for attempt in range(1, self._max_attempts + 1):
            try:
                handler(job)
                return
            except Exception:
                if attempt == self._max_attempts or self._closed:
                    logger.exception(
                        "job %s failed %d times; left for the sweeper", job.id, attempt
                    )
                    return
                logger.warning(
                    "job %s failed (attempt %d); retrying", job.id, attempt, exc_info=True
                )
                time.sleep(self._retry_delay * 2 ** (attempt - 1))
