"""Fixtures for the Celery queue's tests: a real Redis (database 13) and a loopback origin.

Named ``celery_*`` so that they cannot be mistaken for the main suite's fixtures, and none is
named like a fixture of Celery's own pytest plug-in (``celery_app``, ``celery_worker`` …).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import redis

#: Database 13 is this plug-in's alone (the main suite uses 15, the distributed topology 14);
#: only it is flushed.
REDIS_URL = os.environ.get("BULKRESIZE_TEST_CELERY_REDIS_URL", "redis://127.0.0.1:6379/13")


def _unavailable(service: str, reason: str) -> None:
    """Skip locally, fail in CI: CI must never skip an integration test silently."""
    message = f"{service} is not available: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def celery_redis_url() -> str:
    """The test Redis URL, after checking that the server answers."""
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        _unavailable("Redis", str(exc))
    return REDIS_URL


@pytest.fixture
def celery_url(celery_redis_url: str) -> str:
    """The same Redis as a ``celery://`` queue URL, without a query."""
    return "celery" + celery_redis_url.removeprefix("redis")


@pytest.fixture
def celery_redis(celery_redis_url: str) -> Iterator[redis.Redis]:
    """A client on the test database, emptied before and after the test."""
    client = redis.Redis.from_url(celery_redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def celery_queue_name() -> str:
    """A queue name no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


class LoopbackOrigin:
    """A threaded HTTP server on 127.0.0.1 that serves bytes set by the test.

    A route may hold its first responses for a while, as a hanging image server would.
    """

    def __init__(self) -> None:
        self._routes: dict[str, tuple[bytes, list[float]]] = {}
        self._hits: dict[str, int] = {}
        self._lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output quiet

            def do_GET(self) -> None:
                origin._serve(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def add(self, path: str, body: bytes, *, delays: list[float] | None = None) -> str:
        """Serve ``body`` at ``path``, the n-th request after ``delays[n]`` seconds."""
        with self._lock:
            self._routes[path] = (body, list(delays or []))
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def hits(self, path: str) -> int:
        with self._lock:
            return self._hits.get(path, 0)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        path = urlsplit(handler.path).path
        with self._lock:
            hit = self._hits.get(path, 0)
            self._hits[path] = hit + 1
            route = self._routes.get(path)
        body, delays = route if route else (b"not found", [])
        try:
            if hit < len(delays):
                time.sleep(delays[hit])
            handler.send_response(200 if route else 404)
            handler.send_header("Content-Type", "image/jpeg" if route else "text/plain")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a killed worker)

    def __enter__(self) -> LoopbackOrigin:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def celery_origin() -> Iterator[LoopbackOrigin]:
    """A loopback HTTP origin for the images of a request."""
    with LoopbackOrigin() as origin:
        yield origin
