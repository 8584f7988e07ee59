"""Tests of bulkresize.webhooks: payload, signing, the callback URL check, delivery and backoff.

Deliveries go to a real loopback receiver (the ``origin`` fixture), and signatures are checked
with the official ``standardwebhooks`` package, as a receiver would. Loopback is a private
address, so most delivery tests lift the SSRF guard; the SSRF tests keep it on and check that
the receiver never sees a request. No test connects anywhere but loopback: names that must look
public are answered by an injected resolver, and where a broken guard could connect out, the
socket layer is replaced first.
"""

from __future__ import annotations

import base64
import calendar
import json
import random
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpcore
import pytest
import standardwebhooks
from hypothesis import given
from hypothesis import strategies as st

from bulkresize.errors import BlockedURL, ConfigurationError
from bulkresize.models import RequestStatus, StatusReport
from bulkresize.settings import Settings
from bulkresize.webhooks import (
    DeliveryResult,
    WebhookSender,
    build_payload,
    check_callback_url,
    encode_body,
    event_type,
    message_id,
    retry_delay,
    signature_headers,
)
from origin import Origin, Response

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()
PUBLIC = "203.0.114.7"  # a public address, just outside the 203.0.113.0/24 documentation range
PAYLOAD: dict[str, Any] = {
    "type": "request.completed",
    "request_id": "r1",
    "status": "completed",
    "total_images": 3,
    "processed_images": 3,
    "failed_images": 1,
    "output_csv_url": "http://files.test/r1/output.csv",
}
SEVEN_KEYS = {
    "type",
    "request_id",
    "status",
    "total_images",
    "processed_images",
    "failed_images",
    "output_csv_url",
}

MakeSender = Callable[..., WebhookSender]


@pytest.fixture
def make_sender() -> Iterator[MakeSender]:
    """Build senders that may reach loopback, with a short timeout; all closed after the test."""
    senders: list[WebhookSender] = []

    def make(**options: Any) -> WebhookSender:
        sender = WebhookSender(**{"allow_private_urls": True, "timeout": 2.0, **options})
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        sender.close()


class FakeDNS:
    """A resolver with a fixed table; records every lookup."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


def port_of(origin: Origin) -> int:
    return int(origin.base_url.rsplit(":", 1)[1])


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def report(status: RequestStatus, **changes: Any) -> StatusReport:
    moment = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    fields: dict[str, Any] = {
        "request_id": "r1",
        "status": status,
        "total_images": 3,
        "processed_images": 3,
        "failed_images": 1,
        "created_at": moment,
        "updated_at": moment,
        "output_csv_url": "http://files.test/r1/output.csv",
        "webhook": {"url": "http://hooks.test/", "status": "pending", "attempts": 0},
    }
    fields.update(changes)
    return StatusReport(**fields)


@pytest.fixture
def no_outbound_connections(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Replace the socket layer's connect so that any attempt is recorded and fails."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("outbound connections are forbidden in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


# --------------------------------------------------------------------------------------------
# The message
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "event"),
    [(RequestStatus.COMPLETED, "request.completed"), (RequestStatus.FAILED, "request.failed")],
)
def test_the_payload_has_exactly_the_seven_keys(status: RequestStatus, event: str) -> None:
    payload = build_payload(report(status))

    assert set(payload) == SEVEN_KEYS
    assert payload == {
        "type": event,
        "request_id": "r1",
        "status": str(status),
        "total_images": 3,
        "processed_images": 3,
        "failed_images": 1,
        "output_csv_url": "http://files.test/r1/output.csv",
    }
    assert type(payload["status"]) is str  # plain JSON data, not the enum
    assert json.loads(encode_body(payload)) == payload


@pytest.mark.parametrize("status", [RequestStatus.PENDING, RequestStatus.PROCESSING, "bogus"])
def test_a_request_that_is_not_final_has_no_event(status: str) -> None:
    with pytest.raises(ValueError, match=r"final|not a valid"):
        event_type(status)


def test_event_type_accepts_the_plain_status_value() -> None:
    assert event_type("completed") == "request.completed"
    assert event_type(RequestStatus.FAILED) == "request.failed"


def test_the_message_id_depends_on_the_request_only() -> None:
    assert message_id("abc123") == message_id("abc123") == "msg_abc123"
    assert message_id("abc123") != message_id("abc124")
    for bad in ("", "a b", "a\r\nX-Evil: 1"):
        with pytest.raises(ValueError, match="request ID"):
            message_id(bad)


def test_the_body_is_compact_utf8_json() -> None:
    payload = {**PAYLOAD, "output_csv_url": "http://files.test/café/output.csv"}

    body = encode_body(payload)

    assert " " not in body
    assert "café" in body  # not \u00e9
    assert json.loads(body) == payload
    with pytest.raises(ValueError, match=r"(?i)out of range|nan"):
        encode_body({"x": float("nan")})


# --------------------------------------------------------------------------------------------
# Signing
# --------------------------------------------------------------------------------------------


def test_signature_headers_verify_with_the_official_package() -> None:
    now = datetime.now(UTC)
    body = encode_body(PAYLOAD)

    headers = signature_headers(SECRET, "msg_r1", now, body)

    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "msg_r1"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert standardwebhooks.Webhook(SECRET).verify(body, headers) == PAYLOAD
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(OTHER_SECRET).verify(body, headers)


def test_a_secret_without_the_prefix_signs_the_same() -> None:
    now = datetime.now(UTC)
    bare = SECRET.removeprefix("whsec_")

    assert signature_headers(bare, "m", now, "{}") == signature_headers(SECRET, "m", now, "{}")


def test_no_secret_means_no_signature_header() -> None:
    headers = signature_headers(None, "msg_r1", datetime.now(UTC), "{}")

    assert set(headers) == {"webhook-id", "webhook-timestamp"}


def test_a_timestamp_in_another_zone_is_signed_as_the_same_instant() -> None:
    # The library reads a datetime's fields as if they were UTC; an aware non-UTC timestamp
    # must be converted first, or the signature would be for another instant.
    instant = datetime.now(UTC).replace(microsecond=0)
    elsewhere = instant.astimezone(timezone(timedelta(hours=5, minutes=30)))
    body = encode_body(PAYLOAD)

    headers = signature_headers(SECRET, "msg_r1", elsewhere, body)

    assert headers == signature_headers(SECRET, "msg_r1", instant, body)
    assert headers["webhook-timestamp"] == str(int(instant.timestamp()))
    standardwebhooks.Webhook(SECRET).verify(body, headers)


def test_a_naive_timestamp_is_taken_as_utc_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    naive = datetime(2025, 6, 1, 12, 0, 0)
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+5:30, so local and UTC readings differ
    time.tzset()
    try:
        headers = signature_headers(SECRET, "msg_r1", naive, "{}")
    finally:
        monkeypatch.undo()
        time.tzset()

    instant = naive.replace(tzinfo=UTC)
    assert headers["webhook-timestamp"] == str(calendar.timegm(instant.timetuple()))
    assert headers == signature_headers(SECRET, "msg_r1", instant, "{}")


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "whsec_",
        "whsec_not base64 at all!",
        "whsec_abc-def_ghi",  # URL-safe alphabet: the library would silently drop - and _
        "whsec_a",  # one base64 character cannot encode a byte
        "whsec_====",
    ],
)
def test_a_bad_secret_is_a_configuration_error(secret: str) -> None:
    with pytest.raises(ConfigurationError, match="whsec_") as caught:
        WebhookSender(secret=secret)

    key = secret.removeprefix("whsec_")
    if len(key) > 3:
        assert key not in str(caught.value)  # the secret is never echoed into logs
    # The library's own exception is neither raised nor chained.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__

    with pytest.raises(ConfigurationError):
        signature_headers(secret, "msg_r1", datetime.now(UTC), "{}")


def test_a_secret_that_is_not_a_string_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="bytes"):
        WebhookSender(secret=b"whsec_AAAA")  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf")])
def test_a_bad_timeout_is_a_configuration_error(timeout: float) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        WebhookSender(timeout=timeout)


# --------------------------------------------------------------------------------------------
# Delivery to a loopback receiver
# --------------------------------------------------------------------------------------------


def test_a_delivered_webhook_verifies_and_a_tampered_one_does_not(
    origin: Origin, make_sender: MakeSender
) -> None:
    url = origin.add("/hook", b"ok")
    sender = make_sender(secret=SECRET)

    result = sender.send(url, message_id="msg_r1", payload=PAYLOAD)

    assert result == DeliveryResult(delivered=True, retryable=False, status_code=200, error=None)
    [(path, headers, body)] = origin.posts
    assert path == "/hook"
    headers = lower(headers)
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == "msg_r1"
    assert body == encode_body(PAYLOAD).encode("utf-8")
    assert standardwebhooks.Webhook(SECRET).verify(body, headers) == PAYLOAD

    tampered = body.replace(b'"failed_images":1', b'"failed_images":0')
    assert tampered != body
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(tampered, headers)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body, {**headers, "webhook-id": "msg_r2"})


def test_a_retry_has_the_same_message_id_and_a_fresh_timestamp(
    origin: Origin, make_sender: MakeSender
) -> None:
    url = origin.add_sequence("/hook", [Response(status=503), Response(b"ok")])
    sender = make_sender(secret=SECRET)
    earlier = datetime.now(UTC) - timedelta(seconds=90)  # as if the first attempt were then

    first = sender.send(url, message_id="msg_r1", payload=PAYLOAD, timestamp=earlier)
    before = int(time.time())
    second = sender.send(url, message_id="msg_r1", payload=PAYLOAD)
    after = int(time.time())

    assert (first.delivered, first.retryable, second.delivered) == (False, True, True)
    (_, h1, b1), (_, h2, b2) = origin.posts
    h1, h2 = lower(h1), lower(h2)
    assert h1["webhook-id"] == h2["webhook-id"] == "msg_r1"
    assert h1["webhook-timestamp"] == str(int(earlier.timestamp()))
    assert before <= int(h2["webhook-timestamp"]) <= after
    assert h1["webhook-signature"] != h2["webhook-signature"]
    for body, headers in ((b1, h1), (b2, h2)):
        standardwebhooks.Webhook(SECRET).verify(body, headers)


def test_without_a_secret_no_signature_header_is_sent(
    origin: Origin, make_sender: MakeSender
) -> None:
    url = origin.add("/hook", b"ok")
    sender = make_sender()

    assert sender.send(url, message_id="msg_r1", payload=PAYLOAD).delivered
    headers = lower(origin.posts[0][1])
    assert "webhook-signature" not in headers
    assert headers["webhook-id"] == "msg_r1" and headers["webhook-timestamp"].isdigit()


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (500, "HTTP 500 Internal Server Error"),
        (502, "HTTP 502 Bad Gateway"),
        (503, "HTTP 503 Service Unavailable"),
        (408, "HTTP 408 Request Timeout"),
        (429, "HTTP 429 Too Many Requests"),
    ],
)
def test_these_statuses_are_worth_retrying(
    origin: Origin, make_sender: MakeSender, status: int, text: str
) -> None:
    url = origin.add("/hook", b"no", status=status)

    result = make_sender().send(url, message_id="msg_r1", payload=PAYLOAD)

    assert result == DeliveryResult(False, True, status, text)


@pytest.mark.parametrize(
    ("status", "text"),
    [(400, "HTTP 400 Bad Request"), (404, "HTTP 404 Not Found"), (410, "HTTP 410 Gone")],
)
def test_other_client_errors_are_permanent(
    origin: Origin, make_sender: MakeSender, status: int, text: str
) -> None:
    url = origin.add("/hook", b"no", status=status)

    result = make_sender().send(url, message_id="msg_r1", payload=PAYLOAD)

    assert result == DeliveryResult(False, False, status, text)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_not_followed_and_is_permanent(
    origin: Origin, make_sender: MakeSender, status: int
) -> None:
    origin.add("/elsewhere", b"ok")
    url = origin.add("/hook", status=status, headers={"Location": origin.url("/elsewhere")})

    result = make_sender().send(url, message_id="msg_r1", payload=PAYLOAD)

    assert (result.delivered, result.retryable, result.status_code) == (False, False, status)
    assert result.error is not None and "redirect" in result.error
    assert origin.hits("/elsewhere") == 0


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), ("soon", None)])
def test_retry_after_is_reported(
    origin: Origin, make_sender: MakeSender, header: str, seconds: float | None
) -> None:
    url = origin.add("/hook", status=429, headers={"Retry-After": header})

    result = make_sender().send(url, message_id="msg_r1", payload=PAYLOAD)

    assert result.retryable and result.retry_after == seconds


def test_retry_after_as_an_http_date_is_converted_to_seconds(
    origin: Origin, make_sender: MakeSender
) -> None:
    url = origin.add("/hook", status=503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})

    result = make_sender().send(url, message_id="msg_r1", payload=PAYLOAD)

    assert result.retry_after == 0.0  # a date in the past: no need to wait


def test_a_stalled_receiver_times_out_within_about_the_timeout(
    origin: Origin, make_sender: MakeSender
) -> None:
    url = origin.add("/hook", b"ok", delay=3.0)
    sender = make_sender(timeout=0.3)

    started = time.monotonic()
    result = sender.send(url, message_id="msg_r1", payload=PAYLOAD)
    elapsed = time.monotonic() - started

    assert (result.delivered, result.retryable, result.status_code) == (False, True, None)
    assert result.error is not None and "timed out after 0.3 s" in result.error
    assert 0.25 <= elapsed < 1.0


def test_a_slow_answer_body_after_a_success_does_not_undo_it(
    origin: Origin, make_sender: MakeSender
) -> None:
    url = origin.add("/hook", b"x" * 20, drip=0.1, drip_size=1)  # 2 s of answer body
    sender = make_sender(timeout=0.4)

    started = time.monotonic()
    result = sender.send(url, message_id="msg_r1", payload=PAYLOAD)

    assert result.delivered and result.status_code == 200
    assert time.monotonic() - started < 1.0  # the attempt's deadline still bounds it


def test_a_closed_port_is_a_retryable_connection_error(make_sender: MakeSender) -> None:
    result = make_sender().send(
        f"http://127.0.0.1:{free_port()}/hook", message_id="msg_r1", payload=PAYLOAD
    )

    assert (result.delivered, result.retryable, result.status_code) == (False, True, None)
    assert result.error is not None and "connection refused" in result.error


def test_only_the_status_matters_not_the_body(origin: Origin, make_sender: MakeSender) -> None:
    # The receiver announces a body, sends none of it and hangs up; its 200 still counts.
    url = origin.add("/hook", b"x" * 100_000, drop_after=0)

    assert make_sender().send(url, message_id="m", payload=PAYLOAD).delivered


@pytest.mark.parametrize(
    "url", ["ftp://hooks.test/x", "http:///x", "http://user:pw@hooks.test/x", "not a url"]
)
def test_a_url_that_breaks_the_rules_is_a_permanent_failure(
    make_sender: MakeSender, url: str
) -> None:
    result = make_sender().send(url, message_id="msg_r1", payload=PAYLOAD)

    assert (result.delivered, result.retryable, result.status_code) == (False, False, None)
    assert result.error is not None and result.error.startswith("blocked: ")


def test_sending_from_many_threads_at_once_delivers_every_webhook(
    origin: Origin, make_sender: MakeSender
) -> None:
    url = origin.add("/hook", b"ok")
    sender = make_sender(secret=SECRET)

    def send(n: int) -> DeliveryResult:
        payload = {**PAYLOAD, "request_id": f"r{n}"}
        return sender.send(url, message_id=f"msg_r{n}", payload=payload)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(send, range(24)))

    assert all(result.delivered for result in results)
    seen = set()
    for _, headers, body in origin.posts:
        data = standardwebhooks.Webhook(SECRET).verify(body, lower(headers))
        assert lower(headers)["webhook-id"] == f"msg_{data['request_id']}"
        seen.add(data["request_id"])
    assert seen == {f"r{n}" for n in range(24)}


def test_from_settings_uses_the_secret_the_timeout_and_the_guard(origin: Origin) -> None:
    url = origin.add("/hook", b"ok")
    settings = Settings(webhook_secret=SECRET, webhook_timeout=0.3, allow_private_urls=True)

    with WebhookSender.from_settings(settings) as sender:
        assert sender.signs
        assert sender.send(url, message_id="msg_r1", payload=PAYLOAD).delivered
    _, headers, body = origin.posts[0]
    standardwebhooks.Webhook(SECRET).verify(body, lower(headers))

    with WebhookSender.from_settings(settings.replace(allow_private_urls=False)) as guarded:
        assert "blocked" in (guarded.send(url, message_id="m", payload=PAYLOAD).error or "")
    with pytest.raises(ConfigurationError):
        WebhookSender.from_settings(settings.replace(webhook_secret="whsec_!!"))


# --------------------------------------------------------------------------------------------
# The SSRF guard at delivery
# --------------------------------------------------------------------------------------------


def test_delivery_to_loopback_is_blocked_without_a_request(origin: Origin) -> None:
    url = origin.add("/hook", b"ok")

    with WebhookSender(secret=SECRET) as sender:
        result = sender.send(url, message_id="msg_r1", payload=PAYLOAD)

    assert (result.delivered, result.retryable, result.status_code) == (False, False, None)
    assert result.error is not None and result.error.startswith("blocked: ")
    assert "127.0.0.1" in result.error
    assert origin.requests == []


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "169.254.169.254"])
def test_a_private_literal_is_blocked_without_consulting_the_resolver(
    origin: Origin, host: str
) -> None:
    origin.add("/hook", b"ok")
    dns = FakeDNS({})  # knows no name: a lookup would fail as a (retryable) DNS error

    with WebhookSender(resolver=dns) as sender:
        result = sender.send(
            f"http://{host}:{port_of(origin)}/hook", message_id="m", payload=PAYLOAD
        )

    assert (result.delivered, result.retryable) == (False, False)
    assert result.error is not None and "not a public address" in result.error
    assert dns.lookups == []
    assert origin.requests == []


def test_delivery_to_a_name_that_resolves_to_loopback_is_blocked(origin: Origin) -> None:
    origin.add("/hook", b"ok")
    dns = FakeDNS({"hooks.test": ["127.0.0.1"]})

    with WebhookSender(resolver=dns) as sender:
        result = sender.send(
            f"http://hooks.test:{port_of(origin)}/hook", message_id="m", payload=PAYLOAD
        )

    assert (result.delivered, result.retryable) == (False, False)
    assert result.error is not None
    assert "blocked" in result.error and "hooks.test" in result.error
    assert "127.0.0.1" in result.error
    assert dns.lookups == ["hooks.test"]
    assert origin.requests == []


def test_an_allowed_host_is_delivered_to_its_vetted_address(origin: Origin) -> None:
    origin.add("/hook", b"ok")
    dns = FakeDNS({"hooks.test": ["127.0.0.1"]})

    with WebhookSender(resolver=dns, allowed_hosts={"HOOKS.test"}) as sender:
        result = sender.send(
            f"http://hooks.test:{port_of(origin)}/hook", message_id="m", payload=PAYLOAD
        )

    assert result.delivered
    assert lower(origin.posts[0][1])["host"] == f"hooks.test:{port_of(origin)}"


def test_one_private_answer_among_public_ones_blocks_before_any_connection(
    origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempted: list[str] = []

    def unreachable(self: object, host: str, port: int, *args: object, **kwargs: object) -> None:
        attempted.append(host)
        raise httpcore.ConnectError("network is unreachable")

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", unreachable)
    dns = FakeDNS({"mixed.test": [PUBLIC, "10.0.0.1"]})

    with WebhookSender(resolver=dns) as sender:
        result = sender.send("http://mixed.test/hook", message_id="m", payload=PAYLOAD)

    assert (result.delivered, result.retryable) == (False, False)
    assert result.error is not None and "10.0.0.1" in result.error
    assert attempted == []


def test_an_unresolvable_host_at_delivery_is_retryable(
    no_outbound_connections: list[object],
) -> None:
    dns = FakeDNS({})

    with WebhookSender(resolver=dns) as sender:
        result = sender.send("http://gone.test/hook", message_id="m", payload=PAYLOAD)

    assert (result.delivered, result.retryable, result.status_code) == (False, True, None)
    assert result.error is not None and "cannot resolve" in result.error
    assert no_outbound_connections == []


# --------------------------------------------------------------------------------------------
# check_callback_url
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/x", "scheme 'ftp'"),
        ("http:///x", "no host"),
        ("https://user:secret@hooks.example.com/x", "credentials"),
        ("http://hooks.example.com/" + "a" * 2048, "2048"),
        ("http://127.0.0.1/hook", "127.0.0.1 is not a public address"),
        ("http://127.0.0.1.:8080/hook", "not a public address"),
        ("http://[::1]:8080/hook", "::1 is not a public address"),
        ("http://[::ffff:127.0.0.1]/hook", "not a public address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is not a public"),
        ("http://2130706433/hook", r"2130706433 \(127.0.0.1\) is not a public address"),
        ("http://0x7f.1/hook", r"0x7f.1 \(127.0.0.1\)"),
        ("http://10.1.2.3/hook", "10.1.2.3 is not a public address"),
    ],
)
def test_check_callback_url_refuses(url: str, reason: str) -> None:
    dns = FakeDNS({})

    with pytest.raises(BlockedURL, match=reason):
        check_callback_url(url, resolver=dns)

    assert dns.lookups == []  # rules and IP literals are judged without a lookup


def test_check_callback_url_refuses_localhost_with_the_system_resolver() -> None:
    with pytest.raises(BlockedURL, match="localhost"):
        check_callback_url("http://localhost:8000/hook")


def test_check_callback_url_refuses_a_name_that_resolves_to_a_private_address() -> None:
    dns = FakeDNS({"hooks.example.com": ["10.0.0.1"]})

    with pytest.raises(BlockedURL, match=r"'hooks\.example\.com' resolves to 10\.0\.0\.1"):
        check_callback_url("https://hooks.example.com/x", resolver=dns)


def test_check_callback_url_refuses_when_any_answer_is_private() -> None:
    dns = FakeDNS({"hooks.example.com": [PUBLIC, "fd00:ec2::254"]})

    with pytest.raises(BlockedURL, match="fd00:ec2::254"):
        check_callback_url("https://hooks.example.com/x", resolver=dns)


def test_check_callback_url_refuses_an_unresolvable_name() -> None:
    with pytest.raises(BlockedURL, match=r"cannot resolve .*'nowhere\.example\.com'"):
        check_callback_url("https://nowhere.example.com/x", resolver=FakeDNS({}))


def test_check_callback_url_refuses_a_resolver_answer_that_is_not_an_address() -> None:
    dns = FakeDNS({"odd.example.com": ["not-an-ip"]})

    with pytest.raises(BlockedURL, match="not an IP address"):
        check_callback_url("https://odd.example.com/x", resolver=dns)


def test_check_callback_url_accepts_a_public_name_without_connecting(
    no_outbound_connections: list[object],
) -> None:
    calls: list[tuple[str, int]] = []

    def dns(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return [PUBLIC, "2606:4700::1111"]

    check_callback_url("https://hooks.example.com/webhook", resolver=dns)
    check_callback_url("http://hooks.example.com:8080/webhook", resolver=dns)
    check_callback_url(f"http://{PUBLIC}/webhook", resolver=dns)  # a public literal

    assert calls == [("hooks.example.com", 443), ("hooks.example.com", 8080)]
    assert no_outbound_connections == []


def test_check_callback_url_with_private_urls_allowed_accepts_loopback() -> None:
    dns = FakeDNS({})

    check_callback_url("http://127.0.0.1:8000/hook", allow_private_urls=True, resolver=dns)
    check_callback_url("http://localhost:8000/hook", allow_private_urls=True, resolver=dns)

    assert dns.lookups == []
    with pytest.raises(BlockedURL, match="scheme"):  # the URL rules still apply
        check_callback_url("ftp://localhost/x", allow_private_urls=True)


def test_check_callback_url_accepts_an_allowed_host() -> None:
    dns = FakeDNS({"hooks.internal": ["10.0.0.5"]})

    check_callback_url("http://HOOKS.internal/x", allowed_hosts=["hooks.internal"], resolver=dns)

    with pytest.raises(BlockedURL, match=r"10\.0\.0\.5"):
        check_callback_url("http://hooks.internal/x", resolver=dns)


# --------------------------------------------------------------------------------------------
# Backoff
# --------------------------------------------------------------------------------------------

bases = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)
caps = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
attempts = st.integers(min_value=1, max_value=2000)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


@given(attempt=attempts, base=bases, cap=caps, seed=seeds)
def test_retry_delay_stays_within_the_jitter_bounds_and_the_cap(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    delay = retry_delay(attempt, base=base, cap=cap, rng=random.Random(seed))

    nominal = min(cap, base * 2.0 ** min(attempt - 1, 1023))
    assert 0.0 <= delay <= cap
    assert 0.75 * nominal * (1 - 1e-12) <= delay <= 1.25 * nominal * (1 + 1e-12)


@given(attempt=st.integers(min_value=1, max_value=200), base=bases, cap=caps, seed=seeds)
def test_retry_delay_never_shrinks_from_one_attempt_to_the_next(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    # With the same jitter draw, a later attempt never waits less.
    this = retry_delay(attempt, base=base, cap=cap, rng=random.Random(seed))
    following = retry_delay(attempt + 1, base=base, cap=cap, rng=random.Random(seed))

    assert following >= this


def test_retry_delay_grows_in_expectation_until_the_cap() -> None:
    def mean_delay(attempt: int) -> float:
        rng = random.Random(1234)  # the same draws for every attempt: a fair comparison
        return statistics.fmean(
            retry_delay(attempt, base=2.0, cap=60.0, rng=rng) for _ in range(2000)
        )

    means = [mean_delay(n) for n in range(1, 9)]

    assert means == sorted(means)
    assert means[:5] == sorted(set(means[:5]))  # strictly growing until the cap bites
    assert means[0] == pytest.approx(2.0, rel=0.03)
    assert means[1] == pytest.approx(4.0, rel=0.03)
    assert means[2] == pytest.approx(8.0, rel=0.03)
    assert all(mean <= 60.0 for mean in means)
    assert means[-1] > 0.75 * 60.0  # capped: 2 * 2**7 = 256 s nominal, held at 60 s or less


def test_retry_delay_without_an_rng_uses_random_jitter() -> None:
    delays = {retry_delay(1, base=10.0, cap=100.0) for _ in range(20)}

    assert len(delays) > 1
    assert all(7.5 <= delay <= 12.5 for delay in delays)


@pytest.mark.parametrize(
    "arguments",
    [
        {"attempt": 0, "base": 1.0, "cap": 10.0},
        {"attempt": True, "base": 1.0, "cap": 10.0},
        {"attempt": 1, "base": -1.0, "cap": 10.0},
        {"attempt": 1, "base": 1.0, "cap": float("nan")},
        {"attempt": 1, "base": 1.0, "cap": float("inf")},
    ],
)
def test_retry_delay_refuses_bad_arguments(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"attempt|base|cap"):
        retry_delay(**arguments)
