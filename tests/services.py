"""Real services for integration tests: skipped when absent locally, a failure when CI=true."""

from __future__ import annotations

import os

import pytest

POSTGRES_URL = os.environ.get(
    "BULKRESIZE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("BULKRESIZE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def unavailable(service: str, reason: str) -> None:
    """Skip locally, fail in CI: CI must never skip an integration test silently."""
    message = f"{service} is not available: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_postgres() -> str:
    """The PostgreSQL URL, after checking that the server answers."""
    try:
        import psycopg
    except ImportError as exc:
        unavailable("PostgreSQL", f"psycopg is not installed ({exc})")
    dsn = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(dsn, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        unavailable("PostgreSQL", str(exc).splitlines()[0])
    return POSTGRES_URL


class MotoServer:
    """An S3-compatible server (moto) on a free loopback port, for the length of a session."""

    def __init__(self) -> None:
        import shutil
        import socket
        import subprocess
        import sys
        from pathlib import Path

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        script = Path(sys.executable).parent / "moto_server"
        command = [str(script)] if script.exists() else [shutil.which("moto_server") or ""]
        if not command[0]:
            unavailable("moto_server", "moto[server] is not installed")
        self.process = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 30) -> MotoServer:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                unavailable("moto_server", f"it exited with code {self.process.returncode}")
            try:
                httpx.get(self.endpoint_url, timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        unavailable("moto_server", "it did not answer within 30 s")
        raise AssertionError("unreachable")

    def create_bucket(self, name: str) -> None:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=name)

    def storage_options(self) -> dict[str, object]:
        return {"endpoint_url": self.endpoint_url, "key": "testing", "secret": "testing"}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def require_redis() -> str:
    """The Redis URL for tests (database 15), after checking that the server answers."""
    try:
        import redis
    except ImportError as exc:
        unavailable("Redis", f"redis-py is not installed ({exc})")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        unavailable("Redis", str(exc))
    return REDIS_URL
