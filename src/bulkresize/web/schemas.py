"""What the HTTP API answers, as msgspec structs, and the OpenAPI pieces Litestar cannot infer.

The structs are the documented shapes of DESIGN §4; handlers build them from the service's plain
data, so the OpenAPI document and the real answers come from the same definitions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import msgspec
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
)

from bulkresize.models import FORMATS, ImageStatus, RequestStatus, StatusReport, WebhookStatus

__all__ = [
    "CSV_MEDIA_TYPES",
    "FILE_MEDIA_TYPES",
    "ErrorBody",
    "FileOperation",
    "Health",
    "ImageEntry",
    "JobStatusDocument",
    "JobSubmitOperation",
    "JobSubmitted",
    "Readiness",
    "StatusDocument",
    "SubmitOperation",
    "Submitted",
    "WebhookDocument",
    "error_responses",
]

#: Content types of a raw CSV body (``POST /v1/requests`` without multipart).
CSV_MEDIA_TYPES = ("text/csv", "application/csv")

#: Content types that ``GET /files/{key}`` answers with, by the stored object's extension.
FILE_MEDIA_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "text/csv",
    "application/json",
    "application/octet-stream",
)


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """Every error answer: ``{"status_code", "detail", "errors"?}``.

    Attributes:
        status_code: The HTTP status, repeated in the body.
        detail: What went wrong, in one sentence.
        errors: Itemised problems, when there are several: ``{row, column, value, message}``
            for an invalid CSV (422), ``{field, value?, source?, message}`` for a bad field (400,
            422), ``{check, message}`` for a failed readiness check (503).
    """

    status_code: int
    detail: str
    errors: list[dict[str, Any]] | msgspec.UnsetType = msgspec.UNSET


class Submitted(msgspec.Struct):
    """The answer to an accepted upload (202).

    Attributes:
        request_id: The new request's ID.
        status: Always ``pending``.
        total_images: Every image URL in the CSV.
        status_url: The absolute URL of the status document.
    """

    request_id: str
    status: RequestStatus
    total_images: int
    status_url: str


class JobSubmitted(msgspec.Struct):
    """The answer of the compatibility route ``POST /jobs``: ``job_id`` plus :class:`Submitted`.

    Attributes:
        job_id: The request ID, under the name the original service used.
        request_id: The request ID.
        status: Always ``pending``.
        total_images: Every image URL in the CSV.
        status_url: The absolute URL of the status document.
    """

    job_id: str
    request_id: str
    status: RequestStatus
    total_images: int
    status_url: str


class WebhookDocument(msgspec.Struct):
    """Where the webhook of a request is.

    Attributes:
        url: The ``callback_url``.
        status: ``pending`` until delivered or given up on: ``delivered`` or ``failed``.
        attempts: Delivery attempts so far.
    """

    url: str
    status: WebhookStatus
    attempts: int


class StatusDocument(msgspec.Struct):
    """The status document of a request (``GET /v1/requests/{request_id}``)."""

    request_id: str
    status: RequestStatus
    total_images: int
    processed_images: int
    failed_images: int
    created_at: datetime
    updated_at: datetime
    output_csv_url: str | None
    webhook: WebhookDocument | None

    @classmethod
    def from_report(cls, report: StatusReport) -> StatusDocument:
        """Build the document from the service's :class:`~bulkresize.models.StatusReport`."""
        return cls(**_report_fields(report))


class JobStatusDocument(msgspec.Struct):
    """The status document plus ``job_id`` (``GET /jobs?job_id=…``)."""

    job_id: str
    request_id: str
    status: RequestStatus
    total_images: int
    processed_images: int
    failed_images: int
    created_at: datetime
    updated_at: datetime
    output_csv_url: str | None
    webhook: WebhookDocument | None

    @classmethod
    def from_report(cls, report: StatusReport) -> JobStatusDocument:
        """Build the document from the service's :class:`~bulkresize.models.StatusReport`."""
        return cls(job_id=report.request_id, **_report_fields(report))


def _report_fields(report: StatusReport) -> dict[str, Any]:
    webhook = None
    if report.webhook is not None:
        webhook = WebhookDocument(
            url=str(report.webhook["url"]),
            status=WebhookStatus(report.webhook["status"]),
            attempts=int(report.webhook["attempts"]),
        )
    return {
        "request_id": report.request_id,
        "status": report.status,
        "total_images": report.total_images,
        "processed_images": report.processed_images,
        "failed_images": report.failed_images,
        "created_at": report.created_at,
        "updated_at": report.updated_at,
        "output_csv_url": report.output_csv_url,
        "webhook": webhook,
    }


class ImageEntry(msgspec.Struct):
    """One image of a request (``GET /v1/requests/{request_id}/images``).

    Attributes:
        row: The data row, from 1.
        position: Its position among the row's URLs, from 1.
        input_url: The URL as written in the CSV.
        output_url: Where the output is, once ``done``.
        status: ``pending``, ``done`` or ``failed``.
        error: The error code, once ``failed`` (``http_status``, ``timeout`` …).
        error_message: A readable explanation of ``error``.
        bytes_in: Bytes downloaded.
        bytes_out: Bytes stored.
    """

    row: int
    position: int
    input_url: str
    output_url: str | None
    status: ImageStatus
    error: str | None
    error_message: str | None
    bytes_in: int | None
    bytes_out: int | None


class Health(msgspec.Struct):
    """The liveness answer: ``{"status": "ok"}``."""

    status: Literal["ok"] = "ok"


class Readiness(msgspec.Struct):
    """The readiness answer when every backend answers.

    Attributes:
        status: ``ok``.
        checks: Each backend (``repository``, ``storage``, ``queue``) and ``ok``.
    """

    status: Literal["ok"]
    checks: dict[str, str]


_ERROR_DESCRIPTIONS = {
    400: "Bad request: a bad option, a malformed parameter, a missing `file` field.",
    401: "Missing or wrong API key (only when `BULKRESIZE_API_KEYS` is set).",
    404: "Not found (unknown request ID, route or stored object).",
    409: "The request is not final yet, so it has no output CSV.",
    413: "The upload is larger than `BULKRESIZE_MAX_UPLOAD_BYTES`.",
    415: "The body is neither `multipart/form-data` nor a UTF-8 CSV.",
    422: "The CSV is invalid (`errors` lists every problem), or the `callback_url` is refused.",
    503: "A backend (database, storage, queue) is unavailable; try again.",
}


def error_responses(*status_codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI response specs in the error shape, for the given status codes."""
    return {
        code: ResponseSpec(
            data_container=ErrorBody,
            description=_ERROR_DESCRIPTIONS[code],
            generate_examples=False,
        )
        for code in status_codes
    }


def _option_properties() -> dict[str, Schema]:
    return {
        "quality": Schema(
            type=OpenAPIType.INTEGER,
            minimum=1,
            maximum=95,
            description="Encoder quality, 1 to 95; default `BULKRESIZE_QUALITY` (50).",
        ),
        "format": Schema(
            type=OpenAPIType.STRING,
            enum=list(FORMATS),
            description="Output format; default `BULKRESIZE_FORMAT` (`jpeg`).",
        ),
        "max_width": Schema(
            type=OpenAPIType.INTEGER, minimum=1, description="Fit inside this width."
        ),
        "max_height": Schema(
            type=OpenAPIType.INTEGER, minimum=1, description="Fit inside this height."
        ),
    }


def _form_schema(callback_field: str) -> Schema:
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["file"],
        properties={
            "file": Schema(
                type=OpenAPIType.STRING,
                format=OpenAPIFormat.BINARY,
                description="The CSV (UTF-8).",
            ),
            callback_field: Schema(
                type=OpenAPIType.STRING,
                format=OpenAPIFormat.URI,
                description="Where to POST the webhook when the request is final.",
            ),
            **_option_properties(),
        },
    )


_CSV_BODY = OpenAPIMediaType(
    schema=Schema(type=OpenAPIType.STRING, description="The CSV itself, UTF-8."),
)


def _without_null(schema: Schema | Reference) -> Schema | Reference:
    """An optional query parameter's schema without its ``null``: a query cannot carry one."""
    if not isinstance(schema, Schema):
        return schema
    if schema.one_of:
        kept = [item for item in schema.one_of if not _is_null(item)]
        if len(kept) == 1 and isinstance(kept[0], Schema):
            return dataclasses.replace(
                schema, one_of=None, type=kept[0].type, format=kept[0].format or schema.format
            )
    if isinstance(schema.type, Sequence) and not isinstance(schema.type, str):
        types = [item for item in schema.type if item != OpenAPIType.NULL]
        enum = [value for value in schema.enum or () if value is not None] or None
        return dataclasses.replace(schema, type=types[0] if len(types) == 1 else types, enum=enum)
    return schema


def _is_null(schema: Schema | Reference) -> bool:
    return isinstance(schema, Schema) and schema.type == OpenAPIType.NULL


@dataclass
class SubmitOperation(Operation):
    """``POST /v1/requests``: a multipart form or a raw CSV body, which Litestar cannot infer."""

    def __post_init__(self) -> None:
        for parameter in self.parameters or ():
            if isinstance(parameter, Parameter) and parameter.schema is not None:
                parameter.schema = _without_null(parameter.schema)
        self.request_body = RequestBody(
            required=True,
            description=(
                "Either a multipart form with the CSV in `file`, or the CSV itself as the body "
                "(`text/csv` or `application/csv`) with the options as query parameters."
            ),
            content={
                "multipart/form-data": OpenAPIMediaType(schema=_form_schema("callback_url")),
                **dict.fromkeys(CSV_MEDIA_TYPES, _CSV_BODY),
            },
        )


@dataclass
class JobSubmitOperation(Operation):
    """``POST /jobs``: the original service's multipart form."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description="A multipart form: the CSV in `file`, the callback URL in `webhook`.",
            content={"multipart/form-data": OpenAPIMediaType(schema=_form_schema("webhook"))},
        )


@dataclass
class FileOperation(Operation):
    """``GET /files/{key}``: the content type follows the stored object's extension."""

    def __post_init__(self) -> None:
        binary = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
        self.responses = {
            **(self.responses or {}),
            "200": OpenAPIResponse(
                description="The stored object.",
                content={
                    media_type: OpenAPIMediaType(schema=binary) for media_type in FILE_MEDIA_TYPES
                },
            ),
        }
