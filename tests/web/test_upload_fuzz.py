"""Hypothesis against the upload endpoints: whatever arrives, the answer is never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient

from bulkresize.settings import Settings
from bulkresize.web import create_app

# Images and callbacks only ever name loopback or private IP literals: with the SSRF guard on,
# each is refused before any connection or DNS lookup, so fuzzing never reaches a network.
URLS = st.sampled_from(
    ["http://127.0.0.1/a.jpg", "https://10.1.2.3/b.png", "http://[::1]/c", "ftp://127.0.0.1/x",
     "http://", "127.0.0.1/a.jpg", "http://127.0.0.1:99999/", "http://user:pw@127.0.0.1/"]
)  # fmt: skip
CELLS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", '"', '""', ",", "\n", "\r\n", "=1+1", "\x00", "é", "\ufeff"]),
    st.lists(URLS, max_size=4).map(",".join),
)
HEADERS = st.sampled_from(
    ["S. No.,Product Name,Input Image Urls", "Serial Number,product name,IMAGE URLS",
     "S. No.,Product Name", "a,b,c", "", "S. No.,Product Name,Input Image Urls,Extra"]
)  # fmt: skip


@st.composite
def csv_bodies(draw: st.DrawFn) -> bytes:
    rows = draw(st.lists(st.lists(CELLS, min_size=0, max_size=5), max_size=6))
    quote = draw(st.booleans())

    def cell(text: str) -> str:
        return '"' + text.replace('"', '""') + '"' if quote else text

    text = "\n".join([draw(HEADERS), *(",".join(map(cell, row)) for row in rows)])
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    return text.encode(encoding, errors="replace")


BODIES = st.one_of(csv_bodies(), st.binary(max_size=600))
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "quality": st.sampled_from(["", "0", "50", "101", "-1", "x", "1e3", "95"]),
        "format": st.sampled_from(["", "jpeg", "PNG", "webp", "keep", "gif", "é"]),
        "max_width": st.sampled_from(["", "0", "1", "100000", "-5", "nan"]),
        "max_height": st.sampled_from(["1", "abc", "99999999999999999999"]),
        "callback_url": st.one_of(URLS, st.text(max_size=20)),
    },
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Litestar]]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    settings = Settings(data_dir=folder / "data", fetch_retries=0, max_upload_bytes=4096)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def check(response: object) -> None:
    status = response.status_code  # type: ignore[attr-defined]
    assert status < 500, response.text  # type: ignore[attr-defined]
    if status >= 400:
        assert set(response.json()) >= {"status_code", "detail"}  # type: ignore[attr-defined]
    else:
        assert status == 202


@given(body=BODIES, options=OPTIONS, filename=st.text(max_size=10))
@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_multipart_uploads_never_answer_5xx(
    client: TestClient[Litestar], body: bytes, options: dict[str, str], filename: str
) -> None:
    files = {"file": (filename or "x.csv", body, "text/csv")}
    check(client.post("/v1/requests", files=files, data=options))
    legacy = {"webhook": options["callback_url"]} if "callback_url" in options else {}
    check(client.post("/jobs", files=files, data=legacy))


@given(body=BODIES, options=OPTIONS, content_type=st.sampled_from(
    ["text/csv", "text/csv; charset=utf-8", "application/octet-stream", "text/plain", ""]
))  # fmt: skip
@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_raw_uploads_never_answer_5xx(
    client: TestClient[Litestar], body: bytes, options: dict[str, str], content_type: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    check(client.post("/v1/requests", content=body, params=options, headers=headers))
