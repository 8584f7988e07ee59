"""Upload size: 413 while the body streams, before it is read; the error shape of DESIGN §4."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from serving import csv_of, serving

from bulkresize.settings import Settings
from bulkresize.web import create_app

LIMIT = 2000


@pytest.fixture
def small(
    settings: Settings, make_client: Callable[..., TestClient[Litestar]]
) -> TestClient[Litestar]:
    """The app with a 2000-byte upload limit."""
    return make_client(settings.replace(max_upload_bytes=LIMIT))


def a_csv_of(size: int) -> bytes:
    """A valid-looking CSV of exactly ``size`` bytes."""
    data = csv_of((1, "x", "https://example.com/a.jpg"))
    return data + b"#" * (size - len(data))


def assert_413(response_json: dict[str, object]) -> None:
    assert response_json == {
        "status_code": 413,
        "detail": f"the upload is larger than the limit of {LIMIT} bytes",
    }


def test_a_raw_body_over_the_limit_is_413(small: TestClient[Litestar]) -> None:
    response = small.post(
        "/v1/requests", content=a_csv_of(LIMIT + 1), headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 413
    assert_413(response.json())


def test_a_raw_body_at_the_limit_is_read(small: TestClient[Litestar]) -> None:
    response = small.post(
        "/v1/requests", content=a_csv_of(LIMIT), headers={"Content-Type": "text/csv"}
    )
    assert response.status_code != 413, response.text


def test_a_chunked_raw_body_is_counted_while_it_streams(small: TestClient[Litestar]) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"x" * 500

    response = small.post("/v1/requests", content=chunks(), headers={"Content-Type": "text/csv"})
    assert response.status_code == 413
    assert_413(response.json())


def test_a_multipart_file_over_the_limit_is_413(small: TestClient[Litestar]) -> None:
    # Inside the multipart margin, so the part itself is what is refused.
    response = small.post("/v1/requests", files={"file": ("a.csv", a_csv_of(LIMIT + 1))})
    assert response.status_code == 413
    assert_413(response.json())


def test_a_multipart_body_far_over_the_limit_is_413(small: TestClient[Litestar]) -> None:
    response = small.post("/v1/requests", files={"file": ("a.csv", a_csv_of(1_000_000))})
    assert response.status_code == 413
    assert_413(response.json())


def test_the_compatibility_route_has_the_same_limit(small: TestClient[Litestar]) -> None:
    response = small.post("/jobs", files={"file": ("a.csv", a_csv_of(LIMIT + 1))})
    assert response.status_code == 413
    assert_413(response.json())


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_real_server_answers_413_before_the_body_is_sent(
    settings: Settings, framing: str
) -> None:
    """Over uvicorn: the answer comes while most of a large body is still unsent."""
    announced = 50 * 1024 * 1024
    with serving(create_app(settings.replace(max_upload_bytes=LIMIT))) as url:
        address = urlsplit(url)
        with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
            length = (
                f"Content-Length: {announced}"
                if framing == "content-length"
                else "Transfer-Encoding: chunked"
            )
            sock.sendall(
                f"POST /v1/requests HTTP/1.1\r\nHost: {address.netloc}\r\n"
                f"Content-Type: text/csv\r\n{length}\r\n\r\n".encode()
            )
            piece = b"x" * 4096
            if framing == "chunked":
                piece = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            sock.sendall(piece)  # a few KB of the 50 MB, then nothing more: no deadlock
            response = read_response(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"status_code":413' in body
