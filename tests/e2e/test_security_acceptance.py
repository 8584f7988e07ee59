"""Issue 7's acceptance: a server on default settings with API keys, against hostile input."""

from __future__ import annotations

import csv
import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from images import encode, photo
from origin import Origin
from server import ServeProcess

KEY_ONE, KEY_TWO = "key-one-3b1f0c", "key-two-9d2e4a"
ONE = {"Authorization": f"Bearer {KEY_ONE}"}
TWO = {"X-API-Key": KEY_TWO}
HEADER = "S. No.,Product Name,Input Image Urls\n"


class Server:
    """The serve process, and every status code it has answered."""

    def __init__(self, process: ServeProcess) -> None:
        self.base_url = process.base_url
        self.statuses: list[int] = []

    def request(self, method: str, path: str, **options: object) -> httpx.Response:
        response = httpx.request(method, f"{self.base_url}{path}", timeout=120, **options)  # type: ignore[arg-type]
        self.statuses.append(response.status_code)
        return response

    def upload(
        self, data: bytes, headers: dict[str, str] | None = ONE, **fields: str
    ) -> httpx.Response:
        files = {"file": ("products.csv", data, "text/csv")}
        return self.request("POST", "/v1/requests", files=files, data=fields, headers=headers)

    def final(self, request_id: str, timeout: float = 60) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            document = self.request("GET", f"/v1/requests/{request_id}", headers=ONE).json()
            if document["status"] in ("completed", "failed"):
                return dict(document)
            time.sleep(0.1)
        raise AssertionError(f"request {request_id} not final in {timeout} s")

    def raw_get(self, target: str) -> int:
        """A GET whose request target goes on the wire byte for byte, unnormalised."""
        host, port = self.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64).decode("latin-1")
        status = int(head.split(" ", 2)[1])
        self.statuses.append(status)
        return status


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    # Default settings (SSRF guard on, default limits) with two API keys.
    process = ServeProcess(tmp_path / "data", {"BULKRESIZE_API_KEYS": f"{KEY_ONE},{KEY_TWO}"})
    process.start()
    try:
        yield Server(process)
    finally:
        process.stop()
        assert KEY_ONE not in process.output() and KEY_TWO not in process.output()


def test_a_default_server_with_api_keys_holds_against_hostile_input(
    server: Server, origin: Origin, tmp_path: Path
) -> None:
    picture = origin.add("/x.jpg", encode(photo(40, 30), "JPEG"))
    port = picture.split(":")[2].split("/")[0]
    good = f"{HEADER}1,Lamp,{picture}\n".encode()

    # Authentication: no key, a wrong key, then another key's request is invisible.
    assert server.upload(good, headers=None).status_code == 401
    assert server.upload(good, headers={"Authorization": "Bearer nope"}).status_code == 401

    # Eight internal-address forms: every one fails with blocked_url, none reaches the origin.
    internal = [
        f"http://localhost:{port}/x.jpg",
        f"http://[::1]:{port}/x.jpg",
        f"http://2130706433:{port}/x.jpg",
        f"http://0.0.0.0:{port}/x.jpg",
        f"http://[::ffff:127.0.0.1]:{port}/x.jpg",
        f"http://127.1:{port}/x.jpg",
        "http://169.254.169.254/latest/meta-data/",
        f"http://127.0.0.1:{port}/x.jpg",
    ]
    rows = "".join(
        f'{n},"=HYPERLINK(""http://evil/{n}"")",{url}\n' for n, url in enumerate(internal, 1)
    )
    accepted = server.upload(f"{HEADER}{rows}".encode())
    assert accepted.status_code == 202, accepted.text
    request_id = accepted.json()["request_id"]
    final = server.final(request_id)
    assert final["status"] == "failed"  # every image failed
    images = server.request("GET", f"/v1/requests/{request_id}/images", headers=ONE).json()
    assert [(image["status"], image["error"]) for image in images] == [
        ("failed", "blocked_url")
    ] * 8
    assert origin.hits("/x.jpg") == 0
    assert server.request("GET", f"/v1/requests/{request_id}", headers=TWO).status_code == 404

    # Formula injection: the product name comes back neutralised in the output CSV.
    output = server.request("GET", f"/v1/requests/{request_id}/output.csv", headers=ONE)
    assert output.status_code == 200
    names = [row[1] for row in csv.reader(io.StringIO(output.text))][1:]
    assert names and all(name.startswith("'=HYPERLINK(") for name in names), names

    # An internal callback_url is refused at upload.
    assert server.upload(good, callback_url=f"http://127.0.0.1:{port}/hook").status_code == 422

    # An upload over the 50 MB limit.
    big = HEADER.encode() + b"1,x,http://example.com/a.jpg\n" * (50 * 1024 * 1024 // 28 + 10)
    assert server.upload(big).status_code == 413

    # Hostile files: each one a 4xx.
    hostile = {
        "empty": b"",
        "header only": HEADER.encode(),
        "garbage": bytes(range(256)) * 40,
        "no header": f"1,Lamp,{picture}\n".encode(),
        "latin-1": f"{HEADER}1,Caf\u00e9,{picture}\n".encode("latin-1"),
    }
    for name, data in hostile.items():
        status = server.upload(data).status_code
        assert 400 <= status < 500, (name, status)

    # Path traversal through /files/, in every encoding: never a 200.
    for target in [
        "/files/../bulkresize.db",
        "/files/%2e%2e/bulkresize.db",
        "/files/%2e%2e%2fbulkresize.db",
        "/files/..%2fbulkresize.db",
        "/files/..%5cbulkresize.db",
        "/files/%252e%252e%252fbulkresize.db",
        "/files/....//bulkresize.db",
        "/files//etc/passwd",
        "/files/%2fetc%2fpasswd",
        f"/files/{request_id}/../../bulkresize.db",
        "/files/%00",
        "/files/..%c0%afbulkresize.db",
    ]:
        assert server.raw_get(target) != 200, target

    assert server.request("GET", "/healthz").status_code == 200
    assert all(status < 500 for status in server.statuses), server.statuses
