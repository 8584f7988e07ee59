"""Safe download of images over HTTP(S), and from local files when the caller allows it.

The :class:`Fetcher` enforces the limits of the design's section 3:

* only ``http``/``https`` URLs with a host, at most 2048 characters (``file://`` on request);
* at most ``max_bytes`` bytes, counted while streaming;
* a connect timeout, a timeout between reads, and a total deadline over the whole fetch,
  including redirects and retries;
* at most ``max_redirects`` redirects, each hop checked again;
* retries with exponential backoff for transient failures only;
* an SSRF guard that checks the address **actually connected to**, inside the connection pool,
  so that DNS rebinding cannot slip a private address past an earlier check.

Every failure is raised as one of the :mod:`bulkresize.errors` download errors; no httpx, httpcore
or socket exception escapes :meth:`Fetcher.fetch`.

:func:`guarded_client` gives other outbound HTTP (webhooks) the same connect-time SSRF guard.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import random
import re
import socket
import ssl
import stat
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self, TypeAlias, TypeVar
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpcore
import httpx

from bulkresize.__about__ import __version__
from bulkresize.errors import (
    BlockedURL,
    ConfigurationError,
    DownloadError,
    FetchTimeout,
    HTTPStatusError,
    ImageError,
    ImageTooLarge,
)

if TYPE_CHECKING:
    from bulkresize.settings import Settings

__all__ = [
    "MAX_URL_LENGTH",
    "FetchedImage",
    "Fetcher",
    "IPAddress",
    "Resolver",
    "check_url",
    "guarded_client",
    "is_public_address",
    "normalise_host",
    "system_resolver",
]

MAX_URL_LENGTH: Final = 2048
"""The longest URL accepted, in characters."""

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver: TypeAlias = Callable[[str, int], list[str]]
"""Resolves ``(host, port)`` to IP address strings; raises ``socket.gaierror`` when it cannot."""

_HTTP_SCHEMES: Final = frozenset({"http", "https"})
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?", re.ASCII | re.IGNORECASE)
_DEADLINE_SLACK: Final = 0.01  # a socket timeout fires a hair after the instant it was set for

# --------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------

# Explicit lists on top of ``is_global``: its tables differ between Python releases, and it
# calls multicast (and, on some releases, IPv4-mapped and NAT64 local-use) addresses global.
_BLOCKED_V4: Final = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network", including the unspecified 0.0.0.0
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT; holds Alibaba's metadata service 100.100.100.200
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local; holds the cloud metadata service 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments; holds Oracle's metadata 192.0.0.192
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, including the broadcast 255.255.255.255
    )
)
_BLOCKED_V6: Final = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/96",  # IPv4-compatible (deprecated), including :: and ::1
        "::ffff:0:0/96",  # IPv4-mapped: an IPv6 socket would reach the IPv4 address inside
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "64:ff9b:1::/48",  # NAT64 for local use: it can translate to anything
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, including Teredo 2001::/32 and benchmarking
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # SRv6 segment identifiers
        "fc00::/7",  # unique local; holds AWS's metadata service fd00:ec2::254
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local, still routed internally by some networks
        "ff00::/8",  # multicast
    )
)
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
_NAT64_WELL_KNOWN: Final = ipaddress.IPv6Network("64:ff9b::/96")
# Platform endpoints that SSRF goes after; the first two are covered by the ranges above too.
_METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer: a public address that only Azure VMs reach
    )
)


def is_public_address(address: IPAddress) -> bool:
    """Tell whether an address is safe to connect to on behalf of a user.

    An address is public when ``ipaddress`` calls it global and it is not multicast, not in one of
    the special-purpose ranges (loopback, private, link-local, CGNAT, benchmarking, documentation,
    reserved, unspecified, broadcast, IPv4-mapped, IPv4-compatible, Teredo, NAT64 for local use),
    and not a cloud metadata endpoint. An IPv4 address embedded in a 6to4 (``2002::/16``) or
    NAT64 (``64:ff9b::/96``) address must itself be public.

    Args:
        address: The address to judge.

    Returns:
        ``True`` if the address may be connected to.
    """
    if address in _METADATA_ADDRESSES:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return (
            address.is_global
            and not address.is_multicast
            and not address.is_reserved
            and not any(address in network for network in _BLOCKED_V4)
        )
    embedded = _embedded_ipv4(address)
    if embedded is not None and not is_public_address(embedded):
        return False
    return (
        address.is_global
        and not address.is_multicast
        and not any(address in network for network in _BLOCKED_V6)
    )


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that a translation or tunnelling form carries, if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client; the whole Teredo range is refused anyway
    if address in _NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address in _IPV4_COMPATIBLE:  # ::a.b.c.d, deprecated
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve a host name with the operating system's resolver (``socket.getaddrinfo``).

    Args:
        host: A host name or IP literal (any form ``getaddrinfo`` takes, such as ``127.1``).
        port: The TCP port.

    Returns:
        The IP addresses, in the order the resolver prefers.

    Raises:
        socket.gaierror: The name cannot be resolved.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


# --------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------


def check_url(url: str, *, allow_files: bool = False) -> None:
    """Check that a URL may be fetched, without resolving its host.

    The rules: at most 2048 characters; scheme ``http`` or ``https`` (or ``file`` when
    ``allow_files`` is set); a well-formed host (a DNS name or an IP literal, without a zone id);
    no credentials (``user:password@``), which are both a leak and a way to disguise the real
    host; a port from 1 to 65535 if any. A ``file`` URL must name an absolute local path
    (``file:///path`` or ``file://localhost/path``).

    Addresses are not judged here: that happens when the connection is made, on the address used.

    Args:
        url: The URL to check.
        allow_files: Also accept ``file://`` URLs.

    Raises:
        BlockedURL: The URL breaks a rule; the message says which.
    """
    _checked_url(url, allow_files=allow_files)


def _checked_url(url: str, *, allow_files: bool = False) -> httpx.URL | None:
    """:func:`check_url`, returning the parsed URL for http(s) (``None`` for a file URL)."""
    if not isinstance(url, str):
        raise BlockedURL(f"a URL must be a string, not {type(url).__name__}")
    if len(url) > MAX_URL_LENGTH:
        raise BlockedURL(f"the URL is {len(url)} characters long; the limit is {MAX_URL_LENGTH}")
    scheme = _scheme_of(url)
    if scheme in _HTTP_SCHEMES:
        return _parse_http_url(url)
    if scheme == "file" and allow_files:
        _file_path(url)
        return None
    allowed = "http, https or file" if allow_files else "http or https"
    if scheme is None:
        raise BlockedURL(f"{_shorten(url)!r} has no URL scheme; use {allowed}")
    raise BlockedURL(f"the URL scheme {scheme!r} is not allowed; use {allowed}")


def _scheme_of(url: str) -> str | None:
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse_http_url(url: str) -> httpx.URL:
    """Parse an http(s) URL with the parser that will send it, and apply the rules."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:  # IDNA failures are ValueErrors too
        raise BlockedURL(f"invalid URL {_shorten(url)!r}: {exc}") from None
    if parsed.scheme not in _HTTP_SCHEMES:  # e.g. a leading space hides the scheme
        raise BlockedURL(f"{_shorten(url)!r} is not an http or https URL")
    if parsed.userinfo:
        raise BlockedURL("URLs with credentials (user:password@host) are not allowed")
    host = parsed.raw_host.decode("ascii", errors="replace")
    if not host:
        raise BlockedURL(f"the URL {_shorten(url)!r} has no host")
    if not _is_valid_host(host):
        raise BlockedURL(f"the URL host {_shorten(host)!r} is not a valid host name or address")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise BlockedURL(f"the URL port {parsed.port} is out of range")
    return parsed


def _is_valid_host(host: str) -> bool:
    if ":" in host:  # httpx has removed the brackets of an IPv6 literal
        if "%" in host:  # a zone id picks a local interface; never meaningful for an origin
            return False
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return False
    return all(_HOST_LABEL.fullmatch(label) for label in name.split("."))


def _file_path(url: str) -> str:
    """The local path a ``file://`` URL names; ``BlockedURL`` if it names anything else."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise BlockedURL(f"invalid file URL {_shorten(url)!r}: {exc}") from None
    if parts.netloc not in ("", "localhost"):
        raise BlockedURL(f"file URLs must name a local path, not one on {parts.netloc!r}")
    path = url2pathname(parts.path)
    if "\x00" in path or not os.path.isabs(path):
        raise BlockedURL(f"file URLs must hold an absolute path: {_shorten(url)!r}")
    return path


# --------------------------------------------------------------------------------------------
# The guarded network backend
# --------------------------------------------------------------------------------------------


class ThreadDeadline:
    """Each thread's current deadline (``time.monotonic()`` seconds), read by guarded streams.

    A client shared by many threads runs one request per thread at a time, so the deadline of
    the request in flight is a per-thread value.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self) -> float | None:
        """The calling thread's deadline, or ``None`` when it has none."""
        value: float | None = getattr(self._local, "value", None)
        return value

    def set(self, value: float | None) -> None:
        """Set (or, with ``None``, clear) the calling thread's deadline."""
        self._local.value = value


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read and write also stops at the fetch's total deadline.

    httpx's read timeout is fixed when a response starts, so without this a body that drips until
    just before the deadline and then stalls would overrun it by up to a whole read timeout.
    """

    def __init__(
        self, stream: httpcore.NetworkStream, deadline: Callable[[], float | None]
    ) -> None:
        self._stream = stream
        self._deadline = deadline

    def _cap(self, timeout: float | None, error: type[Exception]) -> float | None:
        deadline = self._deadline()
        if deadline is None:
            return timeout
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise error("the total deadline of the download has passed")
        return remaining if timeout is None else min(timeout, remaining)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._cap(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._cap(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        # server_hostname is the URL's host, not the IP connected to: SNI and certificate
        # checks still verify the name.
        tls = self._stream.start_tls(
            ssl_context, server_hostname, self._cap(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, resolving and vetting every host itself before connecting.

    Connecting to the vetted IP literal (rather than letting the socket layer resolve the name
    again) is what defeats DNS rebinding: the address checked is the address used.
    """

    def __init__(
        self,
        *,
        resolver: Resolver,
        check_addresses: bool,
        allowed_hosts: frozenset[str],
        deadline: Callable[[], float | None],
    ) -> None:
        self._inner = httpcore.SyncBackend()
        self._resolver = resolver
        self._check_addresses = check_addresses
        self._allowed_hosts = allowed_hosts
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = _interleave_families(self._vetted_addresses(host, port))
        budget_end = None if timeout is None else time.monotonic() + timeout
        last_error: Exception | None = None
        for index, address in enumerate(addresses):
            # One connect budget for the host, shared out so that a black-holed first address
            # (often a broken IPv6 route) leaves time for the next one.
            share = None
            if budget_end is not None:
                remaining = budget_end - time.monotonic()
                if remaining <= 0:
                    break
                share = remaining / (len(addresses) - index)
            try:
                stream = self._inner.connect_tcp(
                    address,
                    port,
                    timeout=share,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        if last_error is not None:
            raise last_error
        raise httpcore.ConnectTimeout(f"timed out connecting to {host}")

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise BlockedURL("connecting to a Unix socket is not allowed")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _vetted_addresses(self, host: str, port: int) -> list[IPAddress]:
        try:
            # An IP literal is its own answer: an injected resolver need not know it, and the
            # check below must judge it rather than report a failed lookup.
            answers = [str(ipaddress.ip_address(host))]
        except ValueError:
            answers = []
        try:
            answers = answers or self._resolver(host, port)
        except socket.gaierror as exc:
            if exc.errno in _NO_SUCH_NAME:  # a wrong name does not fix itself: no retry
                raise DownloadError(f"cannot resolve host {host!r}: {exc.strerror}") from None
            raise httpcore.ConnectError(f"cannot resolve host {host!r}: {exc.strerror}") from exc
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve host {host!r}: {exc}") from exc
        addresses: list[IPAddress] = []
        for answer in answers:
            try:
                address = ipaddress.ip_address(answer)
            except ValueError:
                raise DownloadError(
                    f"the resolver gave {answer!r} for {host!r}, which is not an IP address"
                ) from None
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise DownloadError(f"host {host!r} has no address")
        if self._check_addresses and normalise_host(host) not in self._allowed_hosts:
            for address in addresses:  # every answer: a rebinding server can mix them
                if not is_public_address(address):
                    raise BlockedURL(
                        f"host {host!r} resolves to {address}, which is not a public address"
                    )
        return addresses


def _interleave_families(addresses: list[IPAddress]) -> list[str]:
    """Alternate IPv6 and IPv4, keeping the resolver's preference (RFC 8305, section 4)."""
    first = [a for a in addresses if a.version == addresses[0].version]
    other = [a for a in addresses if a.version != addresses[0].version]
    ordered: list[IPAddress] = []
    for index in range(max(len(first), len(other))):
        ordered.extend(group[index] for group in (first, other) if index < len(group))
    return [str(address) for address in ordered]


_NO_SUCH_NAME: Final = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's own HTTP transport, its connection pool rebuilt on the guarded network backend.

    httpx 0.28 has no public parameter for a network backend (encode/httpx#3749 proposes one),
    so the pool that ``HTTPTransport`` built is replaced by an identical one that has it. Keeping
    ``HTTPTransport`` keeps httpx's exception mapping and response streams unchanged.
    """

    def __init__(
        self, *, backend: httpcore.NetworkBackend, limits: httpx.Limits, ssl_context: ssl.SSLContext
    ) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            # Fail closed: without the pool swap the SSRF guard would silently not run.
            raise RuntimeError("httpx.HTTPTransport has no connection pool for the SSRF guard")
        self._pool.close()  # nothing is open yet; close it anyway for symmetry
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=backend,
        )


def guarded_client(
    *,
    allow_private_urls: bool = False,
    allowed_hosts: Collection[str] = (),
    resolver: Resolver | None = None,
    timeout: httpx.Timeout | float = 10.0,
    max_connections: int = 16,
    headers: Mapping[str, str] | None = None,
    deadline: Callable[[], float | None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx.Client:
    """Build an ``httpx.Client`` whose every connection passes the SSRF guard.

    The client resolves each host itself at connect time (with ``resolver``), refuses the
    connection with :class:`~bulkresize.errors.BlockedURL` if any answer is not a public address
    (see :func:`is_public_address`), and then connects to the vetted IP, so DNS rebinding cannot
    slip past. IP-literal hosts are judged the same way, without a lookup. It follows no
    redirects, ignores proxy and other environment settings (``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` excepted), accepts no cookies, and speaks HTTP/1.1 only.

    Errors raised by the guard are ours and pass through httpx unwrapped:
    :class:`~bulkresize.errors.BlockedURL` for a refused address, and
    :class:`~bulkresize.errors.DownloadError` for a host that does not exist or has no address.
    Everything else is an ordinary ``httpx`` exception.

    Args:
        allow_private_urls: Lift the address check: connect to any address (development, tests).
        allowed_hosts: Host names exempt from the address check, matched exactly (after
            lower-casing and IDNA encoding); IP literals may be listed too.
        resolver: Resolves host names at connect time; default :func:`system_resolver`.
        timeout: The client's default timeout, in seconds or as an ``httpx.Timeout``.
        max_connections: Connections open at once, over all hosts.
        headers: Headers sent with every request.
        deadline: Returns the ``time.monotonic()`` instant by which the current exchange must
            end, or ``None``; every read and write is cut short at it. Called on each I/O, from
            the thread doing it, so a ``threading.local`` can give each thread its own.
        ssl_context: The TLS settings; default httpx's, with ``SSL_CERT_FILE`` and
            ``SSL_CERT_DIR`` honoured. Clients may share one (loading the
            CA bundle takes tens of milliseconds and a megabyte or two).

    Returns:
        A client; close it when done. It is safe to share between threads.

    Raises:
        ConfigurationError: ``allowed_hosts`` is a lone string or ``max_connections`` is below 1.
    """
    transport = _guarded_transport(
        allow_private_urls=allow_private_urls,
        allowed_hosts=allowed_hosts,
        resolver=resolver,
        max_connections=max_connections,
        deadline=deadline,
        ssl_context=ssl_context,
    )
    return httpx.Client(
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # accept none
        timeout=timeout,
        headers=dict(headers or {}),
    )


def _guarded_transport(
    *,
    allow_private_urls: bool,
    allowed_hosts: Collection[str],
    resolver: Resolver | None,
    max_connections: int,
    deadline: Callable[[], float | None] | None,
    ssl_context: ssl.SSLContext | None,
) -> _GuardedTransport:
    """The transport of :func:`guarded_client`, for callers that send requests themselves."""
    if isinstance(allowed_hosts, str):  # a lone name would become a set of letters
        raise ConfigurationError("allowed_hosts must be a collection of host names")
    if max_connections < 1:
        raise ConfigurationError(f"max_connections must be at least 1, not {max_connections!r}")
    backend = _GuardedBackend(
        resolver=resolver or system_resolver,
        check_addresses=not allow_private_urls,
        allowed_hosts=frozenset(normalise_host(host) for host in allowed_hosts),
        deadline=deadline or _no_deadline,
    )
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return _GuardedTransport(
        backend=backend, limits=limits, ssl_context=ssl_context or _default_ssl_context()
    )


def _default_ssl_context() -> ssl.SSLContext:
    """The TLS settings of httpx, with ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` honoured.

    A private CA is the operator's choice; proxy variables are not honoured (clients are built
    with ``trust_env`` off).
    """
    return httpx.create_ssl_context(trust_env=True)


def _no_deadline() -> float | None:
    return None


# --------------------------------------------------------------------------------------------
# The fetcher
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchedImage:
    """A downloaded image, not yet checked to be one.

    Attributes:
        data: The body, decoded from any ``Content-Encoding``.
        content_type: The ``Content-Type`` the origin sent, if any. Informational only: the file
            type is sniffed from ``data``, never taken from here.
        url: The final URL, after redirects.
    """

    data: bytes
    content_type: str | None
    url: str


class _Transient(Exception):  # a control-flow signal inside the retry loop, never escapes
    """A failure worth another attempt; ``error`` is what the caller sees if none is left."""

    def __init__(self, error: ImageError, *, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class Fetcher:
    """Downloads images safely; one instance is shared by many threads.

    Each thread that fetches gets an ``httpx.HTTPTransport`` of its own (the guarded one of
    :func:`guarded_client`), which keeps up to ``connections_per_thread`` connections alive
    between its fetches; one pool shared by many threads spent a fifth of the CPU of a tiny
    image's fetch scanning it under the GIL. Requests go to the transport directly, not through
    an ``httpx.Client``: the client's cookie jar, auth, redirect and event-hook layers, none of
    which a fetch uses, cost a quarter of a tiny image's fetch. Proxies and environment settings
    are off, cookies are never stored (fetches must not share state), and redirects are
    followed by hand so that every hop is checked.

    Args:
        allow_private_urls: Lift the SSRF guard: connect to any address (development, tests).
        allowed_hosts: Host names exempt from the address check, matched exactly (after
            lower-casing and IDNA encoding); IP literals may be listed too.
        connect_timeout: Seconds to connect (including the TLS handshake).
        read_timeout: Seconds allowed between two reads.
        total_timeout: Seconds for a whole fetch, over redirects and retries.
        max_bytes: Largest body accepted, counted while streaming.
        max_redirects: Redirects followed per fetch.
        retries: Extra attempts after a transient failure (connection error, connect or read
            timeout, HTTP 429 or 5xx).
        retry_backoff: Seconds before the first retry; doubled for each further one, with jitter.
        max_connections: Requests in flight at once, over all threads and hosts.
        resolver: Resolves host names at connect time; default :func:`system_resolver`.
        connections_per_thread: Connections each thread's client keeps, over all hosts.

    Raises:
        ConfigurationError: A limit is out of range.
    """

    def __init__(
        self,
        *,
        allow_private_urls: bool = False,
        allowed_hosts: Collection[str] = (),
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        total_timeout: float = 30.0,
        max_bytes: int = 25 * 1024 * 1024,
        max_redirects: int = 5,
        retries: int = 2,
        retry_backoff: float = 0.5,
        max_connections: int = 16,
        resolver: Resolver | None = None,
        connections_per_thread: int = 4,
    ) -> None:
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
            ("total_timeout", total_timeout),
        ):
            if not value > 0:
                raise ConfigurationError(f"{name} must be more than 0, not {value!r}")
        for name, number, least in (
            ("max_bytes", max_bytes, 1),
            ("max_redirects", max_redirects, 0),
            ("retries", retries, 0),
            ("max_connections", max_connections, 1),
            ("connections_per_thread", connections_per_thread, 1),
        ):
            if number < least:
                raise ConfigurationError(f"{name} must be at least {least}, not {number!r}")
        if retry_backoff < 0:
            raise ConfigurationError(f"retry_backoff must not be negative, not {retry_backoff!r}")
        if isinstance(allowed_hosts, str):  # a lone name would become a set of letters
            raise ConfigurationError("allowed_hosts must be a collection of host names")

        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._total_timeout = total_timeout
        self._max_bytes = max_bytes
        self._max_redirects = max_redirects
        self._retries = retries
        self._retry_backoff = retry_backoff
        self._check_addresses = not allow_private_urls
        self._allowed_hosts = frozenset(normalise_host(host) for host in allowed_hosts)
        self._deadline = ThreadDeadline()

        self._in_flight = threading.BoundedSemaphore(max_connections)
        self._local = threading.local()
        self._transports: list[httpx.HTTPTransport] = []
        self._transports_lock = threading.Lock()
        self._closed = False
        self._new_transport: Callable[[], httpx.HTTPTransport] = functools.partial(
            _guarded_transport,
            allow_private_urls=allow_private_urls,
            allowed_hosts=allowed_hosts,
            resolver=resolver,
            max_connections=connections_per_thread,
            deadline=self._deadline.get,
            ssl_context=_default_ssl_context(),  # one for all the transports
        )
        self._headers = httpx.Headers(
            {
                "User-Agent": f"bulkresize/{__version__}",
                "Accept": "image/*, */*;q=0.5",
                # Images are compressed already; asking for identity avoids decompression bombs
                # from well-behaved servers (others are still decoded and counted).
                "Accept-Encoding": "identity",
            }
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Build a fetcher with a deployment's limits.

        Args:
            settings: The deployment settings.

        Returns:
            A fetcher; close it when done.
        """
        return cls(
            allow_private_urls=settings.allow_private_urls,
            allowed_hosts=settings.allowed_hosts,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            total_timeout=settings.fetch_timeout,
            max_bytes=settings.max_image_bytes,
            max_redirects=settings.max_redirects,
            retries=settings.fetch_retries,
            retry_backoff=settings.retry_backoff,
            max_connections=settings.download_concurrency,
        )

    def fetch(self, url: str, *, allow_files: bool = False) -> FetchedImage:
        """Download one image. Safe to call from many threads at once.

        Args:
            url: An ``http``/``https`` URL, or a ``file://`` URL when ``allow_files`` is set.
            allow_files: Read ``file://`` URLs from the local disk (CLI and library only).

        Returns:
            The body, the origin's ``Content-Type`` and the final URL.

        Raises:
            BlockedURL: The URL, a redirect target, or an address it resolves to is not allowed.
            HTTPStatusError: The origin answered 400 or above (after retries for 429 and 5xx).
            FetchTimeout: A connect, read or total timeout ran out.
            ImageTooLarge: The body is larger than ``max_bytes``.
            DownloadError: Any other failure: connection, TLS, protocol, redirects, file errors.
        """
        parsed = _checked_url(url, allow_files=allow_files)  # parsed once, sent as it is
        if parsed is None:
            return self._read_file(url)
        deadline = time.monotonic() + self._total_timeout
        self._deadline.set(deadline)
        try:
            return self._fetch_with_retries(parsed, deadline)
        finally:
            self._deadline.set(None)

    def close(self) -> None:
        """Close every thread's connections. The fetcher cannot be used afterwards."""
        with self._transports_lock:
            self._closed = True
            transports, self._transports = self._transports, []
        for transport in transports:
            transport.close()

    def _transport(self) -> httpx.HTTPTransport:
        """The calling thread's transport, made on its first fetch, closed when the thread ends."""
        transport: httpx.HTTPTransport | None = getattr(self._local, "transport", None)
        if transport is None:
            with self._transports_lock:
                if self._closed:
                    raise RuntimeError("the fetcher is closed")
                transport = self._new_transport()
                self._transports.append(transport)
            self._local.transport = transport
            weakref.finalize(threading.current_thread(), self._release, transport)
        return transport

    def _release(self, transport: httpx.HTTPTransport) -> None:
        with self._transports_lock:
            if transport not in self._transports:
                return  # closed with the fetcher already
            self._transports.remove(transport)
        transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- HTTP ------------------------------------------------------------------------------

    def _fetch_with_retries(self, url: httpx.URL, deadline: float) -> FetchedImage:
        attempt = 0
        while True:
            try:
                return self._attempt(url, deadline)
            except _Transient as failure:
                error, retry_after = failure.error, failure.retry_after
            if attempt >= self._retries:
                raise error
            delay = self._retry_backoff * 2**attempt * random.uniform(1.0, 1.2)  # jitter
            if retry_after is not None:
                delay = max(delay, retry_after)
            if time.monotonic() + delay >= deadline:  # no time left for another attempt
                raise error
            time.sleep(delay)
            attempt += 1

    def _attempt(self, url: httpx.URL, deadline: float) -> FetchedImage:
        """One try at the URL, following redirects; raises ``_Transient`` if worth retrying.

        A retry starts again from the first URL, so every hop is checked again too.
        """
        current = url
        redirects = 0
        while True:
            try:
                request = httpx.Request(
                    "GET",
                    current,
                    headers=self._headers,
                    extensions={"timeout": self._attempt_timeout(deadline)},
                )
                self._refuse_literal_address(request.url)
                with self._in_flight:
                    response = self._transport().handle_request(request)
                    response.request = request  # for response.url and errors while streaming
                    try:
                        target = self._redirect_target(response)
                        if target is None:
                            self._raise_for_status(response)
                            data = self._read_body(response, deadline)
                            return FetchedImage(
                                data=data,
                                content_type=response.headers.get("content-type"),
                                url=str(response.url),
                            )
                    finally:
                        response.close()  # back to the pool, or closed if not read to the end
            except (ImageError, _Transient):
                raise
            except httpx.HTTPError as exc:
                failure = self._map_transport_error(exc, str(current), deadline)
                error = failure.error if isinstance(failure, _Transient) else failure
                if error.__cause__ is None and error is not _find_cause(exc, ImageError):
                    error.__cause__ = exc  # keep the httpx detail for logs and debugging
                raise failure from exc
            except (httpx.InvalidURL, httpx.StreamError) as exc:
                raise DownloadError(f"download from {current.host} failed: {exc}") from exc
            except (
                httpcore.TimeoutException,
                httpcore.NetworkError,
                httpcore.ProtocolError,
                httpcore.UnsupportedProtocol,
                httpcore.ProxyError,
                OSError,
                ValueError,
            ) as exc:
                # httpx maps these itself; this is a backstop so none can ever escape raw.
                raise DownloadError(f"download from {current.host} failed: {exc}") from exc
            if target is None:  # pragma: no cover  # the block above returns or raises
                raise DownloadError("internal error: no redirect target")
            if redirects >= self._max_redirects:
                raise DownloadError(f"too many redirects (more than {self._max_redirects})")
            redirects += 1
            current = target

    def _refuse_literal_address(self, url: httpx.URL) -> None:
        """Refuse an IP-literal host before any connection is attempted."""
        if not self._check_addresses:
            return
        host = url.raw_host.decode("ascii", errors="replace")
        if normalise_host(host) in self._allowed_hosts:
            return
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return  # a name, or an odd form like 127.1: the connect-time check judges it
        if not is_public_address(address):
            raise BlockedURL(f"{address} is not a public address")

    def _attempt_timeout(self, deadline: float) -> dict[str, float]:
        """The request's ``timeout`` extension, as httpx's transports read it."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._deadline_error()
        read = min(self._read_timeout, remaining)
        connect = min(self._connect_timeout, remaining)
        return {"connect": connect, "read": read, "write": read, "pool": remaining}

    def _deadline_error(self) -> FetchTimeout:
        return FetchTimeout(f"the download took longer than {self._total_timeout:g} s in total")

    def _redirect_target(self, response: httpx.Response) -> httpx.URL | None:
        if response.status_code not in _REDIRECT_STATUSES:
            return None
        location = response.headers.get("location", "").strip()
        if not location:
            return None  # _raise_for_status reports it
        try:
            target = str(response.url.join(location))
        except (httpx.InvalidURL, ValueError) as exc:
            raise DownloadError(
                f"invalid redirect location {_shorten(location)!r}: {exc}"
            ) from None
        if _scheme_of(target) == "file":  # even when the caller allows files
            raise BlockedURL(f"a redirect to a file URL is refused: {_shorten(target)!r}")
        try:
            parsed = _checked_url(target)
        except BlockedURL as exc:
            raise BlockedURL(f"redirect refused: {exc}") from None
        if parsed is None:  # pragma: no cover  # file URLs were refused above
            raise BlockedURL(f"a redirect to a file URL is refused: {_shorten(target)!r}")
        return parsed

    def _raise_for_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        reason = response.reason_phrase or _standard_phrase(status)
        message = f"HTTP {status} {reason}".rstrip()
        if status >= 400:
            error = HTTPStatusError(message, status_code=status)
            if status == 429 or status >= 500:
                raise _Transient(error, retry_after=_retry_after(response))
            raise error
        if status in _REDIRECT_STATUSES:
            raise DownloadError(f"{message} without a Location header")
        raise DownloadError(f"unexpected {message}")

    def _read_body(self, response: httpx.Response, deadline: float) -> bytes:
        headers = response.headers
        declared = headers.get("content-length")
        if declared and "transfer-encoding" not in headers and "content-encoding" not in headers:
            # Only an honest length over the limit fails early; the count below is what binds.
            try:
                length = int(declared)
            except ValueError:
                length = 0
            if length > self._max_bytes:
                raise ImageTooLarge(
                    f"the image is {length} bytes, more than the limit of {self._max_bytes}"
                )
        # Chunks joined once at the end: growing a bytearray and copying it out cost 1.3 ms
        # of CPU per MB, 35 times the join (docs/performance.md, profile 11).
        chunks: list[bytes] = []
        received = 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            received += len(chunk)
            if received > self._max_bytes:
                raise ImageTooLarge(
                    f"the image is larger than the limit of {self._max_bytes} bytes"
                )
            if time.monotonic() > deadline:  # a slow drip never trips the read timeout
                raise self._deadline_error()
        return b"".join(chunks)

    def _map_transport_error(
        self, exc: httpx.HTTPError, url: str, deadline: float
    ) -> ImageError | _Transient:
        """Translate an httpx error into ours, wrapped in ``_Transient`` if worth retrying."""
        inner = _find_cause(exc, ImageError)
        if inner is not None:  # e.g. BlockedURL from the guarded backend, should httpx wrap it
            return inner
        host = _host_of(url)
        detail = str(exc) or type(exc).__name__
        error: ImageError
        if isinstance(exc, httpx.TimeoutException):
            if time.monotonic() >= deadline - _DEADLINE_SLACK:
                return self._deadline_error()
            if isinstance(exc, httpx.ConnectTimeout):
                error = FetchTimeout(
                    f"connecting to {host} took longer than {self._connect_timeout:g} s"
                )
            elif isinstance(exc, httpx.PoolTimeout):
                error = FetchTimeout("timed out waiting for a free connection")
            else:
                error = FetchTimeout(f"{host} sent no data for {self._read_timeout:g} s")
            return _Transient(error)
        if isinstance(exc, httpx.ConnectError):
            tls = _find_cause(exc, ssl.SSLError)
            if tls is not None:  # a bad certificate or handshake is not going to heal
                return DownloadError(f"TLS error with {host}: {tls.reason or tls}")
            return _Transient(DownloadError(f"cannot connect to {host}: {detail}"))
        if isinstance(exc, httpx.NetworkError):  # reset or dropped mid-request
            return _Transient(DownloadError(f"the connection to {host} failed: {detail}"))
        if isinstance(exc, httpx.RemoteProtocolError):  # mostly a dropped keep-alive connection
            return _Transient(DownloadError(f"{host} broke off the HTTP exchange: {detail}"))
        if isinstance(exc, httpx.DecodingError):
            return DownloadError(f"cannot decode the body from {host}: {detail}")
        if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
            return DownloadError(f"invalid URL {_shorten(url)!r}: {detail}")
        return DownloadError(f"download from {host} failed: {detail}")

    # -- files -----------------------------------------------------------------------------

    def _read_file(self, url: str) -> FetchedImage:
        path = _file_path(url)
        try:
            # O_NONBLOCK so that a FIFO cannot hang the open; it is a no-op for regular files.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    raise DownloadError(f"{path} is not a regular file")
                data = handle.read(self._max_bytes + 1)
        except FileNotFoundError:
            raise DownloadError(f"no such file: {path}") from None
        except IsADirectoryError:
            raise DownloadError(f"{path} is a directory, not an image file") from None
        except PermissionError:
            raise DownloadError(f"permission denied reading {path}") from None
        except OSError as exc:
            raise DownloadError(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(data) > self._max_bytes:
            raise ImageTooLarge(f"the file is larger than the limit of {self._max_bytes} bytes")
        return FetchedImage(data=data, content_type=None, url=url)


def _retry_after(response: httpx.Response) -> float | None:
    """A numeric ``Retry-After`` in seconds; dates and junk are ignored."""
    value = response.headers.get("retry-after", "").strip()
    if not value.isascii() or not value.isdigit():
        return None
    return float(value)


def _standard_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def normalise_host(host: str) -> str:
    """Normalise a host name the way httpx sends it, for matching against ``allowed_hosts``.

    Args:
        host: A host name or IP literal, IPv6 with or without brackets.

    Returns:
        The host lower-cased, IDNA-encoded, without a trailing dot, IPv6 without brackets.
    """
    bare = host.strip().strip("[]")
    try:
        return httpx.URL(scheme="http", host=bare).raw_host.decode("ascii").rstrip(".")
    except (httpx.InvalidURL, ValueError):
        return bare.lower().rstrip(".")


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
