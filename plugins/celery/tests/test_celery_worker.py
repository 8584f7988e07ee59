"""Real `bulkresize worker` processes on the Celery queue: a request runs to the end, and the
images of a SIGKILLed worker are run by another worker.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image, ImageDraw

from bulkresize.models import ImageStatus, RequestStatus
from bulkresize.service import Pipeline
from bulkresize.settings import Settings

pytestmark = pytest.mark.integration


def bulkresize_command() -> list[str]:
    """The installed console script, beside the interpreter running the tests."""
    script = Path(sys.executable).parent / "bulkresize"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bulkresize"]


def jpeg(width: int = 160, height: int = 120) -> bytes:
    image = Image.new("RGB", (width, height), (30, 90, 200))
    ImageDraw.Draw(image).ellipse([20, 20, 100, 90], fill=(220, 60, 40))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def worker_env(tmp_path: Path, queue_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKRESIZE_", "CELERY_"))}
    env["BULKRESIZE_DATA_DIR"] = str(tmp_path / "data")
    env["BULKRESIZE_ALLOW_PRIVATE_URLS"] = "true"  # the images are on 127.0.0.1
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


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_worker_burst_processes_a_submitted_request(
    tmp_path: Path,
    celery_origin: Any,
    celery_redis: redis.Redis,
    celery_url: str,
    celery_queue_name: str,
) -> None:
    picture = jpeg()
    urls = [celery_origin.add(f"/{n}.jpg", picture) for n in range(6)]
    queue_url = f"{celery_url}?queue={celery_queue_name}&batch=4"
    request_id = submit(tmp_path, queue_url, urls)
    assert status(tmp_path, request_id)[0] is RequestStatus.PENDING
    assert celery_redis.llen(celery_queue_name) == 2  # two tasks: 4 images, then 2

    result = subprocess.run(
        [*bulkresize_command(), "worker", "--burst"],
        env=worker_env(tmp_path, queue_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert status(tmp_path, request_id) == (RequestStatus.COMPLETED, [ImageStatus.DONE] * 6)
    assert all(celery_origin.hits(f"/{n}.jpg") == 1 for n in range(6))
    assert celery_redis.llen(celery_queue_name) == 0


def test_a_sigkilled_workers_images_are_run_by_another_worker(
    tmp_path: Path,
    celery_origin: Any,
    celery_redis: redis.Redis,
    celery_url: str,
    celery_queue_name: str,
) -> None:
    picture = jpeg()
    # The first download hangs, so the first worker is mid-batch when it is killed.
    slow = celery_origin.add("/slow.jpg", picture, delays=[20])
    urls = [slow, celery_origin.add("/fast.jpg", picture)]
    queue_url = f"{celery_url}?queue={celery_queue_name}&worker_ttl=5"
    request_id = submit(tmp_path, queue_url, urls)
    env = worker_env(tmp_path, queue_url, BULKRESIZE_SWEEP_INTERVAL="1")

    first = subprocess.Popen(
        [*bulkresize_command(), "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: celery_origin.hits("/slow.jpg") >= 1, timeout=30)
    finally:
        first.kill()
        first.wait(10)
    killed_at = time.monotonic()
    # Its batch stays unacknowledged in Redis (for visibility_timeout), and its worker key
    # expires within worker_ttl: then the sweeper of the next worker queues the image again.
    assert celery_redis.hlen("unacked") == 1

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
    assert celery_origin.hits("/slow.jpg") == 2


def test_a_second_sigterm_gives_the_running_batch_back_at_once(
    tmp_path: Path,
    celery_origin: Any,
    celery_redis: redis.Redis,
    celery_url: str,
    celery_queue_name: str,
) -> None:
    picture = jpeg()
    slow = celery_origin.add("/slow.jpg", picture, delays=[4])
    urls = [slow, celery_origin.add("/fast.jpg", picture)]
    queue_url = f"{celery_url}?queue={celery_queue_name}"
    request_id = submit(tmp_path, queue_url, urls)
    env = worker_env(tmp_path, queue_url)

    worker = subprocess.Popen(
        [*bulkresize_command(), "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: celery_origin.hits("/slow.jpg") >= 1, timeout=30)
        worker.send_signal(signal.SIGTERM)  # warm: it would wait for the batch
        time.sleep(0.5)
        worker.send_signal(signal.SIGTERM)  # cold: the batch goes back to Redis now
        wait_for(lambda: celery_redis.llen(celery_queue_name) == 1, timeout=3)
        assert celery_redis.hlen("unacked") == 0
        # The download in flight still ends before the process does.
        _, stderr = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, stderr

    result = subprocess.run(
        [*bulkresize_command(), "worker", "--burst"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert status(tmp_path, request_id) == (RequestStatus.COMPLETED, [ImageStatus.DONE] * 2)
    assert celery_origin.hits("/slow.jpg") == 2  # the batch ran again: at least once
    assert celery_redis.llen(celery_queue_name) == 0
