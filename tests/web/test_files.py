"""GET /files/{key}: stored outputs when storage is local, and nothing outside the storage root."""

from __future__ import annotations

import http.client
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient
from serving import serving

from bulkresize.settings import Settings
from bulkresize.web import create_app

SECRET = b"top secret, outside the storage root"
STORED = (b"\xff\xd8\xff stored", b"a,b\n", b"<script>alert(1)</script>")


class Server:
    """A live server over a data dir with one stored object and secrets around it."""

    def __init__(self, url: str, data_dir: Path) -> None:
        address = urlsplit(url)
        self.connection = http.client.HTTPConnection(
            address.hostname or "", address.port, timeout=10
        )
        self.data_dir = data_dir

    def get(self, raw_path: str) -> tuple[int, bytes]:
        """GET a path sent byte for byte as given (http.client does not normalise it)."""
        self.connection.putrequest("GET", raw_path, skip_accept_encoding=True)
        self.connection.endheaders()
        response = self.connection.getresponse()
        return response.status, response.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("files") / "data"
    files = data_dir / "files"
    (files / "req").mkdir(parents=True)
    (files / "req" / "1-1.jpg").write_bytes(b"\xff\xd8\xff stored")
    (files / "req" / "output.csv").write_bytes(b"a,b\n")
    (files / "req" / "page.html").write_bytes(b"<script>alert(1)</script>")
    (data_dir / "secret.txt").write_bytes(SECRET)
    (data_dir.parent / "secret.txt").write_bytes(SECRET)
    settings = Settings(data_dir=data_dir)
    with serving(create_app(settings)) as url:
        server = Server(url, data_dir)
        yield server
        server.connection.close()


def test_a_stored_object_is_served_with_its_content_type(server: Server) -> None:
    status, body = server.get("/files/req/1-1.jpg")
    assert (status, body) == (200, b"\xff\xd8\xff stored")
    server.connection.putrequest("GET", "/files/req/output.csv")
    server.connection.endheaders()
    response = server.connection.getresponse()
    assert response.read() == b"a,b\n"
    assert response.getheader("content-type") == "text/csv; charset=utf-8"
    assert response.getheader("x-content-type-options") == "nosniff"


def test_active_content_is_never_served_as_such(server: Server) -> None:
    server.connection.putrequest("GET", "/files/req/page.html")
    server.connection.endheaders()
    response = server.connection.getresponse()
    response.read()
    assert response.status == 200
    assert response.getheader("content-type") == "application/octet-stream"


TRAVERSALS = [
    "/files/../secret.txt",
    "/files/../../secret.txt",
    "/files/req/../../secret.txt",
    "/files/%2e%2e/secret.txt",
    "/files/%2E%2E/secret.txt",
    "/files/.%2e/secret.txt",
    "/files/%2e%2e%2fsecret.txt",
    "/files/%2e%2e%2Fsecret.txt",
    "/files/..%2fsecret.txt",
    "/files/..%2F..%2Fsecret.txt",
    "/files/req%2F..%2F..%2Fsecret.txt",
    "/files/%252e%252e/secret.txt",
    "/files/..%252fsecret.txt",
    "/files/..\\secret.txt",
    "/files/..%5csecret.txt",
    "/files/..%5Csecret.txt",
    "/files/req\\..\\..\\secret.txt",
    "/files//etc/passwd",
    "/files/%2fetc%2fpasswd",
    "/files/%2Fetc/passwd",
    "/files///etc/passwd",
    "/files/./req/1-1.jpg",
    "/files/req/./1-1.jpg",
    "/files/req//1-1.jpg",
    "/files/req/1-1.jpg%00",
    "/files/req/1-1.jpg%00.png",
    "/files/%00",
    "/files/..",
    "/files/.",
    "/files/",
    "/files",
    "/files/req",
    "/files/req/",
    "/files/%c0%ae%c0%ae/secret.txt",
    "/files/%uff0e%uff0e/secret.txt",
    "/files/....//secret.txt",
    "/files/..;/secret.txt",
    "/files/~/secret.txt",
    "/files/file:///etc/passwd",
    "/files/C:\\Windows\\win.ini",
    "/files/proc/self/environ",
    "/files/../bulkresize.db",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_encoding_reaches_outside_the_storage_root(server: Server, path: str) -> None:
    status, body = server.get(path)
    assert SECRET not in body
    if status == 200:
        # Only a stored object, however the path was spelled ("req//1-1.jpg").
        assert body in STORED, path
    else:
        assert status in (400, 404), (path, status, body[:100])
        assert body.startswith(b'{"status_code":%d,' % status)


SEGMENTS = st.sampled_from(
    [
        "..",
        ".",
        "%2e%2e",
        "%2E.",
        "%2f",
        "%2F",
        "%5c",
        "\\",
        "/",
        "%00",
        "req",
        "1-1.jpg",
        "secret.txt",
        "%252e",
        "files",
        "",
    ]
)


@given(st.lists(SEGMENTS, min_size=1, max_size=8))
@hypothesis_settings(max_examples=150, deadline=None)
def test_no_path_made_of_dots_slashes_and_encodings_escapes(
    server: Server, segments: list[str]
) -> None:
    path = "/files/" + "/".join(segments)
    status, body = server.get(path)
    assert SECRET not in body
    if status == 200:
        # Only the stored objects themselves, however the path was spelled.
        assert body in STORED, path


@given(st.text(alphabet=string.printable, max_size=40))
@hypothesis_settings(max_examples=100, deadline=None)
def test_any_key_is_served_only_from_inside_the_root(server: Server, key: str) -> None:
    status, body = server.get("/files/" + quote(key, safe="/"))
    assert SECRET not in body
    assert status in (200, 400, 404)


def test_nothing_is_served_when_storage_is_not_local(
    settings: Settings, make_client: Callable[..., TestClient[Litestar]]
) -> None:
    client = make_client(settings.replace(storage_url="memory://web-files-test", public_url=None))
    pipeline = client.app.state["bulkresize_pipeline"]
    pipeline.storage.put("req/1-1.jpg", b"stored", content_type="image/jpeg")
    assert pipeline.storage.get("req/1-1.jpg") == b"stored"
    response = client.get("/files/req/1-1.jpg")
    assert response.status_code == 404
    assert response.json() == {"status_code": 404, "detail": "Not Found"}
