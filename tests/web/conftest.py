"""Fixtures for the HTTP service: settings over a temporary data dir, a client, a live server."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

sys.path.insert(0, str(Path(__file__).parent))  # for serving.py beside this file

from serving import BASE_URL, serving

from bulkresize.settings import Settings
from bulkresize.web import create_app


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Fast, private-URL-friendly settings over a temporary data dir.

    Output URLs point at the TestClient's ``/files/`` route, as ``bulkresize serve`` sets them.
    """
    return Settings(
        data_dir=tmp_path / "data",
        allow_private_urls=True,
        public_url=f"{BASE_URL}/files",
        fetch_retries=0,
        retry_backoff=0.01,
        connect_timeout=2,
        read_timeout=5,
        fetch_timeout=10,
        download_concurrency=4,
        encode_workers=1,
        webhook_backoff=0.05,
        webhook_max_attempts=1,
    )


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient[Litestar]]]:
    """Start ``create_app(settings, **backends)`` under a TestClient; stopped after the test."""
    clients: list[TestClient[Litestar]] = []

    def make(settings: Settings, **backends: Any) -> TestClient[Litestar]:
        client = TestClient(create_app(settings, **backends), base_url=BASE_URL)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def client(
    settings: Settings, make_client: Callable[..., TestClient[Litestar]]
) -> TestClient[Litestar]:
    """The app over ``settings``, started."""
    return make_client(settings)


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    """The app over ``settings`` under a real uvicorn; yields its base URL."""
    with serving(create_app(settings)) as url:
        yield url
