"""The RQ queue over a real Redis (database 15): the queue contract, liveness, and the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bulkresize.errors import ConfigurationError, QueueError
from bulkresize.models import ImageStatus, RequestStatus
from bulkresize.queues import Job, Queue
from bulkresize.queues.rq import RQQueue
from bulkresize.registry import create_backend
from bulkresize.service import Pipeline
from bulkresize.settings import Settings
from bulkresize.testing import QueueContract
from commands import bulkresize_command
from images import encode, photo
from origin import Origin, Response
from services import require_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_url() -> str:
    return require_redis()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture
def queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def rq_queue(client: redis.Redis, queue_name: str) -> Iterator[RQQueue]:
    queue = RQQueue(client, queue=queue_name, batch=4, concurrency=4)
    yield queue
    queue.close()


class TestRQQueue(QueueContract):
    @pytest.fixture
    def queue(self, rq_queue: RQQueue) -> Queue:
        return rq_queue


def jobs(count: int) -> list[Job]:
    return [Job(id=f"job-{n}", kind="test", payload={"n": n}) for n in range(count)]


def wait_for(condition: object, timeout: float = 20.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_url_options_and_the_registry(redis_url: str) -> None:
    queue = create_backend(
        "queue", f"{redis_url}?queue=photos&batch=8&concurrency=3&socket_timeout=7", Queue
    )
    assert isinstance(queue, RQQueue)
    try:
        assert (queue._queue_name, queue._batch, queue._concurrency) == ("photos", 8, 3)
        assert queue._redis.connection_pool.connection_kwargs["socket_timeout"] == 7.0
        assert not queue.is_pending("nothing")
    finally:
        queue.close()
    secure = RQQueue.from_url("rediss://127.0.0.1:6380/0")
    assert issubclass(secure._redis.connection_pool.connection_class, redis.SSLConnection)
    secure.close()


def test_an_rq_job_carries_a_batch(client: redis.Redis, rq_queue: RQQueue) -> None:
    import rq

    rq_queue.enqueue(jobs(10))
    queued = rq.Queue(rq_queue._queue_name, connection=client).jobs
    assert [len(job.args[0]) for job in queued] == [4, 4, 2]
    assert queued[0].func_name == "bulkresize.queues.rq.run_batch"
    assert queued[0].args[0][1] == {"id": "job-1", "kind": "test", "payload": {"n": 1}}


def test_is_pending_is_false_once_redis_loses_every_key(
    client: redis.Redis, rq_queue: RQQueue
) -> None:
    rq_queue.enqueue(jobs(3))
    assert rq_queue.is_pending("job-2")
    client.flushdb()
    assert not rq_queue.is_pending("job-2")


def test_a_started_job_is_pending_only_while_its_worker_lives(
    client: redis.Redis, rq_queue: RQQueue
) -> None:
    from rq import Queue as RQ
    from rq import Worker

    entered, release = threading.Event(), threading.Event()

    def handler(job: Job) -> None:
        entered.set()
        release.wait(20)

    rq_queue.enqueue(jobs(1))
    rq_queue.start(handler)
    try:
        assert entered.wait(20)
        assert rq_queue.is_pending("job-0")
        (key,) = Worker.all_keys(queue=RQ(rq_queue._queue_name, connection=client))
        assert 0 < client.ttl(key) <= 30  # a killed worker is seen dead within worker_ttl
        client.delete(key)  # as when a SIGKILLed worker's key expires
        assert not rq_queue.is_pending("job-0")
    finally:
        release.set()


def test_a_failing_batch_is_retried_whole(rq_queue: RQQueue) -> None:
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def handler(job: Job) -> None:
        with lock:
            seen[job.id] += 1
            first = seen[job.id] == 1
        if job.id == "job-1" and first:
            raise RuntimeError("deliberate")

    rq_queue.enqueue(jobs(3))  # one batch of three
    rq_queue.start(handler)
    wait_for(lambda: min(seen[f"job-{n}"] for n in range(3)) >= 2)
    wait_for(lambda: not rq_queue.is_pending("job-1"))
    assert seen == Counter({"job-0": 2, "job-1": 2, "job-2": 2})


def test_an_unreachable_redis_is_a_queue_error_without_the_password() -> None:
    queue = RQQueue.from_url("redis://:s3cret-pw@127.0.0.1:1/0?queue=x")
    try:
        with pytest.raises(QueueError) as caught:
            queue.enqueue(jobs(1))
        assert "s3cret-pw" not in str(caught.value)
        assert "127.0.0.1:1" in str(caught.value)
        with pytest.raises(QueueError) as caught:
            queue.is_pending("job-0")
        assert "s3cret-pw" not in str(caught.value)
    finally:
        queue.close()


def test_a_malformed_url_is_a_configuration_error_without_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RQQueue.from_url("redis://:s3cret-pw@127.0.0.1:6379/0?batch=many")
    assert "s3cret-pw" not in str(caught.value)
    assert "batch" in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        RQQueue.from_url("redis://:s3cret-pw@127.0.0.1:port/0")
    assert "s3cret-pw" not in str(caught.value)


def test_run_batch_outside_a_worker_is_a_clear_error() -> None:
    from bulkresize.queues.rq import run_batch

    with pytest.raises(QueueError, match="inside a bulkresize RQ worker"):
        run_batch([jobs(1)[0].to_dict()])


# -- the `bulkresize worker` command -----------------------------------------------------------


def worker_env(tmp_path: Path, queue_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKRESIZE_")}
    env["BULKRESIZE_DATA_DIR"] = str(tmp_path / "data")
    env["BULKRESIZE_ALLOW_PRIVATE_URLS"] = "true"
    if queue_url is not None:
        env["BULKRESIZE_QUEUE_URL"] = queue_url
    env.update(extra)
    return env


def submit(tmp_path: Path, queue_url: str, urls: list[str]) -> str:
    """Submit a CSV with a pipeline that is not started: nothing runs in this process."""
    settings = Settings(data_dir=tmp_path / "data", queue_url=queue_url, allow_private_urls=True)
    rows = "".join(f'{n},Product {n},"{url}"\n' for n, url in enumerate(urls, start=1))
    with Pipeline.from_settings(settings) as pipeline:
        request = pipeline.submit(f"S. No.,Product Name,Input Image Urls\n{rows}".encode())
    return request.id


def status(tmp_path: Path, request_id: str) -> tuple[RequestStatus, list[ImageStatus]]:
    settings = Settings(data_dir=tmp_path / "data")
    with Pipeline.from_settings(settings) as pipeline:
        report = pipeline.status(request_id)
        return report.status, [image.status for image in pipeline.images(request_id)]


def test_worker_burst_processes_a_submitted_request(
    tmp_path: Path, origin: Origin, client: redis.Redis, redis_url: str, queue_name: str
) -> None:
    picture = encode(photo(160, 120), "JPEG", quality=90)
    urls = [origin.add(f"/{n}.jpg", picture) for n in range(6)]
    queue_url = f"{redis_url}?queue={queue_name}&batch=4"
    request_id = submit(tmp_path, queue_url, urls)
    assert status(tmp_path, request_id)[0] is RequestStatus.PENDING

    result = subprocess.run(
        [*bulkresize_command(), "worker", "--burst"],
        env=worker_env(tmp_path, queue_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    final, images = status(tmp_path, request_id)
    assert final is RequestStatus.COMPLETED
    assert images == [ImageStatus.DONE] * 6


def test_worker_with_the_local_queue_exits_2_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [*bulkresize_command(), "worker"],
        env=worker_env(tmp_path, None),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "redis://" in lines[0]


def test_a_sigkilled_workers_images_are_run_by_another_worker(
    tmp_path: Path, origin: Origin, client: redis.Redis, redis_url: str, queue_name: str
) -> None:
    picture = encode(photo(160, 120), "JPEG", quality=90)
    # The first download hangs, so the first worker is mid-job when it is killed.
    slow = origin.add_sequence("/slow.jpg", [Response(picture, delay=20), Response(picture)])
    urls = [slow, origin.add("/fast.jpg", picture)]
    queue_url = f"{redis_url}?queue={queue_name}&worker_ttl=5"
    request_id = submit(tmp_path, queue_url, urls)
    env = worker_env(tmp_path, queue_url, BULKRESIZE_SWEEP_INTERVAL="1")

    first = subprocess.Popen(
        [*bulkresize_command(), "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: origin.hits("/slow.jpg") >= 1)
    finally:
        first.kill()
        first.wait(10)
    killed_at = time.monotonic()

    second = subprocess.Popen(
        [*bulkresize_command(), "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: status(tmp_path, request_id)[0].is_final, timeout=40)
        recovered_after = time.monotonic() - killed_at
        second.send_signal(signal.SIGTERM)  # a graceful stop
        _, stderr = second.communicate(timeout=20)
    finally:
        if second.poll() is None:
            second.kill()
            second.communicate()
    assert second.returncode == 0, stderr
    assert status(tmp_path, request_id) == (RequestStatus.COMPLETED, [ImageStatus.DONE] * 2)
    assert recovered_after < 30
