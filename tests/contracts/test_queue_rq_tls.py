"""The RQ queue over TLS (``rediss://``) to a real redis-server with a certificate of ours."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulkresize.errors import QueueError
from bulkresize.queues import Job, Queue
from bulkresize.queues.rq import RQQueue
from bulkresize.testing import QueueContract
from services import unavailable

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A TLS-only redis-server on a free loopback port; yields the port and the CA file."""
    server, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if server is None or openssl is None:
        unavailable("redis-server with TLS", "redis-server or openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    ca, key = folder / "ca.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(ca)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = _free_port()
    process = subprocess.Popen(
        [server, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(ca),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    unavailable("redis-server with TLS", "it did not start")
                time.sleep(0.05)
        yield port, ca
    finally:
        process.terminate()
        process.wait(10)


class TestRQQueueOverTLS(QueueContract):
    @pytest.fixture
    def queue(self, tls_redis: tuple[int, Path]) -> Iterator[Queue]:
        port, ca = tls_redis
        name = f"tls-{uuid.uuid4().hex[:8]}"
        queue = RQQueue.from_url(f"rediss://127.0.0.1:{port}/0?queue={name}&ssl_ca_certs={ca}")
        yield queue
        queue.close()


def test_a_server_certificate_we_do_not_trust_is_a_queue_error(
    tls_redis: tuple[int, Path],
) -> None:
    port, _ = tls_redis
    queue = RQQueue.from_url(f"rediss://127.0.0.1:{port}/0?queue=untrusted")
    try:
        with pytest.raises(QueueError, match=r"127\.0\.0\.1"):
            queue.enqueue([Job(id="job-0", kind="test")])
    finally:
        queue.close()
