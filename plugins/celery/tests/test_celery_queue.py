"""The Celery queue over a real Redis (database 13): the queue contract, liveness, URLs, errors."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import redis

from bulkresize.errors import ConfigurationError, QueueError
from bulkresize.queues import Job, Queue
from bulkresize.registry import create_backend
from bulkresize.testing import QueueContract
from bulkresize_celery import KEY_PREFIX, TASK_NAME, CeleryQueue
from bulkresize_celery import queue as celery_queue_module

pytestmark = [
    pytest.mark.integration,
    # kombu < 5.5 calls redis-py >= 5.3 the old way; a warning in a worker thread would stop it.
    pytest.mark.filterwarnings(
        "ignore:Call to 'get_connection' function with deprecated usage:DeprecationWarning"
    ),
]


@pytest.fixture
def celery_queue(
    celery_redis: redis.Redis, celery_url: str, celery_queue_name: str
) -> Iterator[CeleryQueue]:
    queue = CeleryQueue.from_url(f"{celery_url}?queue={celery_queue_name}&batch=4&concurrency=4")
    yield queue
    queue.close()


class TestCeleryQueue(QueueContract):
    @pytest.fixture
    def queue(self, celery_queue: CeleryQueue) -> Queue:
        return celery_queue


def jobs(count: int, prefix: str = "job") -> list[Job]:
    return [Job(id=f"{prefix}-{n}", kind="test", payload={"n": n}) for n in range(count)]


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- URLs and the registry -------------------------------------------------------------------


def test_url_options_and_the_registry(celery_redis: redis.Redis, celery_url: str) -> None:
    url = f"{celery_url}?queue=photos&batch=8&concurrency=3&worker_ttl=7&visibility_timeout=120"
    queue = create_backend("queue", url, Queue)
    assert isinstance(queue, CeleryQueue)
    try:
        assert not queue.in_process
        assert (queue._queue_name, queue._batch, queue._concurrency) == ("photos", 8, 3)
        assert queue._worker_ttl == 7
        conf = queue._app.conf
        assert conf.broker_transport_options["visibility_timeout"] == 120
        assert conf.task_acks_late and conf.task_reject_on_worker_lost
        assert conf.task_default_queue == "photos"
        connection = queue._app.connection_for_write()
        assert (connection.transport_cls, connection.hostname) == ("redis", "127.0.0.1")
        assert (connection.port, connection.virtual_host) == (6379, celery_url.rsplit("/", 1)[1])
        assert not queue.is_pending("nothing")
    finally:
        queue.close()


def test_url_defaults_and_tls() -> None:
    plain = CeleryQueue.from_url("celery+redis://localhost")
    try:
        connection = plain._app.connection_for_write()
        assert (connection.hostname, connection.port, connection.virtual_host) == (
            "localhost",
            6379,
            "0",
        )
        assert plain._app.conf.broker_use_ssl is None
        assert plain._queue_name == "bulkresize"
    finally:
        plain.close()
    secure = CeleryQueue.from_url("celery+rediss://:pw@127.0.0.1:6380/2?queue=q")
    try:
        connection = secure._app.connection_for_write()
        assert (connection.transport_cls, connection.port, connection.password) == (
            "rediss",
            6380,
            "pw",
        )
        assert secure._app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        assert issubclass(secure._redis.connection_pool.connection_class, redis.SSLConnection)
    finally:
        secure.close()
    lax = CeleryQueue.from_url("celery+rediss://127.0.0.1:6380/0?ssl_cert_reqs=none")
    try:
        assert lax._app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_NONE}
    finally:
        lax.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("celery://:s3cret-pw@127.0.0.1:6379/0?batch=many", "batch"),
        ("celery://:s3cret-pw@127.0.0.1:6379/0?colour=blue", "unknown option colour"),
        ("celery://:s3cret-pw@127.0.0.1:6379/zero", "database number"),
        ("celery://:s3cret-pw@127.0.0.1:port/0", "celery queue URL"),
        ("celery://:s3cret-pw@127.0.0.1/0?ssl_cert_reqs=none", r"need celery\+rediss"),
        ("celery+rediss://:s3cret-pw@127.0.0.1/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("celery://:s3cret-pw@127.0.0.1/0?queue=a%20b", "invalid queue name"),
        ("celery://:s3cret-pw@127.0.0.1/0?worker_ttl=1", "worker_ttl"),
        ("celery+amqp://:s3cret-pw@127.0.0.1/0", "scheme must be one of"),
    ],
)
def test_a_malformed_url_is_a_configuration_error_without_the_password(
    url: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError, match=expected) as caught:
        CeleryQueue.from_url(url)
    assert "s3cret-pw" not in str(caught.value)


def test_an_unreachable_redis_is_a_queue_error_without_the_password() -> None:
    queue = CeleryQueue.from_url("celery://:s3cret-pw@127.0.0.1:1/0?queue=x")
    try:
        for attempt in (
            lambda: queue.enqueue(jobs(1)),
            lambda: queue.is_pending("job-0"),
            lambda: queue.start(lambda job: None),
            lambda: queue.work(lambda job: None, burst=True),
        ):
            with pytest.raises(QueueError) as caught:
                attempt()
            assert "s3cret-pw" not in str(caught.value)
            assert "127.0.0.1:1/0" in str(caught.value)
    finally:
        queue.close()


def test_an_unsent_batch_leaves_no_marker_behind(
    celery_redis: redis.Redis, celery_redis_url: str, celery_queue_name: str
) -> None:
    # The markers' Redis answers but the broker does not: enqueue() fails, and says so.
    queue = CeleryQueue(
        "redis://:s3cret-pw@127.0.0.1:1/0",
        client=redis.Redis.from_url(celery_redis_url),
        queue=celery_queue_name,
    )
    try:
        with pytest.raises(QueueError, match="cannot queue jobs") as caught:
            queue.enqueue(jobs(3))
        assert "s3cret-pw" not in str(caught.value)
        assert not queue.is_pending("job-0")  # so the sweeper queues it again
        assert not celery_redis.keys(f"{KEY_PREFIX}*")
    finally:
        queue.close()


def test_the_celery_broker_url_variable_does_not_redirect_the_queue(
    monkeypatch: pytest.MonkeyPatch, celery_queue: CeleryQueue
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    seen: list[str] = []
    celery_queue.enqueue(jobs(2))
    celery_queue.work(lambda job: seen.append(job.id), burst=True)
    assert sorted(seen) == ["job-0", "job-1"]


# -- messages and markers --------------------------------------------------------------------


def test_a_celery_task_carries_a_batch(
    celery_redis: redis.Redis, celery_queue: CeleryQueue, celery_queue_name: str
) -> None:
    celery_queue.enqueue(jobs(10))
    messages = [json.loads(raw) for raw in celery_redis.lrange(celery_queue_name, 0, -1)]
    messages.reverse()  # kombu pushes on the left and pops on the right
    assert [message["headers"]["task"] for message in messages] == [TASK_NAME] * 3
    batches = [json.loads(base64.b64decode(message["body"]))[0][0] for message in messages]
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert batches[0][1] == {"id": "job-1", "kind": "test", "payload": {"n": 1}}
    task_id = messages[0]["headers"]["id"]
    marker = celery_redis.get(f"{KEY_PREFIX}{celery_queue_name}:job:job-1")
    assert marker == task_id.encode()
    assert 0 < celery_redis.ttl(f"{KEY_PREFIX}{celery_queue_name}:job:job-1") <= 86_400


def test_is_pending_is_false_once_redis_loses_every_key(
    celery_redis: redis.Redis, celery_queue: CeleryQueue
) -> None:
    celery_queue.enqueue(jobs(3))
    assert celery_queue.is_pending("job-2")
    celery_redis.flushdb()
    assert not celery_queue.is_pending("job-2")


def test_a_started_job_is_pending_only_while_its_worker_lives(
    celery_redis: redis.Redis, celery_url: str, celery_queue_name: str
) -> None:
    queue = CeleryQueue.from_url(f"{celery_url}?queue={celery_queue_name}&worker_ttl=6")
    entered, release = threading.Event(), threading.Event()

    def handler(job: Job) -> None:
        entered.set()
        release.wait(20)

    try:
        queue.enqueue(jobs(1))
        queue.start(handler)
        assert entered.wait(20)
        assert queue.is_pending("job-0")
        (key,) = celery_redis.keys(f"{KEY_PREFIX}worker:*")
        assert 0 < celery_redis.ttl(key) <= 6  # a killed worker is seen dead within worker_ttl
        celery_redis.delete(key)  # as when a SIGKILLed worker's key expires
        assert not queue.is_pending("job-0")
    finally:
        release.set()
        queue.close()
    assert not celery_redis.keys(f"{KEY_PREFIX}worker:*")  # a stopped worker removes its key


def test_a_newer_batch_of_the_same_job_keeps_its_marker(
    celery_redis: redis.Redis, celery_queue: CeleryQueue
) -> None:
    entered, release = threading.Event(), threading.Event()
    runs: Counter[str] = Counter()

    def handler(job: Job) -> None:
        runs[job.id] += 1
        if runs[job.id] == 1:
            entered.set()
            release.wait(20)

    celery_queue.enqueue(jobs(1))
    celery_queue.start(handler)
    assert entered.wait(20)
    celery_queue.enqueue(jobs(1))  # the sweeper queues it again while the first run hangs
    release.set()
    wait_for(lambda: runs["job-0"] >= 2)
    wait_for(lambda: not celery_queue.is_pending("job-0"))


# -- retries ---------------------------------------------------------------------------------


def test_a_failing_batch_is_retried_whole(celery_queue: CeleryQueue) -> None:
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def handler(job: Job) -> None:
        with lock:
            seen[job.id] += 1
            first = seen[job.id] == 1
        if job.id == "job-1" and first:
            raise RuntimeError("deliberate")

    celery_queue.enqueue(jobs(3))  # one batch of three
    celery_queue.start(handler)
    wait_for(lambda: min(seen[f"job-{n}"] for n in range(3)) >= 2)
    wait_for(lambda: not celery_queue.is_pending("job-1"))
    assert seen == Counter({"job-0": 2, "job-1": 2, "job-2": 2})


def test_a_batch_pending_for_a_retry_is_pending_and_one_that_failed_for_good_is_not(
    monkeypatch: pytest.MonkeyPatch, celery_queue: CeleryQueue
) -> None:
    monkeypatch.setattr(celery_queue_module, "_RETRY_INTERVALS", (1, 1, 1))
    seen: Counter[str] = Counter()
    pending_between: list[bool] = []

    def handler(job: Job) -> None:
        seen[job.id] += 1
        raise RuntimeError("always")

    celery_queue.enqueue(jobs(1))
    celery_queue.start(handler)
    wait_for(lambda: seen["job-0"] >= 1)
    time.sleep(0.3)  # the first run is over; its retry waits for its countdown
    pending_between.append(celery_queue.is_pending("job-0"))
    wait_for(lambda: seen["job-0"] >= 4)
    wait_for(lambda: not celery_queue.is_pending("job-0"))
    time.sleep(1.5)
    assert seen["job-0"] == 4  # the first run and three retries, then the sweeper's turn
    assert pending_between == [True]


# -- workers ---------------------------------------------------------------------------------


def test_the_task_outside_a_worker_is_a_clear_error(celery_queue: CeleryQueue) -> None:
    with pytest.raises(QueueError, match="runs only in a worker"):
        celery_queue._task([jobs(1)[0].to_dict()])


def test_two_queues_in_one_process_run_their_own_jobs_with_their_own_handlers(
    celery_redis: redis.Redis, celery_url: str, celery_queue_name: str
) -> None:
    first = CeleryQueue.from_url(f"{celery_url}?queue={celery_queue_name}-a&batch=2")
    second = CeleryQueue.from_url(f"{celery_url}?queue={celery_queue_name}-b&batch=2")
    seen: dict[str, list[str]] = {"a": [], "b": []}
    try:
        first.start(lambda job: seen["a"].append(job.id))
        second.start(lambda job: seen["b"].append(job.id))
        first.enqueue(jobs(5, "a"))
        second.enqueue(jobs(5, "b"))
        wait_for(lambda: len(seen["a"]) >= 5 and len(seen["b"]) >= 5)
    finally:
        first.close()
        second.close()
    assert sorted(seen["a"]) == [f"a-{n}" for n in range(5)]
    assert sorted(seen["b"]) == [f"b-{n}" for n in range(5)]


def test_close_from_another_thread_stops_a_foreground_worker(celery_queue: CeleryQueue) -> None:
    errors: list[BaseException] = []
    seen: list[str] = []

    def run() -> None:
        try:
            celery_queue.work(lambda job: seen.append(job.id))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    celery_queue.enqueue(jobs(2))
    wait_for(lambda: len(seen) == 2)
    started = time.monotonic()
    celery_queue.close()
    thread.join(20)
    assert not thread.is_alive()
    assert time.monotonic() - started < 10
    assert errors == []
    with pytest.raises(QueueError, match="closed"):
        celery_queue.enqueue(jobs(1))
