"""The HTTP service under test: CSVs to upload, polling, and a real uvicorn on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from litestar import Litestar
from litestar.testing import TestClient

BASE_URL = "http://testserver.local"
HEADER = "S. No.,Product Name,Input Image Urls"


def csv_of(*rows: tuple[int | str, str, str], header: str = HEADER) -> bytes:
    """A CSV with the required columns; each row is (serial, name, urls)."""
    lines = [header]
    for serial, name, urls in rows:
        lines.append(f'{serial},{name},"{urls}"')
    return ("\n".join(lines) + "\n").encode()


def wait_final(
    client: TestClient[Litestar], request_id: str, timeout: float = 20
) -> dict[str, Any]:
    """Poll the status document until the request is final."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/requests/{request_id}")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        if document["status"] in ("completed", "failed"):
            return document
        assert time.monotonic() < deadline, f"still {document['status']}: {document}"
        time.sleep(0.05)


@contextmanager
def serving(app: Litestar) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on a loopback port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Accepted sockets inherit this: no Nagle delay between a response's head and body.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="none", http="h11")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
