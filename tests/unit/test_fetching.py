"""Tests of bulkresize.fetching.Fetcher against a real loopback origin.

Loopback origins are private addresses, so most tests lift the SSRF guard
(``allow_private_urls=True``); the SSRF tests keep it on and check that the origin never sees a
request.
"""

from __future__ import annotations

import gc
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpcore
import pytest

from bulkresize.errors import (
    BlockedURL,
    ConfigurationError,
    DownloadError,
    FetchTimeout,
    HTTPStatusError,
    ImageTooLarge,
)
from bulkresize.fetching import FetchedImage, Fetcher
from bulkresize.settings import Settings
from origin import Origin, Response

MakeFetcher = Callable[..., Fetcher]

# Small limits so that the suite is fast; each test overrides what it is about.
FAST: dict[str, Any] = {
    "allow_private_urls": True,
    "connect_timeout": 1.0,
    "read_timeout": 1.0,
    "total_timeout": 5.0,
    "retries": 2,
    "retry_backoff": 0.01,
}

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture
def make_fetcher() -> Iterator[MakeFetcher]:
    """Build fetchers with the FAST defaults; all are closed after the test."""
    fetchers: list[Fetcher] = []

    def make(**options: Any) -> Fetcher:
        fetcher = Fetcher(**{**FAST, **options})
        fetchers.append(fetcher)
        return fetcher

    yield make
    for fetcher in fetchers:
        fetcher.close()


def port_of(origin: Origin) -> int:
    return int(origin.base_url.rsplit(":", 1)[1])


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def redirect(location: str, status: int = 302) -> Response:
    return Response(status=status, headers={"Location": location})


# --------------------------------------------------------------------------------------------
# Success
# --------------------------------------------------------------------------------------------


def test_fetch_returns_the_body_the_content_type_and_the_url(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add("/a.png", PNG, headers={"Content-Type": "image/png"})

    image = make_fetcher().fetch(url)

    assert image == FetchedImage(data=PNG, content_type="image/png", url=url)


def test_content_type_is_passed_through_untouched_and_not_enforced(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add("/a", PNG, headers={"Content-Type": "text/html; charset=utf-8"})

    image = make_fetcher().fetch(url)

    assert image.data == PNG
    assert image.content_type == "text/html; charset=utf-8"


def test_a_large_chunked_body_arrives_intact(origin: Origin, make_fetcher: MakeFetcher) -> None:
    body = os.urandom(3 * 1024 * 1024)
    url = origin.add("/big", body, chunked=True, drip_size=65536)

    assert make_fetcher().fetch(url).data == body


def test_the_request_identifies_itself_and_asks_for_uncompressed_bytes(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add("/a", PNG)

    make_fetcher().fetch(url)

    headers = {name.lower(): value for name, value in origin.requests[0][2].items()}
    assert headers["user-agent"].startswith("bulkresize/")
    assert headers["accept-encoding"] == "identity"


def test_cookies_from_one_fetch_are_not_sent_with_the_next(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    first = origin.add("/first", PNG, headers={"Set-Cookie": "session=secret; Path=/"})
    second = origin.add("/second", PNG)
    fetcher = make_fetcher()

    fetcher.fetch(first)
    fetcher.fetch(second)

    headers = {name.lower() for name in origin.requests[1][2]}
    assert "cookie" not in headers


# --------------------------------------------------------------------------------------------
# HTTP statuses and retries
# --------------------------------------------------------------------------------------------


def test_404_is_an_http_status_error_and_is_not_retried(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add("/missing", b"nope", status=404)

    with pytest.raises(HTTPStatusError) as caught:
        make_fetcher(retries=3).fetch(url)

    assert caught.value.code == "http_status"
    assert caught.value.status_code == 404
    assert str(caught.value) == "HTTP 404 Not Found"
    assert origin.hits("/missing") == 1


def test_503_then_200_succeeds_after_one_retry(origin: Origin, make_fetcher: MakeFetcher) -> None:
    url = origin.add_sequence("/flaky", [Response(b"busy", status=503), Response(PNG)])

    image = make_fetcher(retries=2).fetch(url)

    assert image.data == PNG
    assert origin.hits("/flaky") == 2


def test_503_forever_raises_the_last_status_after_every_attempt(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add("/down", b"busy", status=503)

    with pytest.raises(HTTPStatusError) as caught:
        make_fetcher(retries=2).fetch(url)

    assert caught.value.status_code == 503
    assert str(caught.value) == "HTTP 503 Service Unavailable"
    assert origin.hits("/down") == 3


def test_429_waits_as_long_as_retry_after_says(origin: Origin, make_fetcher: MakeFetcher) -> None:
    url = origin.add_sequence(
        "/limited", [Response(status=429, headers={"Retry-After": "1"}), Response(PNG)]
    )

    started = time.monotonic()
    image = make_fetcher(retries=1, retry_backoff=0.01).fetch(url)
    elapsed = time.monotonic() - started

    assert image.data == PNG
    assert origin.hits("/limited") == 2
    assert 0.95 <= elapsed < 2.0


def test_retry_after_beyond_the_deadline_gives_up_at_once(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add("/later", status=503, headers={"Retry-After": "30"})

    started = time.monotonic()
    with pytest.raises(HTTPStatusError) as caught:
        make_fetcher(retries=3, total_timeout=2.0).fetch(url)

    assert caught.value.status_code == 503
    assert time.monotonic() - started < 1.0
    assert origin.hits("/later") == 1


def test_backoff_doubles_between_attempts(origin: Origin, make_fetcher: MakeFetcher) -> None:
    url = origin.add("/down", status=500)

    started = time.monotonic()
    with pytest.raises(HTTPStatusError):
        make_fetcher(retries=2, retry_backoff=0.2).fetch(url)
    elapsed = time.monotonic() - started

    assert origin.hits("/down") == 3
    assert 0.6 <= elapsed < 0.6 * 1.2 + 0.5  # 0.2 + 0.4, plus at most 20 % jitter


def test_backoff_never_runs_past_the_deadline(origin: Origin, make_fetcher: MakeFetcher) -> None:
    url = origin.add("/down", status=502)

    started = time.monotonic()
    with pytest.raises(HTTPStatusError):
        make_fetcher(retries=5, retry_backoff=5.0, total_timeout=1.0).fetch(url)

    assert time.monotonic() - started < 0.5
    assert origin.hits("/down") == 1


def test_a_connection_dropped_mid_body_is_retried(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add_sequence("/drop", [Response(PNG, drop_after=10), Response(PNG)])

    assert make_fetcher(retries=1).fetch(url).data == PNG
    assert origin.hits("/drop") == 2


def test_a_connection_dropped_every_time_is_a_download_error(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add("/drop", PNG, drop_after=10)

    with pytest.raises(DownloadError) as caught:
        make_fetcher(retries=2).fetch(url)

    assert type(caught.value) is DownloadError
    assert caught.value.code == "download_error"
    assert origin.hits("/drop") == 3


# --------------------------------------------------------------------------------------------
# Size limit
# --------------------------------------------------------------------------------------------


def test_a_chunked_body_over_the_limit_is_too_large(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add("/huge", b"x" * 5000, chunked=True, drip_size=500)

    with pytest.raises(ImageTooLarge) as caught:
        make_fetcher(max_bytes=1000).fetch(url)

    assert caught.value.code == "too_large"
    assert origin.hits("/huge") == 1  # never retried


def test_a_lying_small_content_length_does_not_lift_the_limit(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    # Transfer-Encoding wins over Content-Length, so the whole body arrives despite "10".
    url = origin.add(
        "/liar", b"x" * 5000, chunked=True, drip_size=500, headers={"Content-Length": "10"}
    )

    with pytest.raises(ImageTooLarge):
        make_fetcher(max_bytes=1000).fetch(url)


def test_an_honest_content_length_over_the_limit_fails_before_the_body(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add("/honest", b"x" * 5_000_000)

    with pytest.raises(ImageTooLarge, match="5000000 bytes"):
        make_fetcher(max_bytes=1000).fetch(url)


def test_a_body_of_exactly_max_bytes_is_accepted(origin: Origin, make_fetcher: MakeFetcher) -> None:
    url = origin.add("/exact", b"x" * 1000, chunked=True, drip_size=300)

    assert len(make_fetcher(max_bytes=1000).fetch(url).data) == 1000


# --------------------------------------------------------------------------------------------
# Timeouts
# --------------------------------------------------------------------------------------------


def test_a_slow_drip_fails_soon_after_the_total_deadline(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    # 100 pieces, one every 0.05 s: every read is quick, the whole takes 5 s.
    url = origin.add("/drip", b"x" * 100_000, drip=0.05, drip_size=1000)

    started = time.monotonic()
    with pytest.raises(FetchTimeout) as caught:
        make_fetcher(total_timeout=1.0, read_timeout=1.0).fetch(url)
    elapsed = time.monotonic() - started

    assert caught.value.code == "timeout"
    assert 1.0 <= elapsed < 1.4
    assert origin.hits("/drip") == 1


def test_a_stall_after_the_first_bytes_still_ends_at_the_deadline(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    # Headers at 0.6 s, one piece, then 3 s of silence; the read timeout alone would allow 5 s.
    url = origin.add("/stall", b"x" * 2000, delay=0.6, drip=3.0, drip_size=1000)

    started = time.monotonic()
    with pytest.raises(FetchTimeout):
        make_fetcher(total_timeout=1.0, read_timeout=5.0).fetch(url)

    assert time.monotonic() - started < 1.3


def test_a_server_that_stalls_longer_than_the_read_timeout_times_out(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add("/stall", PNG, delay=3.0)

    started = time.monotonic()
    with pytest.raises(FetchTimeout, match="no data"):
        make_fetcher(read_timeout=0.3, retries=0).fetch(url)

    assert time.monotonic() - started < 1.0


def test_a_read_timeout_is_retried(origin: Origin, make_fetcher: MakeFetcher) -> None:
    url = origin.add_sequence("/once-slow", [Response(PNG, delay=2.0), Response(PNG)])

    assert make_fetcher(read_timeout=0.3, retries=1).fetch(url).data == PNG
    assert origin.hits("/once-slow") == 2


def test_a_stall_longer_than_the_deadline_ends_at_the_deadline(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add("/stall", PNG, delay=5.0)

    started = time.monotonic()
    with pytest.raises(FetchTimeout, match="in total"):
        make_fetcher(read_timeout=10.0, total_timeout=0.8).fetch(url)

    assert time.monotonic() - started < 1.2


# --------------------------------------------------------------------------------------------
# Connection failures: always one of our errors
# --------------------------------------------------------------------------------------------


def test_connection_refused_is_a_download_error(make_fetcher: MakeFetcher) -> None:
    url = f"http://127.0.0.1:{free_port()}/a.png"

    with pytest.raises(DownloadError, match="cannot connect") as caught:
        make_fetcher(retries=1).fetch(url)

    assert type(caught.value) is DownloadError
    assert caught.value.code == "download_error"


def test_tls_to_a_plain_http_server_is_a_download_error(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = f"https://127.0.0.1:{port_of(origin)}/a.png"

    with pytest.raises(DownloadError, match="TLS") as caught:
        make_fetcher().fetch(url)

    assert type(caught.value) is DownloadError


class _GarbageHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(65536)
        self.request.sendall(b"THIS IS NOT HTTP\r\n\r\n")


@pytest.fixture
def garbage_server() -> Iterator[str]:
    """A TCP server that answers every request with bytes that are not HTTP."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _GarbageHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/a.png"
    finally:
        server.shutdown()
        server.server_close()


def test_a_response_that_is_not_http_is_a_download_error(
    garbage_server: str, make_fetcher: MakeFetcher
) -> None:
    with pytest.raises(DownloadError) as caught:
        make_fetcher().fetch(garbage_server)

    assert type(caught.value) is DownloadError


# --------------------------------------------------------------------------------------------
# Redirects
# --------------------------------------------------------------------------------------------


def chain(origin: Origin, hops: int) -> str:
    """``/hop0`` -> ``/hop1`` -> ... -> ``/hop{hops}``, which serves the image."""
    for index in range(hops):
        origin.add_sequence(f"/hop{index}", [redirect(origin.url(f"/hop{index + 1}"))])
    origin.add(f"/hop{hops}", PNG)
    return origin.url("/hop0")


def test_a_chain_of_three_redirects_is_followed(origin: Origin, make_fetcher: MakeFetcher) -> None:
    image = make_fetcher().fetch(chain(origin, 3))

    assert image.data == PNG
    assert image.url == origin.url("/hop3")


def test_max_redirects_hops_are_followed(origin: Origin, make_fetcher: MakeFetcher) -> None:
    assert make_fetcher(max_redirects=5).fetch(chain(origin, 5)).data == PNG


def test_one_redirect_too_many_is_a_download_error(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    with pytest.raises(DownloadError, match="too many redirects") as caught:
        make_fetcher(max_redirects=5).fetch(chain(origin, 6))

    assert type(caught.value) is DownloadError
    assert origin.hits("/hop6") == 0  # the hop past the limit is never requested


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_every_redirect_status_is_followed(
    origin: Origin, make_fetcher: MakeFetcher, status: int
) -> None:
    origin.add("/target", PNG)
    url = origin.add_sequence("/moved", [redirect("/target", status)])

    assert make_fetcher().fetch(url).url == origin.url("/target")


@pytest.mark.parametrize(
    ("start", "location", "final"),
    [
        ("/dir/start", "/abs/target", "/abs/target"),
        ("/dir/start", "sibling", "/dir/sibling"),
        ("/dir/sub/start", "../up", "/dir/up"),
        ("/dir/start", "?v=2", "/dir/start?v=2"),
    ],
)
def test_a_relative_location_is_resolved_against_the_current_url(
    origin: Origin, make_fetcher: MakeFetcher, start: str, location: str, final: str
) -> None:
    origin.add_sequence(start, [redirect(location), Response(PNG)])  # then serves the image
    if final.split("?")[0] != start:
        origin.add(final, PNG)

    image = make_fetcher().fetch(origin.url(start))

    assert image.url == origin.url(final)
    assert image.data == PNG


def test_a_redirect_to_a_file_url_is_refused_even_when_files_are_allowed(
    origin: Origin, make_fetcher: MakeFetcher, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG)
    url = origin.add_sequence("/to-file", [redirect(secret.as_uri())])

    with pytest.raises(BlockedURL, match="file") as caught:
        make_fetcher().fetch(url, allow_files=True)

    assert caught.value.code == "blocked_url"


def test_a_redirect_to_another_scheme_is_refused(origin: Origin, make_fetcher: MakeFetcher) -> None:
    url = origin.add_sequence("/to-ftp", [redirect("ftp://example.com/a.png")])

    with pytest.raises(BlockedURL, match="'ftp'"):
        make_fetcher().fetch(url)


def test_a_redirect_without_location_is_a_download_error(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add("/nowhere", status=302)

    with pytest.raises(DownloadError, match="Location") as caught:
        make_fetcher().fetch(url)

    assert type(caught.value) is DownloadError


# --------------------------------------------------------------------------------------------
# Schemes and local files
# --------------------------------------------------------------------------------------------


def test_a_file_url_is_read_when_files_are_allowed(
    make_fetcher: MakeFetcher, tmp_path: Path
) -> None:
    path = tmp_path / "an image.png"  # a space, so the URL carries %20
    path.write_bytes(PNG)

    image = make_fetcher().fetch(path.as_uri(), allow_files=True)

    assert image == FetchedImage(data=PNG, content_type=None, url=path.as_uri())


def test_a_file_url_is_refused_unless_files_are_allowed(
    make_fetcher: MakeFetcher, tmp_path: Path
) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(PNG)

    with pytest.raises(BlockedURL, match="'file'"):
        make_fetcher().fetch(path.as_uri())


def test_a_missing_file_is_a_download_error(make_fetcher: MakeFetcher, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="no such file") as caught:
        make_fetcher().fetch((tmp_path / "missing.png").as_uri(), allow_files=True)

    assert type(caught.value) is DownloadError


def test_a_directory_is_a_download_error(make_fetcher: MakeFetcher, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="directory") as caught:
        make_fetcher().fetch(tmp_path.as_uri(), allow_files=True)

    assert type(caught.value) is DownloadError


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_refused_without_blocking(
    make_fetcher: MakeFetcher, tmp_path: Path
) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)

    with pytest.raises(DownloadError, match="not a regular file"):
        make_fetcher().fetch(fifo.as_uri(), allow_files=True)


def test_a_file_over_the_limit_is_too_large(make_fetcher: MakeFetcher, tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"x" * 1001)

    with pytest.raises(ImageTooLarge):
        make_fetcher(max_bytes=1000).fetch(path.as_uri(), allow_files=True)


@pytest.mark.parametrize("url", ["file://fileserver/share/a.png", "file:relative/a.png"])
def test_a_file_url_must_name_an_absolute_local_path(make_fetcher: MakeFetcher, url: str) -> None:
    with pytest.raises(BlockedURL):
        make_fetcher().fetch(url, allow_files=True)


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("ftp://example.com/a.png", "ftp"),
        ("javascript:alert(1)", "javascript"),
        ("data:image/png;base64,iVBORw0KGgo=", "data"),
        ("gopher://example.com/", "gopher"),
    ],
)
def test_other_schemes_are_blocked_and_named(
    make_fetcher: MakeFetcher, url: str, scheme: str
) -> None:
    with pytest.raises(BlockedURL, match=f"'{scheme}'") as caught:
        make_fetcher().fetch(url, allow_files=True)

    assert caught.value.code == "blocked_url"


def test_credentials_in_a_url_are_refused(origin: Origin, make_fetcher: MakeFetcher) -> None:
    url = origin.add("/a.png", PNG).replace("http://", "http://user:pass@")

    with pytest.raises(BlockedURL, match="credentials"):
        make_fetcher().fetch(url)

    assert origin.requests == []


# --------------------------------------------------------------------------------------------
# SSRF guard (the default Fetcher: allow_private_urls is off)
# --------------------------------------------------------------------------------------------

LOOPBACK_FORMS = [
    "http://127.0.0.1:{port}/x",
    "http://localhost:{port}/x",
    "http://LOCALHOST:{port}/x",
    "http://[::1]:{port}/",
    "http://2130706433:{port}/",
    "http://127.1:{port}/",
    "http://0x7f.0.0.1:{port}/",
    "http://017700000001:{port}/",
    "http://127.0.0.2:{port}/",
    "http://0.0.0.0:{port}/",
    "http://[::]:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[::ffff:7f00:1]:{port}/",
    "http://169.254.169.254/latest/meta-data",
    "http://[fd00:ec2::254]/latest/meta-data",
    "http://100.100.100.200/latest/meta-data",
    "http://10.0.0.1:{port}/",
    "http://192.168.1.1:{port}/",
]


@pytest.mark.parametrize("template", LOOPBACK_FORMS)
def test_non_public_addresses_are_blocked_before_any_request(origin: Origin, template: str) -> None:
    origin.add("/x", PNG)
    origin.add("/", PNG)
    url = template.format(port=port_of(origin))

    started = time.monotonic()
    with Fetcher() as fetcher, pytest.raises(BlockedURL, match="not a public address") as caught:
        fetcher.fetch(url)

    assert caught.value.code == "blocked_url"
    assert origin.requests == []
    assert time.monotonic() - started < 1.0  # refused outright, not retried or timed out


REACHABLE_FORMS = [
    "http://127.0.0.1:{port}/x",
    "http://localhost:{port}/x",
    "http://2130706433:{port}/x",
    "http://127.1:{port}/x",
    "http://0x7f.0.0.1:{port}/x",
    "http://017700000001:{port}/x",
    "http://0.0.0.0:{port}/x",
]


@pytest.mark.parametrize("template", REACHABLE_FORMS)
def test_the_same_forms_do_reach_the_origin_when_the_guard_is_lifted(
    origin: Origin, make_fetcher: MakeFetcher, template: str
) -> None:
    # Proof that the guard, not a broken URL, is what stops the test above.
    origin.add("/x", PNG)

    url = template.format(port=port_of(origin))

    assert make_fetcher(allow_private_urls=True).fetch(url).data == PNG


def test_allowed_hosts_are_exempt_but_a_redirect_to_loopback_is_refused_at_the_hop(
    origin: Origin,
) -> None:
    port = port_of(origin)
    origin.add("/secret", b"internal")
    url = origin.add_sequence("/start", [redirect(f"http://localhost:{port}/secret")])

    with Fetcher(allowed_hosts={"127.0.0.1"}) as fetcher:
        with pytest.raises(BlockedURL, match="localhost"):
            fetcher.fetch(url)
        origin.add("/plain", PNG)
        assert fetcher.fetch(origin.url("/plain")).data == PNG  # the exemption itself works

    assert [path for _, path, _ in origin.requests] == ["/start", "/plain"]


class FakeDNS:
    """A resolver with a fixed table; records every lookup."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        answers = self.table.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        count = sum(1 for seen in self.lookups if seen == host)
        return answers[min(count, len(answers)) - 1]  # one answer per lookup, the last repeats


def test_a_redirect_to_a_name_that_resolves_to_loopback_is_refused_at_connect(
    origin: Origin,
) -> None:
    port = port_of(origin)
    origin.add("/secret", b"internal")
    origin.add_sequence("/start", [redirect(f"http://internal.test:{port}/secret")])
    dns = FakeDNS({"images.test": [["127.0.0.1"]], "internal.test": [["127.0.0.1"]]})

    with (
        Fetcher(resolver=dns, allowed_hosts={"images.test"}) as fetcher,
        pytest.raises(BlockedURL, match=r"internal\.test"),
    ):
        fetcher.fetch(f"http://images.test:{port}/start")

    assert [path for _, path, _ in origin.requests] == ["/start"]
    assert dns.lookups == ["images.test", "internal.test"]


def test_a_redirect_to_a_private_literal_is_refused_at_the_hop(origin: Origin) -> None:
    port = port_of(origin)
    origin.add_sequence("/start", [redirect(f"http://127.0.0.1:{port}/secret")])
    dns = FakeDNS({"images.test": [["127.0.0.1"]]})

    with (
        Fetcher(resolver=dns, allowed_hosts={"images.test"}) as fetcher,
        pytest.raises(BlockedURL, match=r"redirect refused|not a public address"),
    ):
        fetcher.fetch(f"http://images.test:{port}/start")

    assert [path for _, path, _ in origin.requests] == ["/start"]


def test_one_private_answer_among_public_ones_is_enough_to_refuse(origin: Origin) -> None:
    dns = FakeDNS({"mixed.test": [["8.8.8.8", "127.0.0.1"]]})

    with Fetcher(resolver=dns) as fetcher, pytest.raises(BlockedURL, match=r"127\.0\.0\.1"):
        fetcher.fetch(f"http://mixed.test:{port_of(origin)}/x")

    assert origin.requests == []


def test_dns_rebinding_is_caught_at_connection_time(
    origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first lookup answers a public address (a naive pre-check would pass it and cache the
    # verdict); the second answers loopback. The guard judges each answer it connects with.
    # No packet may leave this machine, so the socket layer is replaced by one that records
    # the address it is asked for and fails as an unreachable host would (a transient error,
    # so the fetcher retries, looks the name up again, and must refuse).
    attempted: list[str] = []

    def unreachable(self: object, host: str, port: int, *args: object, **kwargs: object) -> None:
        attempted.append(host)
        raise httpcore.ConnectError("network is unreachable")

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", unreachable)
    origin.add("/secret", b"internal")
    dns = FakeDNS({"rebind.test": [["203.0.114.7"], ["127.0.0.1"]]})
    fetcher = Fetcher(resolver=dns, retries=1, retry_backoff=0.01)

    with fetcher, pytest.raises(BlockedURL, match=r"rebind\.test"):
        fetcher.fetch(f"http://rebind.test:{port_of(origin)}/secret")

    assert dns.lookups == ["rebind.test", "rebind.test"]
    assert attempted == ["203.0.114.7"]  # the public answer was tried; loopback never was
    assert origin.requests == []


def test_the_connection_goes_to_the_vetted_address_not_to_a_new_lookup(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    # The system resolver knows nothing of "two.test": the socket must use the fake DNS answers,
    # in order, skipping the one that refuses (nothing listens on 127.0.0.2 at this port).
    port = port_of(origin)
    origin.add("/x", PNG)
    dns = FakeDNS({"two.test": [["127.0.0.2", "127.0.0.1"]]})

    image = make_fetcher(resolver=dns).fetch(f"http://two.test:{port}/x")

    assert image.data == PNG
    assert image.url == f"http://two.test:{port}/x"
    headers = {name.lower(): value for name, value in origin.requests[0][2].items()}
    assert headers["host"] == f"two.test:{port}"  # the name, not the address, goes to the origin


def test_allowed_hosts_match_case_insensitively(origin: Origin) -> None:
    origin.add("/x", PNG)
    dns = FakeDNS({"images.test": [["127.0.0.1"]]})

    with Fetcher(resolver=dns, allowed_hosts=["IMAGES.Test"]) as fetcher:
        assert fetcher.fetch(f"http://images.test:{port_of(origin)}/x").data == PNG


def test_an_unknown_host_is_a_download_error_and_not_retried() -> None:
    dns = FakeDNS({})

    with (
        Fetcher(resolver=dns, retries=3, retry_backoff=0.01) as fetcher,
        pytest.raises(DownloadError, match="cannot resolve") as caught,
    ):
        fetcher.fetch("http://no-such-host.test/a.png")

    assert type(caught.value) is DownloadError
    assert dns.lookups == ["no-such-host.test"]


def test_a_temporary_dns_failure_is_retried() -> None:
    lookups: list[str] = []

    def flaky_dns(host: str, port: int) -> list[str]:
        lookups.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    with (
        Fetcher(resolver=flaky_dns, retries=2, retry_backoff=0.01) as fetcher,
        pytest.raises(DownloadError, match="cannot resolve"),
    ):
        fetcher.fetch("http://dns-down.test/a.png")

    assert len(lookups) == 3


# --------------------------------------------------------------------------------------------
# Concurrency, configuration
# --------------------------------------------------------------------------------------------


def test_one_slow_url_does_not_hold_up_the_others(origin: Origin) -> None:
    urls = [origin.add(f"/fast{index}", PNG) for index in range(19)]
    urls.insert(7, origin.add("/slow", PNG, delay=2.0))
    finished: dict[str, float] = {}
    started = time.monotonic()

    def fetch(url: str) -> bytes:
        data = fetcher.fetch(url).data
        finished[url] = time.monotonic() - started
        return data

    with (
        Fetcher(allow_private_urls=True, read_timeout=5.0, total_timeout=10.0) as fetcher,
        ThreadPoolExecutor(8) as pool,
    ):
        results = list(pool.map(fetch, urls))

    assert results == [PNG] * 20
    slow = finished.pop(origin.url("/slow"))
    assert slow >= 2.0
    assert max(finished.values()) < 1.5  # in practice ~0.1 s; the margin is for loaded CI


def test_from_settings_applies_the_deployment_limits(origin: Origin, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        allow_private_urls=True,
        max_image_bytes=100,
        fetch_retries=0,
        max_redirects=1,
    )
    big = origin.add("/big", b"x" * 101, chunked=True)
    down = origin.add("/down", status=503)

    with Fetcher.from_settings(settings) as fetcher:
        with pytest.raises(ImageTooLarge):
            fetcher.fetch(big)
        with pytest.raises(HTTPStatusError):
            fetcher.fetch(down)
        with pytest.raises(DownloadError, match="too many redirects"):
            fetcher.fetch(chain(origin, 2))

    assert origin.hits("/down") == 1


def test_the_default_settings_keep_the_guard_on(origin: Origin, tmp_path: Path) -> None:
    with Fetcher.from_settings(Settings(data_dir=tmp_path)) as fetcher, pytest.raises(BlockedURL):
        fetcher.fetch(origin.add("/x", PNG))

    assert origin.requests == []


@pytest.mark.parametrize(
    "options",
    [
        {"total_timeout": 0},
        {"connect_timeout": -1},
        {"max_bytes": 0},
        {"retries": -1},
        {"max_redirects": -1},
        {"retry_backoff": -0.5},
        {"max_connections": 0},
        {"connections_per_thread": 0},
        {"allowed_hosts": "example.com"},
    ],
)
def test_bad_limits_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Fetcher(**options)


def test_each_thread_keeps_its_own_connection_alive(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    """A client per thread: no thread scans or borrows a pool shared with the others."""
    url = origin.add("/a.png", PNG)
    fetcher = make_fetcher()
    for _ in range(2):  # two threads, one after the other, three fetches each
        with ThreadPoolExecutor(1) as pool:
            for _ in range(3):
                assert pool.submit(fetcher.fetch, url).result().data == PNG
    first, second = origin.peers[:3], origin.peers[3:]
    assert len(set(first)) == len(set(second)) == 1  # kept alive within a thread
    assert set(first) != set(second)  # the second thread did not take the first one's


def test_max_connections_bounds_the_requests_in_flight(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add("/slow.png", PNG, delay=0.2)
    fetcher = make_fetcher(max_connections=2)
    with ThreadPoolExecutor(6) as pool:
        assert all(image.data == PNG for image in pool.map(lambda _: fetcher.fetch(url), range(6)))
    assert origin.most_at_once == 2


def test_a_closed_fetcher_closes_every_threads_connections(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.add("/a.png", PNG)
    fetcher = make_fetcher()
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: fetcher.fetch(url), range(3)))
    fetcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        fetcher.fetch(url)


def test_a_threads_connections_close_when_the_thread_ends(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    """Threads that come and go leave no transport, and no socket, behind."""
    url = origin.add("/a.png", PNG)
    fetcher = make_fetcher()
    for _ in range(3):
        thread = threading.Thread(target=fetcher.fetch, args=(url,))
        thread.start()
        thread.join()
        del thread
    gc.collect()
    assert fetcher._transports == []  # each thread's transport was closed with its thread
