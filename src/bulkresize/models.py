"""Plain data: requests, images, statuses, options and validation problems.

No framework types live here, so every layer (service, backends, web, CLI) can share them.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, overload

from bulkresize.errors import InvalidOption

__all__ = [
    "FORMATS",
    "Catalogue",
    "CatalogueRow",
    "CatalogueRows",
    "EncodedImage",
    "Image",
    "ImageOptions",
    "ImageOutcome",
    "ImageStatus",
    "Request",
    "RequestStatus",
    "StatusReport",
    "ValidationProblem",
    "WebhookState",
    "WebhookStatus",
]

#: Output formats that ``ImageOptions.format`` accepts.
FORMATS = ("jpeg", "webp", "png", "keep")


class RequestStatus(enum.StrEnum):
    """Where a request is: ``pending`` → ``processing`` → ``completed`` | ``failed``."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        """Whether the request can no longer change."""
        return self in (RequestStatus.COMPLETED, RequestStatus.FAILED)


class WebhookStatus(enum.StrEnum):
    """Where a request's webhook is: ``pending`` → ``delivered`` | ``failed``."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class WebhookState:
    """The delivery record of a request's webhook.

    Attributes:
        url: The ``callback_url``.
        status: ``pending`` until delivered or given up on.
        attempts: Delivery attempts so far.
        next_attempt_at: When the next attempt is due (UTC); ``None`` until the request is
            final, and once delivery has ended.
        last_error: Why the last attempt failed, if it did.
    """

    url: str
    status: WebhookStatus = WebhookStatus.PENDING
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{url, status, attempts}``, as the status document shows it."""
        return {"url": self.url, "status": str(self.status), "attempts": self.attempts}


class ImageStatus(enum.StrEnum):
    """Where one image is: ``pending`` → ``done`` | ``failed``."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """How images are re-encoded. Every field can be set per deployment and per request.

    Attributes:
        quality: Encoder quality, 1 to 95.
        format: ``jpeg``, ``webp``, ``png``, or ``keep`` (re-encode in the input's format).
        max_width: Fit inside this width, never upscale. ``None``: no limit.
        max_height: Fit inside this height, never upscale. ``None``: no limit.
    """

    quality: int = 50
    format: str = "jpeg"
    max_width: int | None = None
    max_height: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.quality, bool) or not isinstance(self.quality, int):
            raise InvalidOption(
                f"quality must be a whole number from 1 to 95, not {self.quality!r}"
            )
        if not 1 <= self.quality <= 95:
            raise InvalidOption(f"quality must be from 1 to 95, not {self.quality}")
        if self.format not in FORMATS:
            raise InvalidOption(f"format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        for name in ("max_width", "max_height"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidOption(f"{name} must be a whole number of at least 1, not {value!r}")

    def with_overrides(self, overrides: Mapping[str, Any]) -> ImageOptions:
        """Return a copy with the given fields replaced, ignoring ``None`` values.

        Strings are converted, so raw form fields and query parameters can be passed as they are.

        Raises:
            InvalidOption: A field is unknown or a value is out of range.
        """
        changes: dict[str, Any] = {}
        known = {f.name for f in dataclasses.fields(self)}
        for name, value in overrides.items():
            if value is None or value == "":
                continue
            if name not in known:
                raise InvalidOption(f"unknown image option {name!r}")
            if name == "format":
                changes[name] = str(value).strip().lower()
            else:
                changes[name] = _parse_int(name, value)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain JSON-able data."""
        # Not dataclasses.asdict(): it deep-copies, and this runs for every image handed on.
        return {name: getattr(self, name) for name in _OPTION_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageOptions:
        """Rebuild options from ``to_dict()`` output."""
        if (
            data.keys() == _OPTION_FIELDS.keys()
            and all(type(data[name]) in kinds for name, kinds in _OPTION_FIELDS.items())
            and data["format"] in FORMATS
        ):
            # Already typed as to_dict() gives them (the usual case, once per image): with
            # nothing to convert, with_overrides() would only repeat what __post_init__ checks.
            return cls(**data)
        return cls().with_overrides(data)


#: ImageOptions' fields and the types that to_dict() gives them.
_OPTION_FIELDS: Final[Mapping[str, tuple[type, ...]]] = {
    "quality": (int,),
    "format": (str,),
    "max_width": (int, type(None)),
    "max_height": (int, type(None)),
}


def _parse_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise InvalidOption(f"{name} must be a whole number, not {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise InvalidOption(f"{name} must be a whole number, not {value!r}") from None


@dataclass(frozen=True, slots=True)
class ValidationProblem:
    """One problem in an input CSV.

    Attributes:
        row: The data row, counted from 1 (the first row under the header); ``None`` for a
            problem with the whole file.
        column: The column's header as written in the file; ``None`` when no column applies.
        value: The offending value, if any.
        message: A complete sentence fragment that names the problem, e.g.
            ``'ftp://x' is not an http(s) URL``.
    """

    row: int | None
    column: str | None
    value: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        prefix = ", ".join(where) if where else "file"
        return f"{prefix}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """The problem as ``{row, column, value, message}``."""
        return {
            "row": self.row,
            "column": self.column,
            "value": self.value,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class CatalogueRow:
    """One data row of a validated CSV.

    Attributes:
        number: The data row number, from 1.
        cells: Every cell of the row, as written, in column order.
        urls: The image URLs of the row, trimmed, with empty entries skipped, in input order.
    """

    number: int
    cells: tuple[str, ...]
    urls: tuple[str, ...]


class CatalogueRows(Sequence[CatalogueRow]):
    """The rows of a catalogue, kept as columns and built as they are read.

    A validator of a 100,000-row file need not build 100,000 row objects (and 100,000 URL
    tuples) before it can answer: each ``CatalogueRow`` is made when it is read. Compares equal
    to any sequence of the same rows, a tuple included. Immutable, like the tuple it stands for.

    Args:
        numbers: Each row's data row number.
        cells: Each row's cells, as written.
        urls: Every row's URLs, one after the other.
        counts: How many of ``urls`` belong to each row.
    """

    __slots__ = ("_cells", "_numbers", "_starts", "_urls")

    def __init__(
        self,
        numbers: Sequence[int],
        cells: Sequence[tuple[str, ...]],
        urls: Sequence[str],
        counts: Sequence[int],
    ) -> None:
        if not len(numbers) == len(cells) == len(counts):
            raise ValueError("numbers, cells and counts must have one entry per row")
        starts = [0, *itertools.accumulate(counts)]
        if starts[-1] != len(urls):
            raise ValueError(f"the counts add up to {starts[-1]}, but there are {len(urls)} URLs")
        self._numbers = numbers
        self._cells = cells
        self._urls = urls
        self._starts = starts

    def __len__(self) -> int:
        return len(self._numbers)

    @overload
    def __getitem__(self, index: int) -> CatalogueRow: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[CatalogueRow, ...]: ...

    def __getitem__(self, index: int | slice) -> CatalogueRow | tuple[CatalogueRow, ...]:
        if isinstance(index, slice):
            return tuple(self[n] for n in range(*index.indices(len(self))))
        n = range(len(self))[index]  # negative indexes, and IndexError past the end
        start, end = self._starts[n], self._starts[n + 1]
        return CatalogueRow(self._numbers[n], self._cells[n], tuple(self._urls[start:end]))

    def __iter__(self) -> Iterator[CatalogueRow]:
        spans = map(slice, self._starts, itertools.islice(self._starts, 1, None))
        return map(
            CatalogueRow, self._numbers, self._cells, map(tuple, map(self._urls.__getitem__, spans))
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(map(operator.eq, self, other))

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"CatalogueRows({tuple(self)!r})"


@dataclass(frozen=True, slots=True)
class Catalogue:
    """A validated CSV: its header, its rows and where the image URLs are.

    Attributes:
        header: The column headers as written in the file.
        url_column: The index of the ``Input Image Urls`` column in ``header``.
        rows: The data rows in file order: a tuple, or ``CatalogueRows`` built as they are read.
    """

    header: tuple[str, ...]
    url_column: int
    rows: Sequence[CatalogueRow]

    @property
    def total_images(self) -> int:
        """How many image URLs the CSV holds in all."""
        return sum(len(row.urls) for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """The catalogue as JSON-able data (the service stores it beside the request)."""
        return {
            "header": list(self.header),
            "url_column": self.url_column,
            "rows": [[row.number, list(row.cells), list(row.urls)] for row in self.rows],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Catalogue:
        """Rebuild a catalogue from ``to_dict()`` output."""
        return cls(
            header=tuple(data["header"]),
            url_column=int(data["url_column"]),
            rows=tuple(
                CatalogueRow(number=int(n), cells=tuple(cells), urls=tuple(urls))
                for n, cells, urls in data["rows"]
            ),
        )


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """The result of re-encoding one image.

    Attributes:
        data: The encoded bytes.
        format: The output format, lower case: ``jpeg``, ``webp``, ``png`` …
        extension: The file extension for the output key, without a dot.
        content_type: The MIME type of ``data``.
        width: Output width in pixels.
        height: Output height in pixels.
    """

    data: bytes
    format: str
    extension: str
    content_type: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class ImageOutcome:
    """What processing one image came to, as the repository records it.

    Attributes:
        status: ``done`` or ``failed``.
        output_key: The storage key of the output, when done.
        error: The error code (``http_status``, ``timeout`` …), when failed.
        error_message: A readable explanation, when failed.
        bytes_in: How many bytes were downloaded.
        bytes_out: How many bytes were stored.
    """

    status: ImageStatus
    output_key: str | None = None
    error: str | None = None
    error_message: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None


@dataclass(frozen=True, slots=True)
class Image:
    """One image of a request, addressed by its row and position.

    Attributes:
        request_id: The request it belongs to.
        row: The data row, from 1.
        position: Its position among the row's URLs, from 1.
        input_url: The URL as written in the CSV.
        source_url: What is fetched: ``input_url``, or a resolved ``file://`` URL for local files.
        status: ``pending``, ``done`` or ``failed``.
        output_key: The storage key of the output, when done.
        error: The error code, when failed.
        error_message: A readable explanation, when failed.
        bytes_in: Bytes downloaded.
        bytes_out: Bytes stored.
    """

    request_id: str
    row: int
    position: int
    input_url: str
    source_url: str
    status: ImageStatus = ImageStatus.PENDING
    output_key: str | None = None
    error: str | None = None
    error_message: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """One uploaded CSV and the state of its processing.

    Attributes:
        id: The request ID.
        status: Where the request is.
        total_images: Every URL in the CSV.
        processed_images: Images in a final state (done or failed).
        failed_images: Images that failed.
        options: How its images are encoded.
        created_at: When it was accepted (UTC).
        updated_at: When it last changed (UTC).
        callback_url: Where the webhook goes, if anywhere.
        output_key: The storage key of the output CSV, once final.
        owner: An opaque owner tag (e.g. a hash of the API key that created it).
        webhook: The webhook delivery record, when the request has a ``callback_url``.
    """

    id: str
    status: RequestStatus
    total_images: int
    processed_images: int
    failed_images: int
    options: ImageOptions
    created_at: datetime
    updated_at: datetime
    callback_url: str | None = None
    output_key: str | None = None
    owner: str | None = None
    webhook: WebhookState | None = None

    @property
    def is_final(self) -> bool:
        """Whether every image reached a final state and the request was finalized."""
        return self.status.is_final


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The status document of a request, as the CLI, the library and the API show it."""

    request_id: str
    status: RequestStatus
    total_images: int
    processed_images: int
    failed_images: int
    created_at: datetime
    updated_at: datetime
    output_csv_url: str | None = None
    webhook: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """The document as JSON-able data, timestamps in ISO 8601."""
        return {
            "request_id": self.request_id,
            "status": str(self.status),
            "total_images": self.total_images,
            "processed_images": self.processed_images,
            "failed_images": self.failed_images,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "output_csv_url": self.output_csv_url,
            "webhook": self.webhook,
        }
