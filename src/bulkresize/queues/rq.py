"""The distributed queue: RQ on Redis (``redis://`` and ``rediss://``).

Jobs are queued in Redis by any process (the API, the CLI, a library user) and run by separate
``bulkresize worker`` processes on any number of machines. See :class:`RQQueue`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.exceptions
import rq
import rq.exceptions
import rq.job
import rq.scheduler
import rq.timeouts
import rq.worker

from bulkresize.errors import ConfigurationError, QueueError
from bulkresize.queues.base import Job, JobHandler, Queue
from bulkresize.queues.batching import BatchFailed, BatchRunner
from bulkresize.redaction import redact_url, scrub

__all__ = ["BatchFailed", "RQQueue", "run_batch"]

logger = logging.getLogger(__name__)

#: Our job ID → the RQ job that carries it; what :meth:`RQQueue.is_pending` starts from.
MARKER_PREFIX = "bulkresize:job:"
#: RQ jobs written per Redis transaction: keeps one huge CSV from blocking Redis for long.
_BATCHES_PER_TRANSACTION = 500
#: Seconds an idle worker blocks on Redis before it looks at its stop flag again.
_POLL_SECONDS = 1
#: Seconds between two looks of the worker's companion thread (retries due, heartbeat).
_TICK_SECONDS = 1.0
#: Retries of a failed batch, and the seconds before each.
_RETRY_MAX = 3
_RETRY_INTERVALS = (1, 5, 15)
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_URL_OPTIONS = ("queue", "batch", "concurrency", "worker_ttl", "job_timeout")

# One round trip, atomic: the marker, then its RQ job's status, then (for a started job) the
# liveness of the worker that runs it. Key prefixes and statuses come from RQ (ARGV).
_IS_PENDING_SCRIPT = """
local rq_id = redis.call('GET', KEYS[1])
if not rq_id then return 0 end
local fields = redis.call('HMGET', ARGV[1] .. rq_id, 'status', 'worker_name')
local status = fields[1]
if not status then return 0 end
if status == ARGV[3] then
    local worker = fields[2]
    if not worker or worker == '' then return 0 end
    local key = ARGV[2] .. worker
    if redis.call('EXISTS', key) == 0 then return 0 end
    if redis.call('HEXISTS', key, 'death') == 1 then return 0 end
    return 1
end
for i = 4, #ARGV do
    if status == ARGV[i] then return 1 end
end
return 0
"""


# Set by the worker around each RQ job it runs, and read by `run_batch`: RQ calls a job function
# by its dotted name with plain arguments, so the handler (the pipeline of *this* worker) has to
# reach it out of band. A context variable does that without a module-level singleton: it is
# empty outside a worker, and two workers in one process (tests, `start()` beside `work()`)
# each see their own handler, because each sets it in its own thread.
_RUNNER: contextvars.ContextVar[BatchRunner | None] = contextvars.ContextVar(
    "bulkresize_rq_runner", default=None
)


def run_batch(jobs: list[dict[str, Any]]) -> int:
    """The RQ job function: run a batch of our jobs (``Job.to_dict()`` output) concurrently.

    RQ imports it by its dotted path, ``bulkresize.queues.rq.run_batch``. It runs only inside a
    worker started by :meth:`RQQueue.work` or :meth:`RQQueue.start`, which supplies the handler.

    Returns:
        How many jobs ran.

    Raises:
        BatchFailed: A job raised (after every job of the batch finished), so RQ retries it.
        QueueError: Called outside a bulkresize worker.
    """
    runner = _RUNNER.get()
    if runner is None:
        raise QueueError("run_batch runs only inside a bulkresize RQ worker (bulkresize worker)")
    return runner.run([Job.from_dict(data) for data in jobs])


class _BatchWorker(rq.worker.SimpleWorker):
    """An RQ ``SimpleWorker`` that runs our batches, stops on request, and beats while busy.

    ``SimpleWorker`` runs each job in this process, with no fork, so the pipeline, its database
    engine and its HTTP and S3 clients are created once, in the process that uses them, and
    reused by every job. Beside the work loop a companion thread (1) refreshes the worker's
    heartbeat while a batch runs, so a live worker's key never expires however long the batch,
    while a SIGKILLed worker's key expires ``worker_ttl`` seconds after its last beat; and (2)
    moves due retries from RQ's scheduled registry to the queue, in a thread rather than RQ's
    forked scheduler process.

    In a thread other than the main one (``RQQueue.start``), RQ's signal handlers cannot be
    installed and its SIGALRM job timeout cannot fire, so it installs none and uses
    ``TimerDeathPenalty``; it does not subscribe to RQ's command channel either, whose commands
    (shutdown) rely on signals.
    """

    def __init__(
        self,
        queue_name: str,
        *,
        connection: redis.Redis,
        runner: BatchRunner,
        stop: threading.Event,
        main_thread: bool,
        worker_ttl: int,
    ) -> None:
        if not main_thread:
            self.death_penalty_class = rq.timeouts.TimerDeathPenalty
        super().__init__([queue_name], connection=connection, worker_ttl=worker_ttl)
        self._runner = runner
        self._stop = stop
        #: Set when a signal asked this worker to stop (in the main thread).
        self.stop_requested = threading.Event()
        self._main_thread = main_thread
        self._busy = threading.Event()
        self._beat_every = max(1.0, worker_ttl / 3)

    # -- lifecycle -------------------------------------------------------------------------

    def work(self, burst: bool = False, *args: Any, **options: Any) -> bool:
        done = threading.Event()
        companion = threading.Thread(
            target=self._companion, args=(done,), name=f"bulkresize-rq-{self.name[:8]}", daemon=True
        )
        companion.start()
        try:
            return super().work(burst, *args, **options)
        finally:
            done.set()
            companion.join()

    def _install_signal_handlers(self) -> None:
        if self._main_thread:
            super()._install_signal_handlers()  # type: ignore[no-untyped-call]

    def subscribe(self) -> None:
        if self._main_thread:
            super().subscribe()  # type: ignore[no-untyped-call]

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested.set()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    # -- work --------------------------------------------------------------------------------

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[rq.job.Job, rq.Queue] | None:
        if timeout is None:  # burst: one look, no wait
            return super().dequeue_job_and_maintain_ttl(None, max_idle_time)
        # Short blocking polls instead of one long one, so that a stop request (close())
        # is seen within a second even in a thread, where no signal can interrupt the wait.
        while not (self._stop.is_set() or self.stop_requested.is_set()):
            result = super().dequeue_job_and_maintain_ttl(_POLL_SECONDS, _POLL_SECONDS)
            if result is not None:
                return result
        return None

    def execute_job(self, job: rq.job.Job, queue: rq.Queue) -> None:
        token = _RUNNER.set(self._runner)
        self._busy.set()
        try:
            super().execute_job(job, queue)
        finally:
            self._busy.clear()
            _RUNNER.reset(token)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """Refresh the worker's key for ``worker_ttl`` seconds, never longer.

        RQ extends it to the job timeout plus a minute while a job runs; the companion thread
        beats instead, so that a killed worker is seen dead within ``worker_ttl``.
        """
        super().heartbeat(self.worker_ttl, pipeline)

    def _companion(self, done: threading.Event) -> None:
        scheduler = rq.scheduler.RQScheduler(
            [queue.name for queue in self.queues], connection=self.connection
        )
        last_beat = time.monotonic()
        try:
            while not done.wait(_TICK_SECONDS):
                try:
                    if self._busy.is_set() and time.monotonic() - last_beat >= self._beat_every:
                        self.heartbeat()
                        last_beat = time.monotonic()
                    elif not self._busy.is_set():
                        last_beat = time.monotonic()
                    # Any worker may move due retries, one at a time (RQ's scheduler lock).
                    if scheduler.acquire_locks():  # type: ignore[no-untyped-call]
                        scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
                except Exception as exc:  # the beat must go on, whatever failed once
                    logger.warning("RQ worker %s: %s; trying again", self.name, exc)
        finally:
            with contextlib.suppress(redis.exceptions.RedisError):
                scheduler.release_locks()  # type: ignore[no-untyped-call]
            scheduler.connection.close()
            scheduler.connection.connection_pool.disconnect()


class RQQueue(Queue):
    """Runs jobs on RQ workers over Redis (``redis://host:6379/0?queue=bulkresize&batch=16``).

    **Granularity.** One RQ job carries a small batch of our jobs (up to ``batch``, 16 by
    default), which a worker runs at once on ``concurrency`` threads. Not one image per RQ job:
    RQ spends a dozen or so Redis round trips on the bookkeeping of each job (dequeue, started
    and finished registries, execution, result), all on the worker's one work-loop thread, and
    an RQ ``SimpleWorker`` runs one job at a time, so one image per job would serialize the
    downloads of a worker, and cap it at the rate of that bookkeeping. (Measured on loopback
    Redis, one worker: with one image per RQ job, 240 jobs/s with a handler that does nothing,
    about 4 ms of bookkeeping each, and 18 images/s when each takes 50 ms like a download;
    with batches of 16, 3,700 and 290 images/s.) Not one CSV row per job
    either: a row holds from 1 to 100 images, so rows make uneven jobs, and a failed 100-image
    row would be redone whole. A small fixed batch spreads RQ's cost over many images, lets the
    downloads of a batch overlap while encoding uses every core (the pipeline allows one encode
    per CPU), and bounds what a retry or a killed worker puts back: at most ``batch`` images.
    Its cost is that a worker takes the next batch only when the slowest image of the current
    one has finished, which the fetch timeout bounds.

    **Failures.** If a job of a batch raises, the batch fails once all its jobs have finished,
    and RQ retries it up to 3 times, after 1, 5 and 15 s; its jobs are idempotent, so re-running
    the ones that succeeded does no harm. What still fails is left to the sweeper.

    **Liveness.** Enqueueing also writes, in the same transaction, a marker per job ID
    (``bulkresize:job:<id>`` → the RQ job ID, for one day), so that :meth:`is_pending` can
    tell the sweeper the truth: a job is pending only while its RQ job is queued, scheduled
    for a retry, or started by a worker whose heartbeat key still lives. After Redis loses its
    keys, after a worker is SIGKILLed (once its key expires, ``worker_ttl`` seconds), and once a
    job has finished or failed for good, the answer is False, and the sweeper queues the image
    again from the database.

    Args:
        client: A ready Redis client (``redis.Redis``), used as it is.
        queue: The RQ queue name.
        batch: Our jobs per RQ job.
        concurrency: Threads that run the jobs of a batch in a worker: downloads in flight.
        worker_ttl: Seconds after its last heartbeat that a worker counts as dead.
        job_timeout: Seconds a batch may run before RQ stops it and retries it.
        marker_ttl: Seconds a job's marker lives; a job still queued after that counts as lost
            and is queued again by the sweeper.
    """

    in_process = False

    def __init__(
        self,
        client: redis.Redis,
        *,
        queue: str = "bulkresize",
        batch: int = 16,
        concurrency: int = 16,
        worker_ttl: int = 30,
        job_timeout: int = 600,
        marker_ttl: int = 86_400,
    ) -> None:
        if not _QUEUE_NAME.match(queue):
            raise ConfigurationError(
                f"redis queue: invalid queue name {queue!r} (letters, digits, '_.:-')"
            )
        if batch < 1 or concurrency < 1:
            raise ConfigurationError("redis queue: batch and concurrency must be at least 1")
        if worker_ttl < 5 or job_timeout < 1 or marker_ttl < 1:
            raise ConfigurationError(
                "redis queue: worker_ttl must be at least 5 s, "
                "job_timeout and marker_ttl at least 1"
            )
        self._redis = client
        self._queue_name = queue
        self._batch = batch
        self._concurrency = concurrency
        self._worker_ttl = worker_ttl
        self._job_timeout = job_timeout
        self._marker_ttl = marker_ttl
        self._rq = rq.Queue(queue, connection=client)
        self._is_pending = client.register_script(_IS_PENDING_SCRIPT)
        self._owns_client = False
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build from ``redis://[:password@]host:6379/0`` or ``rediss://…``.

        Query parameters: ``queue`` (default ``bulkresize``), ``batch`` (16), ``concurrency``
        (16), ``worker_ttl`` (30) and ``job_timeout`` (600); any other one goes to redis-py
        (``socket_timeout``, ``ssl_cert_reqs`` …). Options: the same names; the URL wins.

        Raises:
            ConfigurationError: The URL or an option is malformed. The message never shows the
                password.
        """
        parts = urlsplit(url)
        shown = redact_url(url)
        ours: dict[str, str] = {}
        rest: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in _URL_OPTIONS:
                ours[name] = value
            else:
                rest.append((name, value))
        known = {*_URL_OPTIONS, "marker_ttl"}
        settings: dict[str, Any] = {name: value for name, value in options.items() if name in known}
        for name, value in ours.items():
            if name == "queue":
                settings[name] = value
                continue
            try:
                settings[name] = int(value)
            except ValueError:
                raise ConfigurationError(
                    f"redis queue {shown}: {name} must be a number, not {value!r}"
                ) from None
        connection_url = urlunsplit(parts._replace(query=urlencode(rest)))
        try:
            client = redis.Redis.from_url(
                connection_url, socket_connect_timeout=5, socket_timeout=30
            )
        except (ValueError, TypeError) as exc:
            message = scrub(str(exc), parts.password)
            raise ConfigurationError(f"invalid redis queue URL {shown}: {message}") from None
        try:
            queue = cls(client, **settings)
        except BaseException:
            client.close()
            raise
        queue._owns_client = True
        return queue

    # -- the port ----------------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Queue jobs in batches of ``batch``, one Redis transaction per 500 batches.

        Raises:
            QueueError: Redis did not accept them (or the queue is closed).
        """
        jobs = list(jobs)
        if self._closed:
            raise QueueError("the redis queue is closed")
        if not jobs:
            return
        per_transaction = self._batch * _BATCHES_PER_TRANSACTION
        with self._errors("queue jobs"):
            for start in range(0, len(jobs), per_transaction):
                chunk = jobs[start : start + per_transaction]
                with self._redis.pipeline(transaction=True) as pipe:
                    data = []
                    for offset in range(0, len(chunk), self._batch):
                        batch = chunk[offset : offset + self._batch]
                        rq_id = uuid.uuid4().hex
                        data.append(self._batch_data(rq_id, batch))
                        for job in batch:
                            pipe.set(MARKER_PREFIX + job.id, rq_id, ex=self._marker_ttl)
                    self._rq.enqueue_many(data, pipeline=pipe)
                    pipe.execute()

    def _batch_data(self, rq_id: str, batch: Sequence[Job]) -> Any:
        more = f" and {len(batch) - 1} more" if len(batch) > 1 else ""
        return rq.Queue.prepare_data(
            run_batch,
            args=([job.to_dict() for job in batch],),
            job_id=rq_id,
            timeout=self._job_timeout,
            result_ttl=600,
            failure_ttl=7 * 86_400,
            description=f"bulkresize batch: {batch[0].id}{more}",
            retry=rq.Retry(max=_RETRY_MAX, interval=list(_RETRY_INTERVALS)),
        )

    def is_pending(self, job_id: str) -> bool:
        """Whether the job's RQ job is queued, scheduled, or started by a live worker.

        One atomic round trip to Redis.

        Raises:
            QueueError: Redis did not answer.
        """
        statuses = rq.job.JobStatus
        with self._errors("look up a job"):
            answer = self._is_pending(
                keys=[MARKER_PREFIX + job_id],
                args=[
                    rq.job.Job.redis_job_namespace_prefix,
                    rq.worker.Worker.redis_worker_namespace_prefix,
                    statuses.STARTED.value,
                    statuses.QUEUED.value,
                    statuses.SCHEDULED.value,
                    statuses.DEFERRED.value,
                ],
            )
        return bool(answer)

    def start(self, handler: JobHandler) -> None:
        """Run a worker in a background thread of this process, until :meth:`close`.

        For tests, and for a process that wants to work in-process beside other workers.
        """
        with self._lock:
            if self._closed:
                raise QueueError("the redis queue is closed")
            runner = self._runner(handler)
            with self._errors("start a worker"):
                worker = self._worker(runner, main_thread=False)
            thread = threading.Thread(
                target=self._run_in_thread,
                args=(worker, runner),
                name=f"bulkresize-rq-worker-{len(self._threads)}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def work(self, handler: JobHandler, *, burst: bool = False) -> None:
        """Run a worker in the foreground: ``bulkresize worker``.

        In the main thread, SIGTERM and SIGINT stop it gracefully (after the running batch; a
        second one stops it at once), and the previous signal handlers are restored after.
        :meth:`close` from another thread stops it too.

        Args:
            handler: Runs one job.
            burst: Return once the queue is empty, instead of waiting for more jobs.

        Raises:
            QueueError: Redis failed, or the worker stopped without being asked to.
        """
        if self._closed:
            raise QueueError("the redis queue is closed")
        main_thread = threading.current_thread() is threading.main_thread()
        runner = self._runner(handler)
        previous: dict[int, Any] = {}
        if main_thread:
            previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with self._errors("run a worker"):
                worker = self._worker(runner, main_thread=main_thread)
                worker.work(burst=burst)
        finally:
            for sig, handler_before in previous.items():
                if handler_before is not None:  # None: a handler not set from Python
                    signal.signal(sig, handler_before)
            runner.close()
        if not burst and not self._stop.is_set() and not worker.stop_requested.is_set():
            raise QueueError(
                f"the RQ worker on {self._describe()} stopped unexpectedly; see its log"
            )

    def close(self) -> None:
        """Stop the workers of this process (after their running batch) and disconnect."""
        with self._lock:
            self._closed = True
            self._stop.set()
            threads, self._threads = self._threads, []
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()
        if self._owns_client:
            self._redis.close()
            self._redis.connection_pool.disconnect()

    # -- inside -----------------------------------------------------------------------------

    def _runner(self, handler: JobHandler) -> BatchRunner:
        return BatchRunner(handler, self._concurrency, thread_name_prefix="bulkresize-rq-job")

    def _worker(self, runner: BatchRunner, *, main_thread: bool) -> _BatchWorker:
        return _BatchWorker(
            self._queue_name,
            connection=self._redis,
            runner=runner,
            stop=self._stop,
            main_thread=main_thread,
            worker_ttl=self._worker_ttl,
        )

    def _run_in_thread(self, worker: _BatchWorker, runner: BatchRunner) -> None:
        try:
            while not self._stop.is_set():
                try:
                    worker.work(burst=False)
                except Exception:
                    logger.exception("RQ worker %s failed", worker.name)
                if self._stop.is_set():
                    break
                # RQ's loop gives up on some Redis errors; a background worker starts again.
                logger.warning("RQ worker %s stopped; starting a new one", worker.name)
                if self._stop.wait(1.0):
                    break
                try:
                    worker = self._worker(runner, main_thread=False)
                except redis.exceptions.RedisError as exc:
                    logger.warning("cannot start an RQ worker: %s", exc)
        finally:
            runner.close()

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn Redis and RQ errors into QueueError, with no password in the message."""
        try:
            yield
        except (redis.exceptions.RedisError, rq.exceptions.NoSuchJobError, OSError) as exc:
            message = scrub(f"{type(exc).__name__}: {exc}", self._password())
            raise QueueError(
                f"redis queue {self._queue_name!r} on {self._describe()}: cannot {action}: "
                f"{message}"
            ) from None

    def _password(self) -> str | None:
        password = self._redis.connection_pool.connection_kwargs.get("password")
        return str(password) if password else None

    def _describe(self) -> str:
        kwargs = self._redis.connection_pool.connection_kwargs
        if kwargs.get("path"):
            return f"unix:{kwargs['path']}"
        return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
