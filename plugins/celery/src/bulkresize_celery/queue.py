"""The Celery queue: bulkresize jobs as Celery tasks over Redis (``celery://host:6379/0``).

Jobs are published to a Redis broker by any process (the API, the CLI, a library user) and run
by separate ``bulkresize worker`` processes, each of which runs a Celery worker in the
foreground. See :class:`CeleryQueue`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import signal
import socket
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Self, cast
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import celery
import celery._state
import celery.app.amqp
import celery.exceptions
import celery.worker
import celery.worker.state
import kombu.asynchronous
import kombu.connection
import kombu.exceptions
import kombu.pools
import redis
import redis.exceptions

from bulkresize.errors import ConfigurationError, QueueError
from bulkresize.queues.base import Job, JobHandler, Queue
from bulkresize.queues.batching import BatchFailed, BatchRunner
from bulkresize.redaction import redact_url, scrub

__all__ = ["KEY_PREFIX", "SCHEMES", "TASK_NAME", "BatchFailed", "CeleryQueue"]

logger = logging.getLogger(__name__)

#: The name of the one Celery task that carries our jobs, on every queue's private app.
TASK_NAME = "bulkresize_celery.run_batch"
#: Every Redis key this queue writes (apart from Celery's own) starts with this.
KEY_PREFIX = "bulkresize:celery:"
#: URL scheme → the scheme of the Redis broker behind it.
SCHEMES = {"celery": "redis", "celery+redis": "redis", "celery+rediss": "rediss"}
#: Batches whose markers are written per Redis transaction: one huge CSV never blocks Redis.
_BATCHES_PER_TRANSACTION = 500
#: Seconds between two looks of a worker at its stop flag (and, in burst mode, at the queue).
_TICK_SECONDS = 0.5
#: Looks in a row that must find nothing to do before a burst worker returns.
_BURST_IDLE_TICKS = 3
#: Retries of a failed batch, and the seconds before each.
_RETRY_MAX = 3
_RETRY_INTERVALS = (1, 5, 15)
#: Seconds that close() waits for a background worker to finish its batch and stop.
_CLOSE_WAIT_SECONDS = 60.0
#: How hard a publish tries again after a broker error, before enqueue() gives up.
_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 1,
}
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_INT_OPTIONS = ("batch", "concurrency", "worker_ttl", "visibility_timeout", "marker_ttl")
_FLOAT_OPTIONS = ("socket_timeout", "socket_connect_timeout")
_SSL_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}

# One atomic round trip: the job's marker names its batch (a Celery task ID); the batch's state
# key, present only while a worker holds the task, names that worker; the worker's key lives
# only while the worker beats. KEYS[1]: the marker; ARGV: the state and worker key prefixes.
_IS_PENDING_SCRIPT = """
local task = redis.call('GET', KEYS[1])
if not task then return 0 end
local worker = redis.call('GET', ARGV[1] .. task)
if not worker then return 1 end
return redis.call('EXISTS', ARGV[2] .. worker)
"""

# A batch is over: drop its state key (KEYS[1]) and the markers (KEYS[2..]) that still name it
# (ARGV[1]); a marker that names a newer batch of the same job belongs to that batch.
_SETTLE_SCRIPT = """
for i = 2, #KEYS do
    if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
redis.call('DEL', KEYS[1])
return 1
"""

# Celery's current app, per thread (what celery.contrib.testing also reads and restores).
_THREAD_APP: Any = cast(Any, celery._state)._tls

# Serializes building workers, because Celery's hub step adopts kombu's process-wide event loop
# (see _new_worker). A lock only: no client, app or worker lives at module level.
_WORKER_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class _WorkerContext:
    """What a task needs from the worker that runs it: its handler's runner and its name."""

    runner: BatchRunner
    hostname: str


# Set by a worker around its run, in its own thread, and read by the task: Celery calls a task
# with its message's arguments only, so the handler (the pipeline of *this* worker) has to
# reach it out of band. The solo pool runs every task, retries included, on the thread of the
# worker's event loop, so a context variable does that without a module-level singleton: it
# is empty outside a worker, and two workers in one process each see their own.
_WORKER: contextvars.ContextVar[_WorkerContext | None] = contextvars.ContextVar(
    "bulkresize_celery_worker", default=None
)


class _Heartbeat:
    """Keeps a worker's liveness key alive from a thread of its own.

    The Celery worker runs a batch on its event-loop thread (the solo pool), so nothing on that
    thread can beat while a batch runs; this thread can. The key expires ``ttl`` seconds after
    the last beat, so a SIGKILLed worker is seen dead within ``ttl``.
    """

    def __init__(self, client: redis.Redis, key: str, ttl: int) -> None:
        self._client = client
        self._key = key
        self._ttl = ttl
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"bulkresize-celery-beat-{key[-8:]}", daemon=True
        )

    def start(self) -> None:
        self._beat()  # at once, so the key exists before the first batch starts
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        with contextlib.suppress(redis.exceptions.RedisError):
            self._client.delete(self._key)

    def _beat(self) -> None:
        self._client.set(self._key, "1", ex=self._ttl)

    def _run(self) -> None:
        every = max(1.0, self._ttl / 3)
        while not self._done.wait(every):
            try:
                self._beat()
            except redis.exceptions.RedisError as exc:  # the beat must go on
                logger.warning("celery worker heartbeat failed: %s; trying again", exc)


class _App(celery.Celery):
    """A private Celery app: its broker URL and its connection pools are its own.

    Celery reads ``CELERY_BROKER_URL`` (and the read/write variants) from the environment ahead
    of its configuration, and shares connection pools between apps with equal broker settings
    through kombu's process-wide registry; either would let one queue act on another's
    broker or close another's connections.
    """

    _pool: kombu.connection.ConnectionPool | None

    def __init__(self, broker_url: str, **kwargs: Any) -> None:
        self._bulkresize_broker_url = broker_url
        super().__init__(**kwargs)

    def connection_for_read(self, url: str | None = None, **kwargs: Any) -> kombu.Connection:
        return super().connection_for_read(url or self._bulkresize_broker_url, **kwargs)

    def connection_for_write(self, url: str | None = None, **kwargs: Any) -> kombu.Connection:
        return super().connection_for_write(url or self._bulkresize_broker_url, **kwargs)

    @property
    def pool(self) -> Any:  # a ConnectionPool (celery-types says ProducerPool)
        if self._pool is None:
            self._pool = self.connection_for_write().Pool(limit=self.conf.broker_pool_limit)
        return self._pool

    def release(self) -> None:
        """Close every pooled broker connection of this app."""
        amqp = self.__dict__.get("amqp")
        producers = getattr(amqp, "_producer_pool", None)
        if producers is not None:
            producers.force_close_all()
        if self._pool is not None:
            self._pool.force_close_all()
        self.close()


class _AMQP(celery.app.amqp.AMQP):
    """Celery's messaging layer, with a producer pool private to its app."""

    _producer_pool: kombu.pools.ProducerPool | None

    @property
    def producer_pool(self) -> kombu.pools.ProducerPool:
        if self._producer_pool is None:
            # A ConnectionPool (see _App.pool); celery-types says ProducerPool.
            connections = cast(kombu.connection.ConnectionPool, self.app.pool)
            self._producer_pool = kombu.pools.ProducerPool(connections, limit=connections.limit)
        return self._producer_pool


class _Worker(celery.worker.WorkController):
    """A Celery worker (solo pool) that stops on request and, in burst mode, when idle.

    Celery stops a worker through flags that are global to the process (what its signal
    handlers set), which would stop every worker of the process. This one looks at its own
    flags instead, from a timer on its own event loop: between two batches, never inside one.
    A stop is a warm shutdown, so a held message (a retry waiting for its countdown) goes back
    to the broker.
    """

    hostname: str  # Celery's node name, set by WorkController

    def __init__(
        self,
        app: celery.Celery,
        *,
        hostname: str,
        queue: str,
        stop: Callable[[], bool],
        idle: Callable[[str], bool] | None,
    ) -> None:
        self._should_stop = stop
        self._idle = idle
        self._idle_ticks = 0
        #: Set when this worker stopped because its queue was empty (burst mode).
        self.drained = False
        super().__init__(
            app=app,
            hostname=hostname,
            pool="solo",
            concurrency=1,
            queues=[queue],
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )

    def register_with_event_loop(self, hub: Any) -> None:
        super().register_with_event_loop(hub)
        # Registered with each new connection's loop; Celery cancels it with that connection.
        hub.call_repeatedly(_TICK_SECONDS, self._tick)

    def _tick(self) -> None:
        if self._should_stop():
            raise celery.exceptions.WorkerShutdown(0)
        if self._idle is None:
            return
        # Several looks in a row, so that a message on its way to this worker is not missed.
        self._idle_ticks = self._idle_ticks + 1 if self._idle(self.hostname) else 0
        if self._idle_ticks >= _BURST_IDLE_TICKS:
            self.drained = True
            raise celery.exceptions.WorkerShutdown(0)


class CeleryQueue(Queue):
    """Runs jobs as Celery tasks over Redis (``celery://host:6379/0?queue=bulkresize``).

    **Granularity.** One Celery task carries a small batch of our jobs (up to ``batch``, 16 by
    default), which a worker runs at once on ``concurrency`` threads, as the built-in RQ queue
    does and for the same reasons: the per-message bookkeeping of the broker is spread over
    many images, the downloads of a batch overlap, and a retry or a killed worker puts back at
    most ``batch`` images. A worker is a Celery worker with the *solo* pool: it runs one task
    at a time in its own process, so the pipeline, its database engine and its HTTP clients are
    built once and shared by every job, and nothing is forked.

    **Delivery.** Tasks are sent with ``acks_late`` (and ``reject_on_worker_lost``): a task is
    acknowledged only after its batch ran, so a worker that dies mid-batch leaves the message
    unacknowledged, and Redis gives it to another worker after ``visibility_timeout`` seconds
    (kombu's Redis transport). A warm stop (SIGTERM) finishes the running batch first; a cold
    one (a second SIGTERM) gives the batch back to Redis at once.

    **Failures.** If a job of a batch raises, the batch fails once all its jobs have finished,
    and Celery retries it (``Task.retry``) up to 3 times, after 1, 5 and 15 s. What still
    fails is left to bulkresize's sweeper.

    **Liveness.** Enqueueing writes a marker per job ID (``bulkresize:celery:<queue>:job:<id>``
    → its task ID, for ``marker_ttl`` seconds) before publishing; a worker that starts a batch
    records itself on the task (``…:task:<task id>``, removed when the batch ends or waits for
    a retry) and beats a key of its own (``bulkresize:celery:worker:<name>``) every
    ``worker_ttl / 3`` seconds, with a TTL of ``worker_ttl``. :meth:`is_pending` answers from
    those keys in one round trip: a job is pending while its task is queued, waiting for a
    retry, or held by a worker whose key still lives; not once its batch has run (or failed
    for good), nor ``worker_ttl`` seconds after the worker that held it was SIGKILLed, nor
    after Redis lost its keys. The sweeper then queues the image again from the database.

    Args:
        broker_url: The Redis broker, ``redis://`` or ``rediss://`` (as kombu takes it).
        client: A ready Redis client for the markers, on the same server and database as the
            broker; default built from ``broker_url``.
        queue: The Celery queue name.
        batch: Our jobs per Celery task.
        concurrency: Threads that run the jobs of a batch in a worker: downloads in flight.
        worker_ttl: Seconds after its last heartbeat that a worker counts as dead.
        visibility_timeout: Seconds before Redis gives an unacknowledged task to another
            worker. Keep it above the longest batch, or a slow batch runs twice.
        marker_ttl: Seconds a job's marker lives; a job still queued after that counts as
            lost and is queued again by the sweeper.
        broker_ssl: TLS options for a ``rediss://`` broker (``ssl_cert_reqs``,
            ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``); default: verify the server.
        transport_options: More options for kombu's Redis transport.
    """

    in_process = False

    def __init__(
        self,
        broker_url: str,
        *,
        client: redis.Redis | None = None,
        queue: str = "bulkresize",
        batch: int = 16,
        concurrency: int = 16,
        worker_ttl: int = 30,
        visibility_timeout: int = 3600,
        marker_ttl: int = 86_400,
        broker_ssl: Mapping[str, Any] | None = None,
        transport_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not _QUEUE_NAME.match(queue):
            raise ConfigurationError(
                f"celery queue: invalid queue name {queue!r} (letters, digits, '_.:-')"
            )
        if batch < 1 or concurrency < 1:
            raise ConfigurationError("celery queue: batch and concurrency must be at least 1")
        if worker_ttl < 5 or visibility_timeout < 1 or marker_ttl < 1:
            raise ConfigurationError(
                "celery queue: worker_ttl must be at least 5 s, "
                "visibility_timeout and marker_ttl at least 1"
            )
        parts = urlsplit(broker_url)
        if parts.scheme not in ("redis", "rediss"):
            shown = redact_url(broker_url)
            raise ConfigurationError(
                f"celery queue: the broker must be redis:// or rediss://, not {shown}"
            )
        self._password = parts.password
        self._where = _where(parts)
        self._queue_name = queue
        self._batch = batch
        self._concurrency = concurrency
        self._worker_ttl = worker_ttl
        self._visibility_timeout = visibility_timeout
        self._marker_ttl = marker_ttl
        self._owns_client = client is None
        if client is None:
            try:
                client = redis.Redis.from_url(
                    broker_url,
                    socket_connect_timeout=5,
                    socket_timeout=30,
                    **dict(broker_ssl or {}),
                )
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(
                    f"invalid celery broker URL {redact_url(broker_url)}: "
                    f"{scrub(str(exc), self._password)}"
                ) from None
        self._redis = client
        self._is_pending_script = client.register_script(_IS_PENDING_SCRIPT)
        self._settle_script = client.register_script(_SETTLE_SCRIPT)
        self._app = self._build_app(broker_url, broker_ssl, transport_options)
        self._task = self._app.task(
            name=TASK_NAME,
            bind=True,
            shared=False,
            lazy=False,
            acks_late=True,
            reject_on_worker_lost=True,
            ignore_result=True,
            max_retries=_RETRY_MAX,
        )(self._task_body())
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _build_app(
        self,
        broker_url: str,
        broker_ssl: Mapping[str, Any] | None,
        transport_options: Mapping[str, Any] | None,
    ) -> _App:
        app = _App(
            broker_url,
            main=f"bulkresize_celery.{self._queue_name}",
            set_as_current=False,
            fixups=[],
            amqp=_AMQP,
        )
        options: dict[str, Any] = {
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
            **dict(transport_options or {}),
            "visibility_timeout": self._visibility_timeout,
        }
        use_ssl: dict[str, Any] | None = None
        if urlsplit(broker_url).scheme == "rediss":
            # kombu's own default for rediss:// is not to verify the server; ours is to verify.
            use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED, **dict(broker_ssl or {})}
        app.conf.update(
            broker_url=broker_url,
            broker_use_ssl=use_ssl,
            broker_transport_options=options,
            # Said explicitly: Celery warns of a change of default in 6.0 when it is unset.
            broker_connection_retry_on_startup=True,
            worker_cancel_long_running_tasks_on_connection_loss=True,
            task_default_queue=self._queue_name,
            task_create_missing_queues=True,
            task_acks_late=True,
            task_reject_on_worker_lost=True,
            task_acks_on_failure_or_timeout=True,
            task_ignore_result=True,
            task_serializer="json",
            accept_content=["json"],
            result_backend=None,
            # One message held at a time: a batch is already many jobs, and an idle worker
            # should leave the next batch to a worker that is free.
            worker_prefetch_multiplier=1,
            worker_enable_remote_control=False,
            worker_send_task_events=False,
            task_send_sent_event=False,
            worker_hijack_root_logger=False,
            worker_redirect_stdouts=False,
            enable_utc=True,
        )
        return app

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build from ``celery://[[user]:password@]host[:port][/db][?option=value&…]``.

        ``celery://`` and ``celery+redis://`` use a plain Redis broker (``redis://``);
        ``celery+rediss://`` uses TLS (``rediss://``), verifying the server unless
        ``ssl_cert_reqs=none``. The port defaults to 6379 and the database to 0.

        Query parameters: ``queue`` (default ``bulkresize``), ``batch`` (16), ``concurrency``
        (16), ``worker_ttl`` (30), ``visibility_timeout`` (3600) and ``marker_ttl`` (86400);
        ``socket_timeout`` and ``socket_connect_timeout``; for TLS ``ssl_cert_reqs``
        (``required``, ``optional`` or ``none``), ``ssl_ca_certs``, ``ssl_certfile`` and
        ``ssl_keyfile``. Options: the same names (others are ignored); the URL wins.

        Raises:
            ConfigurationError: The URL or an option is malformed or unknown. The message never
                shows the password.
        """
        shown = redact_url(url)
        try:
            parts = urlsplit(url)
            password = parts.password
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"invalid celery queue URL {shown}: {exc}") from None
        broker_scheme = SCHEMES.get(parts.scheme.lower())
        if broker_scheme is None:
            known = ", ".join(f"{scheme}://" for scheme in SCHEMES)
            raise ConfigurationError(f"celery queue URL {shown}: the scheme must be one of {known}")
        if not parts.hostname:
            raise ConfigurationError(f"celery queue URL {shown}: no host")
        path = parts.path.strip("/") or "0"
        if not path.isdigit():
            raise ConfigurationError(
                f"celery queue URL {shown}: the path must be a Redis database number, not {path!r}"
            )
        known_names = {"queue", *_INT_OPTIONS, *_FLOAT_OPTIONS, *_SSL_OPTIONS}
        # Options come from code that passes some to every backend (as the registry allows):
        # unknown ones are ignored. A query parameter is the user's: unknown ones are errors.
        settings: dict[str, Any] = {k: v for k, v in options.items() if k in known_names}
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        settings.update(query)
        unknown = sorted(set(query) - known_names)
        if unknown:
            raise ConfigurationError(
                f"celery queue URL {shown}: unknown option {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known_names))}"
            )
        arguments: dict[str, Any] = {}
        transport: dict[str, Any] = {}
        tls: dict[str, Any] = {}
        for name, value in settings.items():
            if name == "queue":
                arguments[name] = str(value)
            elif name in _INT_OPTIONS:
                arguments[name] = _number(int, name, value, shown)
            elif name in _FLOAT_OPTIONS:
                transport[name] = _number(float, name, value, shown)
            elif name == "ssl_cert_reqs":
                reqs = _CERT_REQS.get(str(value).lower())
                if reqs is None:
                    raise ConfigurationError(
                        f"celery queue URL {shown}: ssl_cert_reqs must be required, optional "
                        f"or none, not {value!r}"
                    )
                tls[name] = reqs
            else:
                tls[name] = str(value)
        if tls and broker_scheme != "rediss":
            raise ConfigurationError(
                f"celery queue URL {shown}: ssl_* options need celery+rediss://"
            )
        netloc = parts.netloc.rpartition("@")[0]
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = f"{netloc}@{host}:{port or 6379}" if netloc else f"{host}:{port or 6379}"
        broker_url = urlunsplit((broker_scheme, netloc, f"/{int(path)}", "", ""))
        client = None
        try:
            client = redis.Redis.from_url(
                broker_url,
                socket_connect_timeout=transport.get("socket_connect_timeout", 5),
                socket_timeout=transport.get("socket_timeout", 30),
                **tls,
            )
            return cls(
                broker_url,
                client=client,
                broker_ssl=tls or None,
                transport_options=transport,
                **arguments,
            )._owning_client()
        except (ValueError, TypeError) as exc:
            if client is not None:
                client.close()
            message = scrub(str(exc), password)
            raise ConfigurationError(f"invalid celery queue URL {shown}: {message}") from None
        except BaseException:
            if client is not None:
                client.close()
            raise

    def _owning_client(self) -> Self:
        self._owns_client = True
        return self

    # -- the port ----------------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Queue jobs as Celery tasks of ``batch`` jobs each.

        The markers of up to 500 batches are written in one Redis transaction, then their tasks
        are published on one pooled connection.

        Raises:
            QueueError: Redis did not accept them (or the queue is closed).
        """
        jobs = list(jobs)
        if self._closed:
            raise QueueError("the celery queue is closed")
        if not jobs:
            return
        per_transaction = self._batch * _BATCHES_PER_TRANSACTION
        with self._errors("queue jobs"):
            for start in range(0, len(jobs), per_transaction):
                chunk = jobs[start : start + per_transaction]
                batches = [
                    (uuid.uuid4().hex, chunk[offset : offset + self._batch])
                    for offset in range(0, len(chunk), self._batch)
                ]
                # Markers first: a worker may run a task as soon as it is published.
                with self._redis.pipeline(transaction=True) as pipe:
                    for task_id, batch in batches:
                        for job in batch:
                            pipe.set(self._marker_key(job.id), task_id, ex=self._marker_ttl)
                    pipe.execute()
                self._publish(batches)

    def _publish(self, batches: Sequence[tuple[str, Sequence[Job]]]) -> None:
        sent = 0
        try:
            with self._app.producer_or_acquire() as producer:
                for task_id, batch in batches:
                    self._task.apply_async(
                        args=([job.to_dict() for job in batch],),
                        task_id=task_id,
                        queue=self._queue_name,
                        producer=producer,
                        retry=True,
                        retry_policy=_PUBLISH_RETRY_POLICY,
                    )
                    sent += 1
        except BaseException:
            # Unsent jobs must not look pending, or the sweeper would leave them for a day.
            with contextlib.suppress(QueueError):
                for task_id, batch in batches[sent:]:
                    self._settle(task_id, batch)
            raise

    def is_pending(self, job_id: str) -> bool:
        """Whether the job's task is queued, waiting for a retry, or held by a live worker.

        One atomic round trip to Redis.

        Raises:
            QueueError: Redis did not answer.
        """
        with self._errors("look up a job"):
            answer = self._is_pending_script(
                keys=[self._marker_key(job_id)],
                args=[self._state_key(""), self._worker_key("")],
            )
        return bool(answer)

    def start(self, handler: JobHandler) -> None:
        """Run a Celery worker in a background thread of this process, until :meth:`close`.

        For tests and embedded use. Returns at once.

        Raises:
            QueueError: Redis does not answer, or the queue is closed.
        """
        with self._lock:
            if self._closed:
                raise QueueError("the celery queue is closed")
            self._check_broker()
            thread = threading.Thread(
                target=self._run_in_thread,
                args=(handler,),
                name=f"bulkresize-celery-worker-{len(self._threads)}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def work(self, handler: JobHandler, *, burst: bool = False) -> None:
        """Run a Celery worker in the foreground: ``bulkresize worker``.

        In the main thread, SIGTERM and SIGINT stop it gracefully (after the running batch); a
        second one gives the running batch back to Redis at once (Celery's cold shutdown) and
        returns when its jobs in flight have ended, so that none of them runs against a closed
        pipeline. The previous signal handlers are restored after. :meth:`close` from another
        thread stops it too.

        Args:
            handler: Runs one job.
            burst: Return once the queue is empty and no retry is waiting in this worker,
                instead of waiting for more jobs.

        Raises:
            QueueError: Redis failed, or the worker stopped without being asked to.
        """
        if self._closed:
            raise QueueError("the celery queue is closed")
        self._check_broker()
        requested, terminating = threading.Event(), threading.Event()
        previous: dict[int, Any] = {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if terminating.is_set():
                logger.warning("%s: already stopping; waiting for the jobs in flight", name)
            elif requested.is_set():
                terminating.set()
                # Celery's cold shutdown: the running batch's message goes back to Redis.
                raise celery.exceptions.WorkerTerminate(1)
            else:
                requested.set()
                logger.info("%s: stopping after the running batch; again to stop now", name)

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            worker = self._run_worker(handler, stop=requested.is_set, burst=burst)
        except celery.exceptions.WorkerTerminate:
            return  # the second signal came outside Celery's loop: nothing runs any more
        finally:
            for signum, handler_before in previous.items():
                if handler_before is not None:  # None: a handler not set from Python
                    signal.signal(signum, handler_before)
        if worker.exitcode not in (None, 0):
            raise QueueError(
                f"the Celery worker on {self._describe()} failed (exit code {worker.exitcode}); "
                "see its log"
            )
        if burst and worker.drained:
            return
        if not (self._stop.is_set() or requested.is_set()):
            raise QueueError(
                f"the Celery worker on {self._describe()} stopped unexpectedly; see its log"
            )

    def close(self) -> None:
        """Stop this process's workers (after their running batch) and disconnect."""
        with self._lock:
            self._closed = True
            self._stop.set()
            threads, self._threads = self._threads, []
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(_CLOSE_WAIT_SECONDS)
                if thread.is_alive():
                    logger.warning("celery worker %s did not stop in time", thread.name)
        self._app.release()
        if self._owns_client:
            self._redis.close()
            self._redis.connection_pool.disconnect()

    # -- workers -----------------------------------------------------------------------------

    def _run_in_thread(self, handler: JobHandler) -> None:
        while not self._stop.is_set():
            try:
                self._run_worker(handler, stop=lambda: False, burst=False)
            except Exception:
                logger.exception("celery worker on %s failed", self._describe())
            if self._stop.is_set():
                break
            # Celery reconnects by itself; a worker that returned anyway starts again.
            logger.warning("celery worker on %s stopped; starting a new one", self._describe())
            if self._stop.wait(1.0):
                break

    def _run_worker(self, handler: JobHandler, *, stop: Callable[[], bool], burst: bool) -> _Worker:
        """Build and run one worker in this thread until it stops; returns it, stopped."""
        hostname = f"bulkresize-{uuid.uuid4().hex[:12]}@{socket.gethostname()}"
        runner = BatchRunner(handler, self._concurrency, thread_name_prefix="bulkresize-celery-job")
        heartbeat = _Heartbeat(self._redis, self._worker_key(hostname), self._worker_ttl)
        token = _WORKER.set(_WorkerContext(runner, hostname))
        # Celery's tracer runs a task of the current app: ours, in this thread only (Celery's
        # own worker makes its app the process's default instead).
        previous_app = _THREAD_APP.current_app
        self._app.set_current()
        try:
            worker = self._new_worker(
                hostname,
                stop=lambda: self._stop.is_set() or stop(),
                idle=self._is_idle if burst else None,
            )
            with self._errors("start a worker"):
                heartbeat.start()
            worker.start()
            return worker
        finally:
            heartbeat.stop()
            _THREAD_APP.current_app = previous_app
            _WORKER.reset(token)
            # After a cold stop the batch is back in Redis, but its jobs still run here: let
            # them end (the pipeline's timeouts bound them) rather than have them record
            # failures against a pipeline that closes under them.
            runner.close()

    def _new_worker(
        self, hostname: str, *, stop: Callable[[], bool], idle: Callable[[str], bool] | None
    ) -> _Worker:
        # Celery's hub step adopts kombu's process-wide event loop when one is set, and sets
        # its own as that loop otherwise; a second worker in this process would then share
        # the first one's loop across threads. Built with none set, each worker has its own.
        with _WORKER_BUILD_LOCK:
            before = kombu.asynchronous.get_event_loop()
            kombu.asynchronous.set_event_loop(None)
            try:
                return _Worker(
                    self._app, hostname=hostname, queue=self._queue_name, stop=stop, idle=idle
                )
            finally:
                kombu.asynchronous.set_event_loop(before)

    def _is_idle(self, hostname: str) -> bool:
        """Whether the queue is empty and the worker holds no task (burst mode)."""
        state = celery.worker.state
        # Celery 5.7 tracks a task that waits for its countdown (a retry) here; older ones do
        # not track it until it runs, so their burst worker returns and gives it back to Redis.
        scheduled = getattr(state, "scheduled_requests", ())
        try:
            held = [*state.reserved_requests, *state.active_requests, *scheduled]
        except RuntimeError:  # another worker of this process changed them meanwhile
            return False
        if any(request.hostname == hostname for request in held):
            return False
        with self._app.pool.acquire(block=True, timeout=10) as connection:
            declared = connection.default_channel.queue_declare(queue=self._queue_name)
        return int(declared.message_count) == 0

    def _task_body(self) -> Callable[..., int]:
        queue = self

        def run_batch(task: celery.Task[Any, int], jobs: list[dict[str, Any]]) -> int:
            """Run a batch of bulkresize jobs (``Job.to_dict()`` output) concurrently."""
            return queue._run_batch(task, jobs)

        return run_batch

    def _run_batch(self, task: celery.Task[Any, int], data: list[dict[str, Any]]) -> int:
        """The Celery task: run a batch with the handler of the worker that received it.

        Raises:
            BatchFailed: A job raised, for the last time (earlier failures are retried).
            QueueError: Run by a worker that this queue did not start, or Redis failed.
        """
        context = _WORKER.get()
        if context is None:
            raise QueueError(
                f"{TASK_NAME} runs only in a worker started by CeleryQueue.work() or start() "
                "(bulkresize worker)"
            )
        request = task.request
        task_id = str(request.id)
        jobs = [Job.from_dict(item) for item in data]
        state_key = self._state_key(task_id)
        with self._errors("mark a batch started"):
            self._redis.set(state_key, context.hostname, ex=self._marker_ttl)
        try:
            count = context.runner.run(jobs)
        except BatchFailed as exc:
            retries = int(request.retries or 0)
            if retries >= _RETRY_MAX:
                self._settle(task_id, jobs)  # failed for good: the sweeper takes over
                raise
            # Queued again, not held: any worker may take the retry.
            with self._errors("mark a batch for a retry"):
                self._redis.delete(state_key)
            try:
                raise task.retry(
                    exc=exc, countdown=_RETRY_INTERVALS[retries], max_retries=_RETRY_MAX
                )
            except celery.exceptions.Retry:
                raise
            except Exception:
                self._settle(task_id, jobs)  # the retry was not sent: the sweeper takes over
                raise
        except BaseException:
            # Stopped mid-batch (a cold shutdown): Redis gets the message back, queued.
            with contextlib.suppress(redis.exceptions.RedisError):
                self._redis.delete(state_key)
            raise
        self._settle(task_id, jobs)
        return count

    # -- inside -----------------------------------------------------------------------------

    def _marker_key(self, job_id: str) -> str:
        return f"{KEY_PREFIX}{self._queue_name}:job:{job_id}"

    def _state_key(self, task_id: str) -> str:
        return f"{KEY_PREFIX}{self._queue_name}:task:{task_id}"

    @staticmethod
    def _worker_key(hostname: str) -> str:
        return f"{KEY_PREFIX}worker:{hostname}"

    def _settle(self, task_id: str, jobs: Sequence[Job]) -> None:
        keys = [self._state_key(task_id), *(self._marker_key(job.id) for job in jobs)]
        with self._errors("settle a batch"):
            self._settle_script(keys=keys, args=[task_id])

    def _check_broker(self) -> None:
        with self._errors("reach Redis"):
            self._redis.ping()

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn Redis, kombu and Celery errors into QueueError, with no password in them."""
        try:
            yield
        except (
            redis.exceptions.RedisError,
            kombu.exceptions.KombuError,
            celery.exceptions.CeleryError,
            OSError,
        ) as exc:
            message = scrub(f"{type(exc).__name__}: {exc}", self._password)
            raise QueueError(
                f"celery queue {self._queue_name!r} on {self._describe()}: cannot {action}: "
                f"{message}"
            ) from None

    def _describe(self) -> str:
        return self._where


def _number(kind: type[int] | type[float], name: str, value: Any, shown: str) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"celery queue URL {shown}: {name} must be a number, not {value!r}"
        ) from None


def _where(parts: Any) -> str:
    """``host:port/db`` of a Redis URL, with no credentials."""
    try:
        port = parts.port or 6379
    except ValueError:
        port = "?"
    db = parts.path.strip("/") or "0"
    return f"{parts.hostname or 'localhost'}:{port}/{db}"
