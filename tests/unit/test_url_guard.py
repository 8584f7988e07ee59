"""Property tests of the SSRF address check and the URL rules in bulkresize.fetching."""

from __future__ import annotations

import contextlib
import ipaddress
import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bulkresize.errors import BlockedURL
from bulkresize.fetching import MAX_URL_LENGTH, check_url, is_public_address

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address

NON_PUBLIC_V4 = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
]


def addresses_in(cidrs: list[str]) -> st.SearchStrategy[IPv4]:
    networks = [ipaddress.IPv4Network(cidr) for cidr in cidrs]
    return st.sampled_from(networks).flatmap(
        lambda net: st.integers(int(net.network_address), int(net.broadcast_address)).map(IPv4)
    )


non_public_v4 = addresses_in(NON_PUBLIC_V4)
any_v4 = st.integers(0, 2**32 - 1).map(IPv4)


def mapped(v4: IPv4) -> IPv6:
    return IPv6((0xFFFF << 32) | int(v4))


def compatible(v4: IPv4) -> IPv6:
    return IPv6(int(v4))


def six_to_four(v4: IPv4, low: int = 1) -> IPv6:
    return IPv6((0x2002 << 112) | (int(v4) << 80) | low)


def nat64(v4: IPv4) -> IPv6:
    return IPv6((0x64FF9B << 96) | int(v4))


def nat64_local(v4: IPv4) -> IPv6:
    # RFC 6052 with a /48 prefix: 16 bits of the IPv4 address, 8 zero bits, the other 16.
    value = int(v4)
    return IPv6((0x0064_FF9B_0001 << 80) | ((value >> 16) << 64) | ((value & 0xFFFF) << 40))


def teredo(v4: IPv4) -> IPv6:
    server = int(IPv4("65.54.227.120"))
    return IPv6((0x2001_0000 << 96) | (server << 64) | (0xFFFF_FFFF & ~int(v4)))


WRAPPINGS = [mapped, compatible, six_to_four, nat64, nat64_local, teredo]


# --------------------------------------------------------------------------------------------
# is_public_address
# --------------------------------------------------------------------------------------------


@given(non_public_v4)
def test_non_public_ipv4_is_never_public(address: IPv4) -> None:
    assert not is_public_address(address)


@given(non_public_v4, st.sampled_from(WRAPPINGS))
def test_ipv6_wrappings_of_non_public_ipv4_are_never_public(address: IPv4, wrap: object) -> None:
    assert callable(wrap)
    assert not is_public_address(wrap(address))


@given(any_v4, st.integers(0, 2**80 - 1))
def test_six_to_four_and_nat64_are_as_public_as_the_ipv4_inside(address: IPv4, low: int) -> None:
    assert is_public_address(six_to_four(address, low)) == is_public_address(address)
    assert is_public_address(nat64(address)) == is_public_address(address)


@given(any_v4)
def test_mapped_and_compatible_forms_are_never_public(address: IPv4) -> None:
    # An IPv6 socket would reach the IPv4 address inside; no real origin needs these forms.
    assert not is_public_address(mapped(address))
    assert not is_public_address(compatible(address))


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.31.255.255",
        "192.168.0.1",
        "100.64.0.1",
        "169.254.169.254",  # cloud metadata
        "100.100.100.200",  # Alibaba metadata
        "168.63.129.16",  # Azure WireServer
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.251",
        "239.255.255.250",
        "198.18.0.1",
        "192.0.0.192",
        "::",
        "::1",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "ff02::1",
        "2001:db8::1",
        "2001::1",  # Teredo
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b:1::1",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "::ffff:127.0.0.1",
        "::ffff:8.8.8.8",
        "::127.0.0.1",
    ],
)
def test_special_addresses_are_not_public(text: str) -> None:
    assert not is_public_address(ipaddress.ip_address(text))


@pytest.mark.parametrize(
    "text",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "151.101.1.69",
        "2606:4700:4700::1111",
        "2a00:1450:4001:82a::200e",
        "2002:808:808::1",  # 6to4 of 8.8.8.8
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    ],
)
def test_ordinary_internet_addresses_are_public(text: str) -> None:
    assert is_public_address(ipaddress.ip_address(text))


# --------------------------------------------------------------------------------------------
# check_url
# --------------------------------------------------------------------------------------------

prefixes = st.sampled_from(
    ["", "http://", "https://", "HTTP://", "file://", "file:", "http:", "http://[", "http://a:"]
)


@given(prefixes, st.text())
@example("http://", "[::1")
@example("http://", "a:99999")
@example("http://", "a b")
@example("file://", "\x00")
@example("http://", "xn--")
def test_check_url_raises_nothing_but_blocked_url(prefix: str, text: str) -> None:
    for allow_files in (False, True):
        with contextlib.suppress(BlockedURL):  # anything else fails the test
            check_url(prefix + text, allow_files=allow_files)


label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
top_level = st.from_regex(r"[a-z](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hostnames = st.builds(
    lambda labels, tld: ".".join([*labels, tld]), st.lists(label, max_size=3), top_level
)
good_hosts = st.one_of(
    hostnames,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda address: f"[{address}]"),
)
bad_hosts = st.sampled_from(["", "-bad.example", "a..b", "exa mple.com", "bad-.example", "[::1"])
path_chars = string.ascii_letters + string.digits + "-._~/!$&'()*+,;=:@"


@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "Https"]),
    credentials=st.sampled_from(["", "", "", "user@", "user:secret@"]),
    host=st.one_of(good_hosts, good_hosts, good_hosts, bad_hosts),
    port=st.one_of(st.none(), st.integers(1, 65535), st.sampled_from([0, 65536, 99999])),
    path=st.text(alphabet=path_chars, max_size=40),
    padding=st.integers(0, 2100),
)
def test_http_urls_pass_exactly_when_they_meet_the_rules(
    scheme: str, credentials: str, host: str, port: int | None, path: str, padding: int
) -> None:
    authority = credentials + host + ("" if port is None else f":{port}")
    url = f"{scheme}://{authority}/{path}{'p' * padding}"
    valid = (
        len(url) <= MAX_URL_LENGTH
        and not credentials
        and host not in {"", "-bad.example", "a..b", "exa mple.com", "bad-.example", "[::1"}
        and (port is None or 1 <= port <= 65535)
    )

    try:
        check_url(url)
    except BlockedURL:
        accepted = False
    else:
        accepted = True

    assert accepted == valid, url


def test_the_length_limit_is_2048_characters() -> None:
    base = "http://example.com/"
    check_url(base + "a" * (MAX_URL_LENGTH - len(base)))
    with pytest.raises(BlockedURL, match="2048"):
        check_url(base + "a" * (MAX_URL_LENGTH - len(base) + 1))


def test_check_url_does_not_resolve_names() -> None:
    # Addresses are judged at connect time; a name that resolves nowhere is still a valid URL.
    check_url("http://localhost/a.png")
    check_url("http://does-not-exist.invalid/a.png")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/a.png", "'ftp'"),
        ("javascript:alert(1)", "'javascript'"),
        ("file:///etc/passwd", "'file'"),
        ("example.com/a.png", "no URL scheme"),
        ("http:///a.png", "no host"),
        ("http://user:pass@example.com/", "credentials"),
        ("http://example.com:0/", "port"),
        ("http://[fe80::1%25eth0]/", "host"),
    ],
)
def test_blocked_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(BlockedURL, match=message):
        check_url(url)


@pytest.mark.parametrize(
    "url", ["file:///tmp/a.png", "file://localhost/tmp/a%20b.png", "FILE:///tmp/a.png"]
)
def test_local_file_urls_pass_only_when_allowed(url: str) -> None:
    check_url(url, allow_files=True)
    with pytest.raises(BlockedURL):
        check_url(url)
