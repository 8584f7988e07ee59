"""Webhooks: the payload, Standard Webhooks signing, the callback URL check, and delivery.

When a request becomes final, the service POSTs a small JSON document to the request's
``callback_url``, signed as `Standard Webhooks <https://www.standardwebhooks.com/>`_ specifies:

* ``webhook-id``: the message id, the same on every attempt (receivers de-duplicate on it);
* ``webhook-timestamp``: Unix seconds, fresh on every attempt;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` (only when a secret
  is configured), computed by the official ``standardwebhooks`` package.

:class:`WebhookSender` makes **one** attempt per :meth:`~WebhookSender.send` and reports the
outcome as a :class:`DeliveryResult`; the caller records it and, when the result is retryable,
waits :func:`retry_delay` before the next attempt. Connections go through the same connect-time
SSRF guard as image downloads (:func:`bulkresize.fetching.guarded_client`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import random
import socket
import ssl
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import httpcore
import httpx
import standardwebhooks

from bulkresize.__about__ import __version__
from bulkresize.errors import BlockedURL, BulkResizeError, ConfigurationError, DownloadError
from bulkresize.fetching import (
    IPAddress,
    Resolver,
    ThreadDeadline,
    check_url,
    guarded_client,
    is_public_address,
    normalise_host,
    system_resolver,
)
from bulkresize.models import RequestStatus, StatusReport

if TYPE_CHECKING:
    from bulkresize.settings import Settings

__all__ = [
    "COMPLETED_EVENT",
    "FAILED_EVENT",
    "DeliveryResult",
    "WebhookSender",
    "build_payload",
    "check_callback_url",
    "encode_body",
    "event_type",
    "message_id",
    "retry_delay",
    "signature_headers",
]

COMPLETED_EVENT: Final = "request.completed"
"""The event ``type`` sent when a request ends ``completed``."""

FAILED_EVENT: Final = "request.failed"
"""The event ``type`` sent when a request ends ``failed``."""

_SECRET_PREFIX: Final = "whsec_"  # noqa: S105  # a format marker, not a secret
_KEY_FORMAT_HINT: Final = (
    "the webhook secret (BULKRESIZE_WEBHOOK_SECRET) must be 'whsec_' followed by the "
    "standard base64 encoding of the key, e.g. 'whsec_' + base64 of 32 random bytes"
)
_RETRYABLE_STATUSES: Final = frozenset({408, 429})
_DRAIN_LIMIT: Final = 64 * 1024  # answer bytes read so the connection can be kept alive
_MAX_EXPONENT: Final = 1023  # 2.0 ** 1024 overflows a float


# --------------------------------------------------------------------------------------------
# The message
# --------------------------------------------------------------------------------------------


def event_type(status: RequestStatus | str) -> str:
    """Name the webhook event of a final request status.

    Args:
        status: ``completed`` or ``failed`` (a :class:`RequestStatus` or its value).

    Returns:
        ``"request.completed"`` or ``"request.failed"``.

    Raises:
        ValueError: The status is not final (``pending``, ``processing``) or not a status at all.
    """
    final = RequestStatus(status)
    if final is RequestStatus.COMPLETED:
        return COMPLETED_EVENT
    if final is RequestStatus.FAILED:
        return FAILED_EVENT
    raise ValueError(f"a request that is {final} is not final, so it has no webhook event")


def build_payload(report: StatusReport) -> dict[str, Any]:
    """Build the webhook body of a final request.

    Args:
        report: The request's status document.

    Returns:
        Exactly ``{"type", "request_id", "status", "total_images", "processed_images",
        "failed_images", "output_csv_url"}``, as plain JSON-able data.

    Raises:
        ValueError: The request is not final.
    """
    return {
        "type": event_type(report.status),
        "request_id": report.request_id,
        "status": str(report.status),
        "total_images": report.total_images,
        "processed_images": report.processed_images,
        "failed_images": report.failed_images,
        "output_csv_url": report.output_csv_url,
    }


def message_id(request_id: str) -> str:
    """The ``webhook-id`` of a request's webhook: stable, so every retry carries the same one.

    A request becomes final once, so it has one webhook message, and receivers can use this id
    to ignore a message they have already handled.

    Args:
        request_id: The request ID.

    Returns:
        ``msg_<request_id>``.

    Raises:
        ValueError: The request ID is empty or holds whitespace or control characters, which
            cannot go into a header.
    """
    _check_message_id(request_id, what="request ID")
    return f"msg_{request_id}"


def _check_message_id(value: str, *, what: str = "message id") -> None:
    if not value or not value.isprintable() or any(char.isspace() for char in value):
        raise ValueError(f"the {what} {value!r} must be non-empty, without spaces or controls")


def encode_body(payload: Mapping[str, Any]) -> str:
    """Serialise a webhook payload the way it is signed and sent: compact JSON, UTF-8 text.

    Args:
        payload: JSON-able data.

    Returns:
        The JSON text, without spaces and with non-ASCII characters kept as they are.

    Raises:
        TypeError: The payload holds something JSON cannot represent.
        ValueError: The payload holds NaN or an infinity, which JSON cannot represent either.
    """
    return json.dumps(dict(payload), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# --------------------------------------------------------------------------------------------
# Signing
# --------------------------------------------------------------------------------------------


def _webhook(secret: str) -> standardwebhooks.Webhook:
    """Build the signer for a secret, turning every way it can be malformed into our error.

    The check is stricter than the library's (which drops characters that are not base64), so
    that a secret cannot silently mean a different key than the one the receiver was given.
    """
    if not isinstance(secret, str):
        raise ConfigurationError(f"{_KEY_FORMAT_HINT}; got a {type(secret).__name__}")
    encoded = secret.removeprefix(_SECRET_PREFIX)
    if not encoded:
        raise ConfigurationError(f"{_KEY_FORMAT_HINT}; the secret is empty")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        # The secret itself is never echoed: it would end up in logs.
        raise ConfigurationError(f"{_KEY_FORMAT_HINT}; the secret is not valid base64") from None
    if not key:
        raise ConfigurationError(f"{_KEY_FORMAT_HINT}; the key is empty")
    try:
        return standardwebhooks.Webhook(secret)
    except Exception:  # the library raises RuntimeError and its own types; none may escape
        raise ConfigurationError(f"{_KEY_FORMAT_HINT}; the secret was refused") from None


def _as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _signature_headers(
    signer: standardwebhooks.Webhook | None, message_id: str, timestamp: datetime, body: str
) -> dict[str, str]:
    _check_message_id(message_id)
    # The library reads the datetime's fields as UTC, so hand it one that is UTC.
    moment = _as_utc(timestamp)
    headers = {
        "webhook-id": message_id,
        "webhook-timestamp": str(math.floor(moment.timestamp())),
    }
    if signer is not None:
        headers["webhook-signature"] = signer.sign(message_id, moment, body)
    return headers


def signature_headers(
    secret: str | None, message_id: str, timestamp: datetime, body: str
) -> dict[str, str]:
    """Compute the Standard Webhooks headers of one delivery attempt.

    Args:
        secret: The ``whsec_…`` secret; ``None`` sends no ``webhook-signature``.
        message_id: The ``webhook-id``, the same on every attempt (see :func:`message_id`).
        timestamp: When the attempt is made; a naive datetime is taken to be UTC.
        body: The exact body text that is sent (see :func:`encode_body`).

    Returns:
        ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and, with a secret,
        ``webhook-signature`` (``v1,<base64>``), as computed by ``standardwebhooks``.

    Raises:
        ConfigurationError: The secret is malformed.
        ValueError: The message id is empty or holds whitespace or control characters.
    """
    signer = None if secret is None else _webhook(secret)
    return _signature_headers(signer, message_id, timestamp, body)


# --------------------------------------------------------------------------------------------
# The callback URL
# --------------------------------------------------------------------------------------------


def check_callback_url(
    url: str,
    *,
    allow_private_urls: bool = False,
    allowed_hosts: Collection[str] = (),
    resolver: Resolver | None = None,
) -> None:
    """Check a ``callback_url`` when a request is submitted, so a bad one is refused at once.

    The URL must pass :func:`bulkresize.fetching.check_url` (``http``/``https``, a valid host,
    no credentials, at most 2048 characters). Then, unless ``allow_private_urls`` is set or the
    host is in ``allowed_hosts``, the host must be a public address: an IP literal (including
    numeric forms such as ``2130706433``) is judged as it is; a name is resolved and **every**
    answer must be public; a name that cannot be resolved is refused too. No connection is
    made. The check is repeated on the address actually connected to at delivery time, so a
    name that changes its answers later (DNS rebinding) is still refused then.

    Args:
        url: The callback URL as given.
        allow_private_urls: Skip the address check (development, tests).
        allowed_hosts: Host names exempt from the address check, matched exactly (after
            lower-casing and IDNA encoding).
        resolver: Resolves host names; default :func:`bulkresize.fetching.system_resolver`.

    Raises:
        BlockedURL: The URL is refused; the message says why.
        ConfigurationError: ``allowed_hosts`` is a lone string rather than a collection.
    """
    check_url(url)
    if allow_private_urls:
        return
    if isinstance(allowed_hosts, str):  # a lone name would become a set of letters
        raise ConfigurationError("allowed_hosts must be a collection of host names")
    parsed = httpx.URL(url)
    host = parsed.raw_host.decode("ascii", errors="replace")
    if normalise_host(host) in {normalise_host(allowed) for allowed in allowed_hosts}:
        return
    literal = _ip_literal(host)
    if literal is not None:
        if not is_public_address(literal):
            shown = host if str(literal) == host else f"{host} ({literal})"
            raise BlockedURL(f"the callback host {shown} is not a public address")
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    for address in _resolve(host, port, resolver or system_resolver):
        if not is_public_address(address):
            raise BlockedURL(
                f"the callback host {host!r} resolves to {address}, which is not a public address"
            )


def _ip_literal(host: str) -> IPAddress | None:
    """The address an IP-literal host names, in any form the socket layer would accept."""
    bare = host.removesuffix(".")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if ":" in bare:
        return None
    try:
        # Numeric IPv4 forms that ipaddress refuses but getaddrinfo takes: 2130706433, 127.1,
        # 0x7f.0.0.1. Host names never parse here, and check_url has refused any whitespace.
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except OSError:
        return None


def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        answers = resolver(host, port)
    except socket.gaierror as exc:
        raise BlockedURL(f"cannot resolve the callback host {host!r}: {exc.strerror}") from None
    except (OSError, UnicodeError) as exc:
        raise BlockedURL(f"cannot resolve the callback host {host!r}: {exc}") from None
    if not answers:
        raise BlockedURL(f"cannot resolve the callback host {host!r}: it has no address")
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            addresses.append(ipaddress.ip_address(answer))
        except ValueError:
            raise BlockedURL(
                f"cannot resolve the callback host {host!r}: the resolver gave {answer!r}, "
                "which is not an IP address"
            ) from None
    return addresses


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------


def retry_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """How long to wait after a failed attempt: exponential backoff with ±25% jitter.

    The nominal delay is ``base`` after the first attempt, ``2 * base`` after the second, and so
    on, never more than ``cap``. The jitter spreads retries from many requests apart; the result
    is still at most ``cap`` and never negative.

    Args:
        attempt: How many attempts have failed so far, from 1.
        base: Seconds after the first attempt (``Settings.webhook_backoff``).
        cap: The longest delay in seconds (``Settings.webhook_backoff_max``).
        rng: The source of jitter; default the ``random`` module's.

    Returns:
        Seconds to wait, between ``0.75`` and ``1.25`` times ``min(cap, base * 2 ** (attempt -
        1))``, and at most ``cap``.

    Raises:
        ValueError: ``attempt`` is below 1, or ``base`` or ``cap`` is negative or not finite.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be a whole number of at least 1, not {attempt!r}")
    for name, value in (("base", base), ("cap", cap)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"{name} must be a finite number of seconds, at least 0, not {value!r}"
            )
    nominal = min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    jitter = rng.uniform(0.75, 1.25) if rng is not None else random.uniform(0.75, 1.25)
    return max(0.0, min(cap, nominal * jitter))


# --------------------------------------------------------------------------------------------
# Delivery
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The outcome of one delivery attempt.

    Attributes:
        delivered: The receiver answered with a 2xx status.
        retryable: The attempt failed in a way that may heal: a connection error, a timeout, a
            DNS failure, HTTP 408, 429 or 5xx. A refused address, a redirect or any other 4xx is
            permanent.
        status_code: The receiver's HTTP status, if it answered.
        error: What went wrong, readably (``HTTP 500 Internal Server Error``, ``timed out after
            10 s waiting for hooks.example.com``, ``blocked: …``); ``None`` when delivered.
        retry_after: Seconds the receiver asked to wait (``Retry-After`` on a retryable status),
            if it said; a caller should wait at least this long before the next attempt.
    """

    delivered: bool
    retryable: bool
    status_code: int | None
    error: str | None
    retry_after: float | None = None


class WebhookSender:
    """Signs and POSTs webhooks, one attempt per call; one instance is shared by many threads.

    It holds one pooled ``httpx.Client`` built by :func:`bulkresize.fetching.guarded_client`, so
    every connection passes the SSRF guard at connect time, no redirect is followed, and proxy
    settings from the environment are ignored.

    Args:
        secret: The Standard Webhooks secret, ``whsec_`` followed by base64; ``None`` sends
            unsigned webhooks (no ``webhook-signature`` header).
        timeout: Seconds for one attempt, from connecting to the receiver's status line.
        allow_private_urls: Lift the SSRF guard (development, tests).
        allowed_hosts: Host names exempt from the address check.
        resolver: Resolves host names at connect time; default the system resolver.

    Raises:
        ConfigurationError: The secret is malformed, or ``timeout`` is not above 0.
    """

    def __init__(
        self,
        *,
        secret: str | None = None,
        timeout: float = 10.0,
        allow_private_urls: bool = False,
        allowed_hosts: Collection[str] = (),
        resolver: Resolver | None = None,
    ) -> None:
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError(f"the webhook timeout must be more than 0, not {timeout!r}")
        self._signer = None if secret is None else _webhook(secret)
        self._timeout = float(timeout)
        self._deadline = ThreadDeadline()
        self._client = guarded_client(
            allow_private_urls=allow_private_urls,
            allowed_hosts=allowed_hosts,
            resolver=resolver,
            timeout=httpx.Timeout(self._timeout),
            headers={"User-Agent": f"bulkresize/{__version__}"},
            deadline=self._deadline.get,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Build a sender from a deployment's settings.

        Args:
            settings: Uses ``webhook_secret``, ``webhook_timeout``, ``allow_private_urls`` and
                ``allowed_hosts``.

        Returns:
            A sender; close it when done.

        Raises:
            ConfigurationError: ``BULKRESIZE_WEBHOOK_SECRET`` or the timeout is malformed.
        """
        return cls(
            secret=settings.webhook_secret,
            timeout=settings.webhook_timeout,
            allow_private_urls=settings.allow_private_urls,
            allowed_hosts=settings.allowed_hosts,
        )

    @property
    def signs(self) -> bool:
        """Whether webhooks carry a ``webhook-signature`` (a secret is configured)."""
        return self._signer is not None

    def send(
        self,
        url: str,
        *,
        message_id: str,
        payload: Mapping[str, Any],
        timestamp: datetime | None = None,
    ) -> DeliveryResult:
        """Make one delivery attempt. Safe to call from many threads at once.

        The body is compact UTF-8 JSON (``Content-Type: application/json``), signed with the
        message id and the timestamp. Each attempt needs a fresh timestamp, which is the
        default; the message id must stay the same across attempts.

        Args:
            url: The receiver's ``http``/``https`` URL.
            message_id: The ``webhook-id`` (see :func:`message_id`).
            payload: The JSON-able body (see :func:`build_payload`).
            timestamp: When the attempt is made; default now. A naive datetime is taken as UTC.

        Returns:
            The outcome; a delivery problem is never raised.

        Raises:
            TypeError: The payload is not JSON-able (a bug in the caller, not a delivery issue).
            ValueError: The payload holds NaN or an infinity, or the message id is malformed.
        """
        body = encode_body(payload)
        moment = datetime.now(UTC) if timestamp is None else timestamp
        headers = {
            "Content-Type": "application/json",
            **_signature_headers(self._signer, message_id, moment, body),
        }
        try:
            check_url(url)
        except BlockedURL as exc:
            return DeliveryResult(False, False, None, f"blocked: {exc}")
        host = _host_of(url)
        self._deadline.set(time.monotonic() + self._timeout)
        try:
            with self._client.stream(
                "POST", url, content=body.encode("utf-8"), headers=headers
            ) as response:
                result = _judge(response)
                _drain(response)
                return result
        except BlockedURL as exc:  # the guard refused the address; that will not change
            return DeliveryResult(False, False, None, f"blocked: {exc}")
        except DownloadError as exc:  # the guard could not resolve the host: DNS may recover
            return DeliveryResult(False, True, None, str(exc))
        except httpx.HTTPError as exc:
            retryable, error = self._describe(exc, host)
            return DeliveryResult(False, retryable, None, error)
        except (
            BulkResizeError,
            httpx.InvalidURL,
            httpx.StreamError,
            httpcore.TimeoutException,
            httpcore.NetworkError,
            httpcore.ProtocolError,
            httpcore.UnsupportedProtocol,
            httpcore.ProxyError,
            OSError,
            ValueError,
        ) as exc:
            # httpx maps these itself; this is a backstop so that none can ever escape raw.
            return DeliveryResult(False, True, None, f"delivery to {host} failed: {exc}")
        finally:
            self._deadline.set(None)

    def close(self) -> None:
        """Close the pooled connections. The sender cannot be used afterwards."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _describe(self, exc: httpx.HTTPError, host: str) -> tuple[bool, str]:
        """Whether an httpx failure is worth another attempt, and what to call it."""
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            doing = "connecting to" if isinstance(exc, httpx.ConnectTimeout) else "waiting for"
            return True, f"timed out after {self._timeout:g} s {doing} {host}"
        if isinstance(exc, httpx.ConnectError):
            if _find_cause(exc, ConnectionRefusedError) is not None:
                return True, f"cannot connect to {host}: connection refused"
            tls = _find_cause(exc, ssl.SSLError)
            if tls is not None:  # retried: the receiver's operator can renew a certificate
                return True, f"TLS error with {host}: {tls.reason or tls}"
            return True, f"cannot connect to {host}: {detail}"
        if isinstance(exc, httpx.NetworkError):  # reset or dropped mid-exchange
            return True, f"the connection to {host} failed: {detail}"
        if isinstance(exc, httpx.RemoteProtocolError):
            return True, f"{host} broke off the HTTP exchange: {detail}"
        if isinstance(exc, httpx.LocalProtocolError | httpx.UnsupportedProtocol):
            return False, f"cannot send to {host}: {detail}"  # ours; it would fail again
        return True, f"delivery to {host} failed: {detail}"


def _judge(response: httpx.Response) -> DeliveryResult:
    status = response.status_code
    if 200 <= status < 300:
        return DeliveryResult(True, False, status, None)
    reason = response.reason_phrase or _standard_phrase(status)
    text = f"HTTP {status} {reason}".rstrip()
    if 300 <= status < 400:
        return DeliveryResult(False, False, status, f"{text}: redirects are not followed")
    if status in _RETRYABLE_STATUSES or status >= 500:
        return DeliveryResult(False, True, status, text, _retry_after(response))
    if status < 200:
        return DeliveryResult(False, False, status, f"unexpected {text}")
    return DeliveryResult(False, False, status, text)


def _drain(response: httpx.Response) -> None:
    """Read a short answer body, so the connection can be reused; its content is ignored.

    Only the status decides the outcome: a body that is long, broken off or too slow (the
    attempt's deadline still applies) just costs the connection.
    """
    received = 0
    try:
        for chunk in response.iter_raw():
            received += len(chunk)
            if received > _DRAIN_LIMIT:
                return
    except (httpx.HTTPError, httpx.StreamError, httpcore.TimeoutException, OSError):
        return


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds, from a number or an HTTP date; junk is ignored."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, (_as_utc(when) - datetime.now(UTC)).total_seconds())


def _standard_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _host_of(url: str) -> str:
    try:
        return httpx.URL(url).host or url
    except (httpx.InvalidURL, ValueError):
        return url


_E = TypeVar("_E", bound=BaseException)


def _find_cause(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first exception of ``kind`` in ``exc``'s cause/context chain, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
