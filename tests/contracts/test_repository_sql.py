from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bulkresize.errors import RepositoryError
from bulkresize.repositories import Repository
from bulkresize.repositories.sql import SQLRepository
from bulkresize.testing import RepositoryContract, WebhookOutboxContract
from bulkresize.testing.repository import make_request
from services import require_postgres


class TestSQLiteRepository(RepositoryContract, WebhookOutboxContract):
    @pytest.fixture
    def repository(self, tmp_path: Path) -> Iterator[Repository]:
        repository = SQLRepository.from_url(f"sqlite:///{tmp_path / 'state.db'}")
        yield repository
        repository.close()


class TestInMemorySQLiteRepository(RepositoryContract, WebhookOutboxContract):
    @pytest.fixture
    def repository(self) -> Iterator[Repository]:
        repository = SQLRepository.from_url("sqlite://")
        yield repository
        repository.close()


@pytest.mark.integration
class TestPostgresRepository(RepositoryContract, WebhookOutboxContract):
    @pytest.fixture
    def repository(self) -> Iterator[Repository]:
        url = require_postgres()
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS bulkresize_images"))
            connection.execute(text("DROP TABLE IF EXISTS bulkresize_requests"))
        engine.dispose()
        repository = SQLRepository.from_url(url)
        yield repository
        repository.close()


def test_sqlite_uses_wal_and_creates_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "state.db"
    repository = SQLRepository.from_url(f"sqlite:///{path}")
    try:
        assert path.exists()
        engine = create_engine(f"sqlite:///{path}")
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        engine.dispose()
    finally:
        repository.close()


def test_schema_creation_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first = SQLRepository.from_url(url)
    second = SQLRepository.from_url(url)
    second.create_schema()
    first.close()
    second.close()


def test_an_older_schema_gains_the_new_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE bulkresize_requests (id VARCHAR(64) PRIMARY KEY, status VARCHAR(16) "
            "NOT NULL, total_images INTEGER NOT NULL, processed_images INTEGER NOT NULL, "
            "failed_images INTEGER NOT NULL, options JSON NOT NULL, callback_url TEXT, "
            "output_key TEXT, owner VARCHAR(128), created_at DATETIME NOT NULL, "
            "updated_at DATETIME NOT NULL)"
        )
        connection.exec_driver_sql(
            "INSERT INTO bulkresize_requests VALUES ('old', 'completed', 1, 1, 0, '{}', NULL, "
            "'old/output.csv', NULL, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        )
    engine.dispose()
    repository = SQLRepository.from_url(url)
    try:
        old = repository.get_request("old")
        assert old.status.value == "completed"
        assert old.webhook is None
        request, images = make_request(callback_url="https://h.example/x")
        repository.add_request(request, images)
        assert repository.get_request(request.id).webhook is not None
    finally:
        repository.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:s3cret-pw@127.0.0.1:port/db",
        "postgresql+psycopg://app:s3cret@pw@127.0.0.1:x/db",
        "postgresql+psycopg://app:s3cret-pw@127.0.0.1:1/db",
        "postgresql+psycopg://app:s3cret-pw@127.0.0.1:5432/no_such_db_here",
    ],
)
def test_database_errors_never_carry_the_password(url: str) -> None:
    with pytest.raises(RepositoryError) as caught:
        SQLRepository.from_url(url).get_request("x")
    assert "s3cret" not in str(caught.value)
    assert "pw@" not in str(caught.value)
