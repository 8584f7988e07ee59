"""The SQL repository: SQLAlchemy Core over SQLite (the embedded default) or PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    case,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import ColumnElement

from bulkresize.errors import BackendNotFound, RepositoryError, RequestNotFound
from bulkresize.models import (
    Image,
    ImageOptions,
    ImageOutcome,
    ImageStatus,
    Request,
    RequestStatus,
    WebhookState,
    WebhookStatus,
)
from bulkresize.redaction import redact_url
from bulkresize.repositories.base import Repository, WebhookOutbox

__all__ = ["SQLRepository", "build_metadata"]

_UNFINISHED = (RequestStatus.PENDING.value, RequestStatus.PROCESSING.value)
_FINAL = (RequestStatus.COMPLETED.value, RequestStatus.FAILED.value)
# Any constant works; it only has to be the same in every process that creates the schema.
_SCHEMA_LOCK_ID = 0x62756C6B


def build_metadata() -> tuple[MetaData, Table, Table]:
    """The schema: ``bulkresize_requests`` and ``bulkresize_images``."""
    metadata = MetaData()
    requests = Table(
        "bulkresize_requests",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("status", String(16), nullable=False),
        Column("total_images", Integer, nullable=False),
        Column("processed_images", Integer, nullable=False, default=0),
        Column("failed_images", Integer, nullable=False, default=0),
        Column("options", JSON, nullable=False),
        Column("callback_url", Text),
        Column("output_key", Text),
        Column("owner", String(128)),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Column("webhook_status", String(16)),
        Column("webhook_attempts", Integer, nullable=False, default=0, server_default="0"),
        Column("webhook_next_attempt_at", DateTime(timezone=True)),
        Column("webhook_last_error", Text),
        Column("finalizing_until", DateTime(timezone=True)),
        Index("ix_bulkresize_requests_status", "status", "created_at"),
        Index("ix_bulkresize_requests_webhook", "webhook_status", "webhook_next_attempt_at"),
    )
    images = Table(
        "bulkresize_images",
        metadata,
        Column(
            "request_id",
            String(64),
            ForeignKey("bulkresize_requests.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        Column("row", Integer, primary_key=True),
        Column("position", Integer, primary_key=True),
        Column("input_url", Text, nullable=False),
        Column("source_url", Text, nullable=False),
        Column("status", String(16), nullable=False),
        Column("output_key", Text),
        Column("error", String(32)),
        Column("error_message", Text),
        Column("bytes_in", BigInteger),
        Column("bytes_out", BigInteger),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Index("ix_bulkresize_images_status", "request_id", "status"),
    )
    return metadata, requests, images


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite keeps no time zone; every stored time is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class SQLRepository(Repository, WebhookOutbox):
    """Requests and images in two tables, through SQLAlchemy Core.

    On SQLite it turns on WAL and a busy timeout and starts every transaction with
    ``BEGIN IMMEDIATE``, so concurrent writers wait instead of failing. The schema is created
    automatically and idempotently; on PostgreSQL under an advisory lock, so several processes
    can start at once.

    Args:
        engine: A ready SQLAlchemy engine (constructors take ready clients, for injection).
        create_schema: Create the tables if they do not exist.
    """

    def __init__(self, engine: Engine, *, create_schema: bool = True) -> None:
        self._engine = engine
        self._metadata, self._requests, self._images = build_metadata()
        self._recording = _RecordingStatements(self._requests, self._images)
        # One shared in-memory SQLite connection must not interleave transactions.
        self._lock = threading.RLock() if _is_memory_sqlite(engine) else None
        if create_schema:
            self.create_schema()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build from a SQLAlchemy URL: ``sqlite:///path.db``, ``postgresql+psycopg://…``.

        Raises:
            BackendNotFound: The database driver is not installed.
            RepositoryError: The URL is malformed or the database cannot be reached.
        """
        try:
            parsed = make_url(url)
            parsed.port  # noqa: B018  # a malformed port only fails when read
        except (ArgumentError, ValueError):
            # Not the parser's message: it quotes the whole URL, password included.
            raise RepositoryError(f"invalid database URL: {redact_url(url)}") from None
        engine_options = dict(options)
        if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the one we ship
        if parsed.get_backend_name() == "sqlite":
            engine_options.setdefault("connect_args", {})["check_same_thread"] = False
            database = parsed.database or ""
            if database in ("", ":memory:"):
                engine_options.setdefault("poolclass", StaticPool)
            else:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        else:
            engine_options.setdefault("pool_pre_ping", True)
        try:
            engine = create_engine(parsed, **engine_options)
        except (NoSuchModuleError, ImportError) as exc:
            raise BackendNotFound(
                f"no database driver for {parsed.drivername!r}: {exc} "
                "(pip install 'bulkresize[postgres]' for PostgreSQL)"
            ) from None
        if parsed.get_backend_name() == "sqlite":
            _configure_sqlite(engine)
        try:
            return cls(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise RepositoryError(f"cannot open the database: {_describe(exc)}") from None

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        guard = self._lock if self._lock is not None else nullcontext()
        with guard:
            try:
                with self._engine.begin() as connection:
                    yield connection
            except (RequestNotFound, RepositoryError):
                raise
            except SQLAlchemyError as exc:
                raise RepositoryError(f"database error: {_describe(exc)}") from None

    def create_schema(self) -> None:
        """Create missing tables and indexes, and add missing columns. Safe to run concurrently.

        Upgrades only ever add nullable or defaulted columns, so an older process keeps working
        against a newer schema.
        """
        with self._transaction() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:id)"), {"id": _SCHEMA_LOCK_ID}
                )
            self._metadata.create_all(connection, checkfirst=True)
            _add_missing_columns(connection, self._metadata)

    def add_request(self, request: Request, images: Sequence[Image]) -> None:
        """Store the request and its images in one transaction."""
        row = {
            "id": request.id,
            "status": request.status.value,
            "total_images": request.total_images,
            "processed_images": request.processed_images,
            "failed_images": request.failed_images,
            "options": request.options.to_dict(),
            "callback_url": request.callback_url,
            "output_key": request.output_key,
            "owner": request.owner,
            "created_at": request.created_at,
            "updated_at": request.updated_at,
            "webhook_status": WebhookStatus.PENDING.value if request.callback_url else None,
            "webhook_attempts": 0,
        }
        image_rows = [
            {
                "request_id": image.request_id,
                "row": image.row,
                "position": image.position,
                "input_url": image.input_url,
                "source_url": image.source_url,
                "status": image.status.value,
                "output_key": image.output_key,
                "error": image.error,
                "error_message": image.error_message,
                "bytes_in": image.bytes_in,
                "bytes_out": image.bytes_out,
                "updated_at": request.created_at,
            }
            for image in images
        ]
        try:
            with self._transaction() as connection:
                connection.execute(insert(self._requests), row)
                for start in range(0, len(image_rows), 5000):
                    connection.execute(insert(self._images), image_rows[start : start + 5000])
        except RepositoryError as exc:
            if isinstance(exc.__context__, IntegrityError):
                raise RepositoryError(f"request {request.id!r} already exists") from None
            raise

    def get_request(self, request_id: str) -> Request:
        """Return the request; ``RequestNotFound`` if there is none."""
        with self._transaction() as connection:
            row = connection.execute(
                select(self._requests).where(self._requests.c.id == request_id)
            ).first()
        if row is None:
            raise RequestNotFound(f"no request {request_id!r}")
        return self._to_request(row._mapping)

    def list_images(self, request_id: str, *, status: ImageStatus | None = None) -> list[Image]:
        """Return the request's images by row and position, optionally of one status."""
        query = select(self._images).where(self._images.c.request_id == request_id)
        if status is not None:
            query = query.where(self._images.c.status == status.value)
        query = query.order_by(self._images.c.row, self._images.c.position)
        with self._transaction() as connection:
            rows = connection.execute(query).all()
            if not rows:
                self._require_request(connection, request_id)
        return [self._to_image(row._mapping) for row in rows]

    def record_image(
        self, request_id: str, row: int, position: int, outcome: ImageOutcome
    ) -> Request | None:
        """Move a pending image to its outcome and count it, in one transaction."""
        return self.record_images([(request_id, row, position, outcome)])[0]

    def record_images(
        self, records: Sequence[tuple[str, int, int, ImageOutcome]]
    ) -> list[Request | None]:
        """Record many outcomes in one transaction: one statement for the images, one per request.

        Every image moves only from ``pending``, and each request's counters grow by exactly
        the images that moved, in the same transaction.
        """
        if any(outcome.status is ImageStatus.PENDING for *_, outcome in records):
            raise ValueError("an outcome must be done or failed")
        if not records:
            return []
        now = _now()
        with self._transaction() as connection:
            moved = self._move_images(connection, records, now)
            totals: dict[str, list[int]] = {}
            for (request_id, *_rest, outcome), did_move in zip(records, moved, strict=True):
                if did_move:
                    counts = totals.setdefault(request_id, [0, 0])
                    counts[0] += 1
                    counts[1] += outcome.status is ImageStatus.FAILED
            updated: dict[str, Request] = {}
            for request_id, (processed, failed) in totals.items():
                row = connection.execute(
                    self._recording.count,
                    {
                        "b_id": request_id,
                        "b_processed": processed,
                        "b_failed": failed,
                        "b_now": now,
                    },
                ).one()
                updated[request_id] = self._to_request(row._mapping)
        return [
            updated[request_id] if did_move else None
            for (request_id, *_), did_move in zip(records, moved, strict=True)
        ]

    def _move_images(
        self,
        connection: Connection,
        records: Sequence[tuple[str, int, int, ImageOutcome]],
        now: datetime,
    ) -> list[bool]:
        """Move each pending image to its outcome; which ones moved.

        One ``executemany`` when the driver reports its total row count and every image moved
        (the common case); otherwise one statement per image, to know which did.
        """
        images = self._images
        statement = self._recording.move
        parameters = [
            {
                "b_request_id": request_id,
                "b_row": row,
                "b_position": position,
                "b_status": outcome.status.value,
                "b_output_key": outcome.output_key,
                "b_error": outcome.error,
                "b_error_message": outcome.error_message,
                "b_bytes_in": outcome.bytes_in,
                "b_bytes_out": outcome.bytes_out,
                "b_now": now,
            }
            for request_id, row, position, outcome in records
        ]
        distinct = len({(r, row, p) for r, row, p, _ in records}) == len(records)
        if len(records) > 1 and distinct and self._engine.dialect.supports_sane_multi_rowcount:
            try:
                with connection.begin_nested():  # undone as a whole unless every image moved
                    if connection.execute(statement, parameters).rowcount == len(records):
                        return [True] * len(records)
                    raise _NotAllMoved
            except _NotAllMoved:
                pass  # some had moved before (a re-run): find out which, one by one
        moved = []
        for (request_id, row, position, _), params in zip(records, parameters, strict=True):
            if connection.execute(statement, params).rowcount:
                moved.append(True)
                continue
            key = (
                (images.c.request_id == request_id)
                & (images.c.row == row)
                & (images.c.position == position)
            )
            if connection.execute(select(images.c.status).where(key)).first() is None:
                raise RequestNotFound(f"no image {row}-{position} in request {request_id!r}")
            moved.append(False)
        return moved

    def claim_finalization(self, request_id: str, *, lease: float) -> bool:
        """Claim finalization with one conditional update; a lapsed claim can be taken over."""
        requests = self._requests
        now = _now()
        with self._transaction() as connection:
            result = connection.execute(
                update(requests)
                .where(
                    self._complete_but_unfinished(request_id)
                    & (requests.c.finalizing_until.is_(None) | (requests.c.finalizing_until < now))
                )
                .values(finalizing_until=now + timedelta(seconds=lease))
            )
            if result.rowcount == 0:
                self._require_request(connection, request_id)
                return False
            return True

    def finalize_request(
        self, request_id: str, status: RequestStatus, output_key: str | None
    ) -> bool:
        """Move a request with no pending image to a final status, once."""
        if not status.is_final:
            raise ValueError("a request can only be finalized as completed or failed")
        requests = self._requests
        now = _now()
        with self._transaction() as connection:
            result = connection.execute(
                update(requests)
                .where(self._complete_but_unfinished(request_id))
                .values(
                    status=status.value,
                    output_key=output_key,
                    updated_at=now,
                    # The webhook becomes due in the same transaction as the final status.
                    webhook_next_attempt_at=case(
                        (requests.c.callback_url.is_not(None), now), else_=None
                    ),
                )
            )
            if result.rowcount == 0:
                self._require_request(connection, request_id)
                return False
            return True

    def list_unfinished(self, *, limit: int = 1000) -> list[Request]:
        """Requests that are not final yet, oldest first."""
        requests = self._requests
        with self._transaction() as connection:
            rows = connection.execute(
                select(requests)
                .where(requests.c.status.in_(_UNFINISHED))
                .order_by(requests.c.created_at, requests.c.id)
                .limit(limit)
            ).all()
        return [self._to_request(row._mapping) for row in rows]

    def claim_due_webhooks(self, now: datetime, *, lease: float, limit: int = 100) -> list[Request]:
        """Claim due webhooks with a conditional update per request, so each has one owner."""
        requests = self._requests
        due = (
            (requests.c.webhook_status == WebhookStatus.PENDING.value)
            & requests.c.status.in_(_FINAL)
            & (requests.c.webhook_next_attempt_at <= now)
        )
        claimed: list[Request] = []
        with self._transaction() as connection:
            candidates = connection.execute(
                select(requests.c.id)
                .where(due)
                .order_by(requests.c.webhook_next_attempt_at)
                .limit(limit)
            ).all()
            for (request_id,) in candidates:
                row = connection.execute(
                    update(requests)
                    .where(due & (requests.c.id == request_id))
                    .values(webhook_next_attempt_at=now + timedelta(seconds=lease))
                    .returning(*requests.c)
                ).first()
                if row is not None:
                    claimed.append(self._to_request(row._mapping))
        return claimed

    def record_webhook_attempt(
        self,
        request_id: str,
        *,
        delivered: bool,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> Request:
        """Count one attempt; delivered, retry later, or give up."""
        requests = self._requests
        if delivered:
            status, next_at = WebhookStatus.DELIVERED, None
        elif next_attempt_at is None:
            status, next_at = WebhookStatus.FAILED, None
        else:
            status, next_at = WebhookStatus.PENDING, next_attempt_at
        with self._transaction() as connection:
            row = connection.execute(
                update(requests)
                .where(
                    (requests.c.id == request_id)
                    & (requests.c.webhook_status == WebhookStatus.PENDING.value)
                )
                .values(
                    webhook_status=status.value,
                    webhook_attempts=requests.c.webhook_attempts + 1,
                    webhook_next_attempt_at=next_at,
                    webhook_last_error=None if delivered else error,
                )
                .returning(*requests.c)
            ).first()
            if row is None:
                row = connection.execute(
                    select(requests).where(requests.c.id == request_id)
                ).first()
                if row is None:
                    raise RequestNotFound(f"no request {request_id!r}")
        return self._to_request(row._mapping)

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def _complete_but_unfinished(self, request_id: str) -> ColumnElement[bool]:
        """The request, while every image is final but the request itself is not."""
        requests = self._requests
        return (
            (requests.c.id == request_id)
            & requests.c.status.in_(_UNFINISHED)
            & (requests.c.processed_images >= requests.c.total_images)
        )

    def _require_request(self, connection: Connection, request_id: str) -> None:
        found = connection.execute(
            select(self._requests.c.id).where(self._requests.c.id == request_id)
        ).first()
        if found is None:
            raise RequestNotFound(f"no request {request_id!r}")

    @staticmethod
    def _to_request(row: Any) -> Request:
        return Request(
            id=row["id"],
            status=RequestStatus(row["status"]),
            total_images=row["total_images"],
            processed_images=row["processed_images"],
            failed_images=row["failed_images"],
            options=ImageOptions.from_dict(row["options"] or {}),
            created_at=_aware(row["created_at"]),
            updated_at=_aware(row["updated_at"]),
            callback_url=row["callback_url"],
            output_key=row["output_key"],
            owner=row["owner"],
            webhook=_to_webhook(row),
        )

    @staticmethod
    def _to_image(row: Any) -> Image:
        return Image(
            request_id=row["request_id"],
            row=row["row"],
            position=row["position"],
            input_url=row["input_url"],
            source_url=row["source_url"],
            status=ImageStatus(row["status"]),
            output_key=row["output_key"],
            error=row["error"],
            error_message=row["error_message"],
            bytes_in=row["bytes_in"],
            bytes_out=row["bytes_out"],
        )


def _to_webhook(row: Any) -> WebhookState | None:
    if not row["callback_url"]:
        return None
    next_at = row["webhook_next_attempt_at"]
    return WebhookState(
        url=row["callback_url"],
        status=WebhookStatus(row["webhook_status"] or WebhookStatus.PENDING.value),
        attempts=row["webhook_attempts"] or 0,
        next_attempt_at=_aware(next_at) if next_at is not None else None,
        last_error=row["webhook_last_error"],
    )


def _add_missing_columns(connection: Connection, metadata: MetaData) -> None:
    """Add columns that a newer release declares and an older database lacks."""
    inspector = inspect(connection)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            kind = column.type.compile(dialect=connection.dialect)
            server_default = getattr(column.server_default, "arg", None)
            default = f" DEFAULT {server_default}" if server_default is not None else ""
            connection.execute(
                text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}{default}')
            )


def _is_memory_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite" and (engine.url.database or "") in ("", ":memory:")


def _configure_sqlite(engine: Engine) -> None:
    memory = _is_memory_sqlite(engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver, so that BEGIN IMMEDIATE is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A deferred transaction that later writes can fail at once with SQLITE_BUSY;
        # an immediate one waits for the lock (busy_timeout) instead.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class _RecordingStatements:
    """The statements of ``record_images``, built once.

    Building them for every batch cost most of a batch's time: about 0.8 ms of CPU under the
    GIL for a batch of two images, of 1.35 ms in all (docs/performance.md, profile 11).
    """

    def __init__(self, requests: Table, images: Table) -> None:
        #: Move one pending image to its outcome.
        self.move = (
            update(images)
            .where(
                (images.c.request_id == bindparam("b_request_id"))
                & (images.c.row == bindparam("b_row"))
                & (images.c.position == bindparam("b_position"))
                & (images.c.status == ImageStatus.PENDING.value)
            )
            .values(
                status=bindparam("b_status"),
                output_key=bindparam("b_output_key"),
                error=bindparam("b_error"),
                error_message=bindparam("b_error_message"),
                bytes_in=bindparam("b_bytes_in"),
                bytes_out=bindparam("b_bytes_out"),
                updated_at=bindparam("b_now"),
            )
        )
        #: Add a batch's images to one request's counters, and return the request.
        self.count = (
            update(requests)
            .where(requests.c.id == bindparam("b_id"))
            .values(
                processed_images=requests.c.processed_images + bindparam("b_processed"),
                failed_images=requests.c.failed_images + bindparam("b_failed"),
                status=case(
                    (
                        requests.c.status == RequestStatus.PENDING.value,
                        RequestStatus.PROCESSING.value,
                    ),
                    else_=requests.c.status,
                ),
                updated_at=bindparam("b_now"),
            )
            .returning(*requests.c)
        )


class _NotAllMoved(Exception):
    """Control flow inside ``_move_images``: roll the savepoint back. Never escapes."""


def _describe(exc: SQLAlchemyError) -> str:
    # The original DBAPI message, without SQL text or parameters (which may hold URLs).
    original = getattr(exc, "orig", None)
    return f"{type(original or exc).__name__}: {original or exc}".splitlines()[0]
