"""Running a batch of jobs at once: shared by the distributed queues (RQ, and plug-ins).

A distributed queue carries several jobs per broker message, so that one message's overhead is
paid once per batch. A worker then runs the batch's jobs at once on a pool of threads, and the
batch fails (to be retried whole) if any of its jobs raised. :class:`BatchRunner` does that.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Sequence

from bulkresize.errors import QueueError
from bulkresize.queues.base import Job, JobHandler

__all__ = ["BatchFailed", "BatchRunner"]

logger = logging.getLogger(__name__)


class BatchFailed(QueueError):
    """One or more jobs of a batch raised; the batch is retried whole.

    Attributes:
        job_ids: The IDs of the jobs that raised.
    """

    def __init__(self, job_ids: Sequence[str], total: int) -> None:
        self.job_ids = list(job_ids)
        shown = ", ".join(self.job_ids[:5]) + (" …" if len(self.job_ids) > 5 else "")
        super().__init__(f"{len(self.job_ids)} of {total} jobs in the batch failed: {shown}")


class BatchRunner:
    """Runs the jobs of one batch at once on a pool of threads, with the worker's handler.

    The pool is created on first use, so in the process (and after any fork) that runs jobs.

    Args:
        handler: Runs one job.
        concurrency: Jobs of a batch that run at once.
        thread_name_prefix: Names the pool's threads, for logs and profiles.
    """

    def __init__(
        self, handler: JobHandler, concurrency: int, *, thread_name_prefix: str = "bulkresize-job"
    ) -> None:
        self.handler = handler
        self._concurrency = concurrency
        self._prefix = thread_name_prefix
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def run(self, jobs: Sequence[Job]) -> int:
        """Run every job of the batch and wait for all of them.

        Returns:
            How many jobs ran.

        Raises:
            BatchFailed: A job raised (after every job of the batch finished).
        """
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self._concurrency, thread_name_prefix=self._prefix
                )
            executor = self._executor
        futures = {executor.submit(self.handler, job): job for job in jobs}
        pending = set(futures)
        while pending:
            # A timeout, not one blocking wait, so that a job timeout or a signal handler in
            # this thread can interrupt us.
            _, pending = concurrent.futures.wait(pending, timeout=1.0)
        failed: list[str] = []
        for future, job in futures.items():
            error = future.exception()
            if error is not None:
                failed.append(job.id)
                logger.warning("job %s failed; its batch will be retried", job.id, exc_info=error)
        if failed:
            raise BatchFailed(failed, len(jobs))
        return len(jobs)

    def close(self) -> None:
        """Stop the pool: running jobs finish, queued ones are dropped."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
