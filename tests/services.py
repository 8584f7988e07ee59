"""Real services for integration tests: skipped when absent locally, a failure when CI=true."""

from __future__ import annotations

import os

import pytest

POSTGRES_URL = os.environ.get(
    "BULKRESIZE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("BULKRESIZE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def unavailable(service: str, reason: str) -> None:
    """Skip locally, fail in CI: CI must never skip an integration test silently."""
    message = f"{service} is not available: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_postgres() -> str:
    """The PostgreSQL URL, after checking that the server answers."""
    try:
        import psycopg
    except ImportError as exc:
        unavailable("PostgreSQL", f"psycopg is not installed ({exc})")
    dsn = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(dsn, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        unavailable("PostgreSQL", str(exc).splitlines()[0])
    return POSTGRES_URL
