"""Every error answer in one shape: ``{"status_code", "detail", "errors"?}`` (DESIGN §4).

The service raises :mod:`bulkresize.errors`; Litestar raises its own HTTP exceptions (unknown
route, wrong method, malformed parameter, body too large). Both become the same JSON shape here,
and anything unexpected becomes a 500 that names nothing internal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from bulkresize.errors import (
    BackendError,
    BulkResizeError,
    InvalidCallbackURL,
    InvalidKey,
    InvalidOption,
    ObjectNotFound,
    RequestNotFinal,
    RequestNotFound,
    UploadTooLarge,
    ValidationFailed,
)

__all__ = ["NotReady", "error_response", "exception_handlers", "status_for"]

logger = logging.getLogger("bulkresize.web")

#: The HTTP status of each service error; the first match in the error's MRO wins.
_STATUS: tuple[tuple[type[BulkResizeError], int], ...] = (
    (ValidationFailed, 422),
    (InvalidCallbackURL, 422),
    (UploadTooLarge, 413),
    (InvalidOption, 400),
    (RequestNotFound, 404),
    (RequestNotFinal, 409),
    (ObjectNotFound, 404),
    (InvalidKey, 404),
    (BackendError, 503),
)

AnyRequest = Request[Any, Any, Any]


class NotReady(HTTPException):
    """A readiness check failed (503); ``extra`` lists each failed check."""

    status_code = 503


def status_for(exc: BulkResizeError) -> int:
    """The HTTP status for a service error: 500 for one that input cannot cause."""
    for error_type, status in _STATUS:
        if isinstance(exc, error_type):
            return status
    return 500


def error_response(
    status_code: int,
    detail: str,
    errors: Sequence[Mapping[str, Any]] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> Response[dict[str, Any]]:
    """A JSON answer in the error shape."""
    body: dict[str, Any] = {"status_code": status_code, "detail": detail}
    if errors is not None:
        body["errors"] = [dict(error) for error in errors]
    return Response(
        content=body,
        status_code=status_code,
        headers=dict(headers) if headers else None,
        media_type="application/json",
    )


def _service_error(request: AnyRequest, exc: BulkResizeError) -> Response[dict[str, Any]]:
    status = status_for(exc)
    if isinstance(exc, ValidationFailed):
        count = len(exc.problems)
        return error_response(
            status,
            f"the CSV is invalid: {count} problem{'s' if count != 1 else ''}",
            [problem.to_dict() for problem in exc.problems],
        )
    if isinstance(exc, InvalidCallbackURL):
        return error_response(
            status,
            str(exc),
            [{"field": "callback_url", "value": exc.url, "message": str(exc)}],
        )
    if isinstance(exc, (ObjectNotFound, InvalidKey)):
        # Never echo a refused key: it may be an attack string, and the answer says enough.
        return error_response(status, "Not Found")
    if isinstance(exc, BackendError):
        logger.warning("backend error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(
            status, "a backend is unavailable; try again later", headers={"Retry-After": "5"}
        )
    if status == 500:
        logger.error(
            "unexpected %s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc
        )
        return error_response(500, HTTPStatus.INTERNAL_SERVER_ERROR.phrase)
    return error_response(status, str(exc))


def _http_error(upload_limit: int | None) -> Callable[[AnyRequest, HTTPException], Response[Any]]:
    def handle(request: AnyRequest, exc: HTTPException) -> Response[dict[str, Any]]:
        status = exc.status_code
        if status >= 500 and not isinstance(exc, NotReady):
            if status == 500:
                logger.error(
                    "internal error on %s %s: %s", request.method, request.url.path, exc.detail
                )
            # Litestar's 5xx details can name internals; the phrase says enough.
            return error_response(status, _phrase(status), headers=exc.headers)
        detail = exc.detail
        errors = _itemise(exc.extra)
        if status == 413 and upload_limit is not None:
            detail = f"the upload is larger than the limit of {upload_limit} bytes"
        elif errors and detail.startswith("Validation failed for "):
            # Litestar's own detail repeats the URL; name the parameters instead.
            detail = "; ".join(_describe(error) for error in errors)
        return error_response(status, detail, errors, headers=exc.headers)

    return handle


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Server Error"


def _itemise(extra: Mapping[str, Any] | Sequence[Any] | None) -> list[dict[str, Any]] | None:
    """Litestar's ``extra`` as ``errors`` items: ``{field, source, message}`` and the like."""
    if not extra:
        return None
    if isinstance(extra, Mapping):
        return [dict(extra)]
    items: list[dict[str, Any]] = []
    for entry in extra:
        if not isinstance(entry, Mapping):
            items.append({"message": str(entry)})
            continue
        item = dict(entry)
        if "key" in item and "field" not in item:  # Litestar's parameter errors name a "key"
            item["field"] = item.pop("key")
        if "source" in item:  # an enum in Litestar's errors
            item["source"] = str(getattr(item["source"], "value", item["source"]))
        items.append(item)
    return items


def _describe(error: Mapping[str, Any]) -> str:
    where = f"{error['source']} parameter" if error.get("source") else "parameter"
    field = error.get("field")
    named = f"{where} {field!r}" if field else where
    return f"invalid {named}: {error.get('message', 'invalid value')}"


def _unexpected(request: AnyRequest, exc: Exception) -> Response[dict[str, Any]]:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, HTTPStatus.INTERNAL_SERVER_ERROR.phrase)


def exception_handlers(*, upload_limit: int | None = None) -> ExceptionHandlersMap:
    """The exception handlers that give every error answer the shape of DESIGN §4.

    Args:
        upload_limit: ``max_upload_bytes``, named in the detail of a 413.
    """
    return {
        BulkResizeError: _service_error,
        HTTPException: _http_error(upload_limit),
        Exception: _unexpected,
    }
