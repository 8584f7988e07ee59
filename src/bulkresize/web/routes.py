"""The route handlers of DESIGN §4. They parse input, call the pipeline, and shape the answer.

Nothing here decides anything about CSVs, images or state: :class:`~bulkresize.service.Pipeline`
does. Errors are raised as :mod:`bulkresize.errors` or Litestar exceptions and turned into the
error shape by :mod:`bulkresize.web.errors`.
"""

from __future__ import annotations

import hashlib
import hmac
import mimetypes
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import anyio
from litestar import HttpMethod, Request, Response, get, post, route
from litestar.datastructures import ResponseHeader, State, UploadFile
from litestar.di import NamedDependency
from litestar.exceptions import (
    ClientException,
    NotAuthorizedException,
    ServiceUnavailableException,
    ValidationException,
)
from litestar.handlers import HTTPRouteHandler
from litestar.params import PathParameter, QueryParameter

from bulkresize.errors import (
    BulkResizeError,
    InvalidOption,
    ObjectNotFound,
    RequestNotFound,
    UploadTooLarge,
)
from bulkresize.models import RequestStatus
from bulkresize.service import Pipeline
from bulkresize.storage.fsspec import check_key
from bulkresize.web.errors import NotReady
from bulkresize.web.schemas import (
    CSV_MEDIA_TYPES,
    FILE_MEDIA_TYPES,
    FileOperation,
    Health,
    ImageEntry,
    JobStatusDocument,
    JobSubmitOperation,
    JobSubmitted,
    Readiness,
    StatusDocument,
    SubmitOperation,
    Submitted,
    error_responses,
)

__all__ = [
    "API_ROUTES",
    "PIPELINE_STATE_KEY",
    "PUBLIC_ROUTES",
    "ROUTE_STATUS",
    "provide_owner",
    "provide_pipeline",
]

#: Where the running pipeline is kept on ``app.state`` between startup and shutdown.
PIPELINE_STATE_KEY = "bulkresize_pipeline"

#: The route name of the status document, for ``request.url_for``.
ROUTE_STATUS = "bulkresize:request-status"

#: IDs the service makes are 32 hex digits; anything far from that is unknown without a lookup.
_REQUEST_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,127}")

#: Seconds a readiness check may take before it counts as failed.
_READY_TIMEOUT = 5.0

_UTF8_CHARSETS = {"utf-8", "utf8", "us-ascii", "ascii"}
_OPTION_FIELDS = ("quality", "format", "max_width", "max_height")

AnyRequest = Request[Any, Any, Any]
T = TypeVar("T")

RequestID = Annotated[str, PathParameter(description="The request ID.")]
StorageKey = Annotated[
    str, PathParameter(description="The storage key, e.g. `{request_id}/1-1.jpg`.")
]

#: The running pipeline, provided by :class:`~bulkresize.web.BulkResizePlugin`.
PipelineDependency = NamedDependency[Pipeline]
#: The caller's API key hash, or ``None`` when API keys are off.
OwnerDependency = NamedDependency[str | None]

# Query options apply to a raw CSV body, and to a multipart form unless a form field overrides.
Quality = Annotated[
    int | None,
    QueryParameter(ge=1, le=95, description="Encoder quality, 1 to 95."),
]
Format = Annotated[
    Literal["jpeg", "webp", "png", "keep"] | None,
    QueryParameter(description="Output format."),
]
MaxWidth = Annotated[int | None, QueryParameter(ge=1, description="Fit inside this width.")]
MaxHeight = Annotated[int | None, QueryParameter(ge=1, description="Fit inside this height.")]
CallbackURL = Annotated[
    str | None,
    QueryParameter(description="Where to POST the webhook when the request is final."),
]


# -- dependencies ------------------------------------------------------------------------------


def provide_pipeline(state: State) -> Pipeline:
    """The running pipeline, put on ``app.state`` by the plugin's lifespan.

    Raises:
        ServiceUnavailableException: The app is not started (or is stopping).
    """
    pipeline = state.get(PIPELINE_STATE_KEY)
    if not isinstance(pipeline, Pipeline):
        raise ServiceUnavailableException("the service is not running")
    return pipeline


def provide_owner(request: AnyRequest, pipeline: PipelineDependency) -> str | None:
    """Who is calling: a hash of the API key, or ``None`` when API keys are off.

    The key comes in ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

    Raises:
        NotAuthorizedException: API keys are on and the key is missing or wrong (401).
    """
    keys = pipeline.settings.api_keys
    if not keys:
        return None
    challenge = {"WWW-Authenticate": 'Bearer realm="bulkresize"'}
    presented = presented_key(request)
    if not presented:
        raise NotAuthorizedException(
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers=challenge,
        )
    owner = owner_of(presented, keys)
    if owner is None:
        raise NotAuthorizedException("wrong API key", headers=challenge)
    return owner


def presented_key(request: AnyRequest) -> str | None:
    """The API key a request carries, from ``X-API-Key`` or ``Authorization: Bearer``."""
    presented = request.headers.get("x-api-key")
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if presented is None and scheme.lower() == "bearer":
        presented = token.strip()
    return presented or None


def owner_of(presented: str, keys: Sequence[str]) -> str | None:
    """``sha256:<hex>`` of the key if it is one of ``keys``, else ``None``.

    Compares against every key, so the time taken does not tell which one nearly matched. The
    hash, never the key, is what is stored and logged.
    """
    given = presented.encode()
    matches = [hmac.compare_digest(given, key.encode()) for key in keys]
    if not any(matches):
        return None
    return "sha256:" + hashlib.sha256(given).hexdigest()


# -- helpers -----------------------------------------------------------------------------------


async def _in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking service code (database, storage, pandas) off the event loop."""
    return await anyio.to_thread.run_sync(partial(function, *args, **kwargs))


def _check_visible(pipeline: Pipeline, request_id: str, owner: str | None) -> None:
    """Raise ``RequestNotFound`` unless the caller may see the request.

    With API keys on, a request is visible only to the key that created it; to anyone else it
    does not exist (404, not 403, so IDs cannot be probed).
    """
    if not _REQUEST_ID.fullmatch(request_id):
        raise RequestNotFound(f"no request {request_id!r}")
    if owner is not None and pipeline.repository.get_request(request_id).owner != owner:
        raise RequestNotFound(f"no request {request_id!r}")


def _bad_field(field: str, message: str) -> ValidationException:
    return ValidationException(detail=message, extra=[{"field": field, "message": message}])


def _checked_options(pipeline: Pipeline, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The image options given, each checked alone so every bad one is named (400)."""
    options: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for name, value in raw.items():
        if value is None or value == "":
            continue
        try:
            pipeline.settings.image_options.with_overrides({name: value})
        except InvalidOption as exc:
            errors.append({"field": name, "value": str(value), "message": str(exc)})
            continue
        options[name] = value
    if errors:
        detail = "; ".join(error["message"] for error in errors)
        raise ValidationException(detail=f"bad image option: {detail}", extra=errors)
    return options


async def _read_body(request: AnyRequest, limit: int) -> bytes:
    """The raw body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    announced = request.content_length
    if announced is not None and announced > limit:
        raise UploadTooLarge(f"the upload is larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge(f"the upload is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_form(
    request: AnyRequest, limit: int, fields: tuple[str, ...]
) -> tuple[bytes, dict[str, str]]:
    """The CSV in the ``file`` part, and the plain ``fields`` given, from a multipart form.

    The route's ``request_max_body_size`` stops an oversized body while it streams; the CSV
    part is then held to ``limit`` exactly.
    """
    form = await request.form()
    try:
        parts = form.getall("file") if "file" in form else []
        if not parts:
            raise _bad_field("file", "the multipart form has no 'file' field (the CSV)")
        if len(parts) > 1:
            raise _bad_field("file", "send one CSV in one 'file' field")
        part = parts[0]
        if isinstance(part, UploadFile):
            data = await part.read(limit + 1)
        else:
            data = str(part).encode()
        if len(data) > limit:
            raise UploadTooLarge(f"the upload is larger than the limit of {limit} bytes")
        values: dict[str, str] = {}
        for name in fields:
            value = form.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise _bad_field(name, "must be a plain form field, not a file")
            values[name] = value.strip()
        return data, values
    finally:
        await form.close()


async def _submit(
    request: AnyRequest,
    pipeline: Pipeline,
    owner: str | None,
    *,
    callback_field: str,
    query: Mapping[str, Any],
    allow_raw: bool,
) -> tuple[str, int, str]:
    """Read the upload, submit it, and return ``(request_id, total_images, status_url)``."""
    limit = pipeline.settings.max_upload_bytes
    media_type, params = request.content_type
    raw_options = {name: query.get(name) for name in _OPTION_FIELDS}
    callback_url: str | None = query.get("callback_url")
    if media_type == "multipart/form-data":
        data, fields = await _read_form(request, limit, (*_OPTION_FIELDS, callback_field))
        raw_options.update({name: fields[name] for name in _OPTION_FIELDS if fields.get(name)})
        callback_url = fields.get(callback_field) or callback_url
    elif allow_raw and media_type in CSV_MEDIA_TYPES:
        charset = params.get("charset", "utf-8").strip().lower()
        if charset not in _UTF8_CHARSETS:
            raise ClientException(f"the CSV must be UTF-8, not {charset!r}", status_code=415)
        data = await _read_body(request, limit)
    else:
        accepted = "multipart/form-data" + (", text/csv or application/csv" if allow_raw else "")
        shown = media_type or "no Content-Type"
        raise ClientException(f"unsupported media type {shown!r}; send {accepted}", status_code=415)
    options = _checked_options(pipeline, raw_options)
    accepted_request = await _in_thread(
        pipeline.submit,
        data,
        options=options,
        callback_url=callback_url or None,
        owner=owner,
    )
    status_url = request.url_for(ROUTE_STATUS, request_id=accepted_request.id)
    return accepted_request.id, accepted_request.total_images, status_url


_LOCATION = [
    ResponseHeader(
        name="Location",
        description="The status document's URL, as in `status_url`.",
        value="https://example.com/v1/requests/{request_id}",  # only its type is documented
        documentation_only=True,
        required=True,
    )
]


# -- the v1 API --------------------------------------------------------------------------------


@post(
    "/v1/requests",
    name="bulkresize:submit",
    status_code=202,
    operation_class=SubmitOperation,
    response_headers=_LOCATION,
    responses=error_responses(400, 401, 413, 415, 422, 503),
    tags=["requests"],
    summary="Upload a CSV",
)
async def submit_request(
    request: AnyRequest,
    pipeline: PipelineDependency,
    owner: OwnerDependency,
    quality: Quality = None,
    format: Format = None,  # the documented option name
    max_width: MaxWidth = None,
    max_height: MaxHeight = None,
    callback_url: CallbackURL = None,
) -> Response[Submitted]:
    """Validate a CSV and queue its images; answers at once with the request ID (202).

    Send a multipart form with the CSV in `file` and the options as form fields, or the CSV
    itself as a `text/csv` body with the options as query parameters. A form field wins over
    a query parameter of the same name.
    """
    query = {
        "quality": quality,
        "format": format,
        "max_width": max_width,
        "max_height": max_height,
        "callback_url": callback_url,
    }
    request_id, total, status_url = await _submit(
        request, pipeline, owner, callback_field="callback_url", query=query, allow_raw=True
    )
    return Response(
        Submitted(
            request_id=request_id,
            status=RequestStatus.PENDING,
            total_images=total,
            status_url=status_url,
        ),
        status_code=202,
        headers={"Location": status_url},
    )


@get(
    "/v1/requests/{request_id:str}",
    name=ROUTE_STATUS,
    sync_to_thread=True,
    responses=error_responses(400, 401, 404, 503),
    tags=["requests"],
    summary="Status of a request",
)
def request_status(
    request_id: RequestID, pipeline: PipelineDependency, owner: OwnerDependency
) -> StatusDocument:
    """The status document: counts, timestamps, the output CSV's URL once final, the webhook."""
    _check_visible(pipeline, request_id, owner)
    return StatusDocument.from_report(pipeline.status(request_id))


@get(
    "/v1/requests/{request_id:str}/images",
    name="bulkresize:request-images",
    sync_to_thread=True,
    responses=error_responses(400, 401, 404, 503),
    tags=["requests"],
    summary="Every image of a request",
)
def request_images(
    request_id: RequestID, pipeline: PipelineDependency, owner: OwnerDependency
) -> list[ImageEntry]:
    """One entry per image, by row and position, with its status, error code and output URL."""
    _check_visible(pipeline, request_id, owner)
    return [
        ImageEntry(
            row=image.row,
            position=image.position,
            input_url=image.input_url,
            output_url=pipeline.output_url(image),
            status=image.status,
            error=image.error,
            error_message=image.error_message,
            bytes_in=image.bytes_in,
            bytes_out=image.bytes_out,
        )
        for image in pipeline.images(request_id)
    ]


@get(
    "/v1/requests/{request_id:str}/output.csv",
    name="bulkresize:request-output",
    media_type="text/csv",
    sync_to_thread=True,
    responses=error_responses(400, 401, 404, 409, 503),
    tags=["requests"],
    summary="The output CSV",
)
def request_output(
    request_id: RequestID, pipeline: PipelineDependency, owner: OwnerDependency
) -> Response[bytes]:
    """The output CSV once the request is final; 409 before then."""
    _check_visible(pipeline, request_id, owner)
    data = pipeline.output_csv(request_id)
    return Response(
        data,
        media_type="text/csv",  # Litestar adds "; charset=utf-8" to text types
        headers={"Content-Disposition": f'attachment; filename="{request_id}-output.csv"'},
    )


# -- compatibility with the original Node service ----------------------------------------------


@post(
    "/jobs",
    name="bulkresize:jobs-submit",
    status_code=202,
    operation_class=JobSubmitOperation,
    response_headers=_LOCATION,
    responses=error_responses(400, 401, 413, 415, 422, 503),
    tags=["compatibility"],
    summary="Upload a CSV (original service)",
)
async def submit_job(
    request: AnyRequest, pipeline: PipelineDependency, owner: OwnerDependency
) -> Response[JobSubmitted]:
    """`POST /v1/requests` for clients of the original service: field `file`, optional `webhook`.

    The answer carries `job_id` (the request ID) besides the fields of `POST /v1/requests`.
    """
    request_id, total, status_url = await _submit(
        request, pipeline, owner, callback_field="webhook", query={}, allow_raw=False
    )
    return Response(
        JobSubmitted(
            job_id=request_id,
            request_id=request_id,
            status=RequestStatus.PENDING,
            total_images=total,
            status_url=status_url,
        ),
        status_code=202,
        headers={"Location": status_url},
    )


@get(
    "/jobs",
    name="bulkresize:jobs-status",
    sync_to_thread=True,
    responses=error_responses(400, 401, 404, 503),
    tags=["compatibility"],
    summary="Status of a job (original service)",
)
def job_status(
    pipeline: PipelineDependency,
    owner: OwnerDependency,
    job_id: Annotated[str, QueryParameter(description="The `job_id` (request ID).")],
) -> JobStatusDocument:
    """The status document plus `job_id`, for clients of the original service."""
    _check_visible(pipeline, job_id, owner)
    return JobStatusDocument.from_report(pipeline.status(job_id))


@route(
    "/jobs",
    http_method=[HttpMethod.OPTIONS],
    name="bulkresize:jobs-options",
    include_in_schema=False,
    status_code=204,
)
async def jobs_options() -> Response[None]:
    """Both methods of ``/jobs``.

    Litestar 2 builds the automatic ``OPTIONS`` answer from the first handler of a path only
    (litestar#4169, fixed in 3), so it would leave ``GET`` out of ``Allow``.
    """
    return Response(None, status_code=204, headers={"Allow": "GET, OPTIONS, POST"})


# -- files and health --------------------------------------------------------------------------


@get(
    "/files/{key:path}",
    name="bulkresize:files",
    sync_to_thread=True,
    operation_class=FileOperation,
    responses=error_responses(400, 404, 503),
    tags=["files"],
    summary="A stored output",
)
def stored_file(key: StorageKey, pipeline: PipelineDependency) -> Response[bytes]:
    """A stored object, when storage is local (the embedded default); 404 otherwise.

    This is where output URLs point when `BULKRESIZE_PUBLIC_URL` is unset under `serve`.
    """
    if urlsplit(pipeline.settings.resolved_storage_url).scheme != "file":
        raise ObjectNotFound("the storage is not local")
    # Litestar hands the path parameter over with its leading slash.
    key = check_key(key.removeprefix("/"))
    data = pipeline.storage.get(key)
    media_type = mimetypes.guess_type(key, strict=False)[0]
    if media_type not in FILE_MEDIA_TYPES:  # never serve active content (HTML, SVG) from here
        media_type = "application/octet-stream"
    return Response(
        data,
        media_type=media_type,
        headers={"X-Content-Type-Options": "nosniff"},
    )


@get("/healthz", name="bulkresize:healthz", tags=["health"], summary="Liveness")
async def healthz() -> Health:
    """Answers 200 while the process serves requests."""
    return Health()


@get(
    "/readyz",
    name="bulkresize:readyz",
    responses=error_responses(503),
    tags=["health"],
    summary="Readiness",
)
async def readyz(pipeline: PipelineDependency) -> Readiness:
    """Asks every backend (repository, storage, queue); 200 if all answer, else 503."""
    probes: dict[str, Callable[[], object]] = {
        "repository": partial(pipeline.repository.list_unfinished, limit=1),
        "storage": partial(pipeline.storage.exists, "readyz-probe"),
        "queue": partial(pipeline.queue.is_pending, "readyz-probe"),
    }
    checks: dict[str, str] = {}
    failures: list[dict[str, Any]] = []
    for name, probe in probes.items():
        message = await _probe(probe)
        checks[name] = "ok" if message is None else "error"
        if message is not None:
            failures.append({"check": name, "message": message})
    if failures:
        names = ", ".join(failure["check"] for failure in failures)
        raise NotReady(detail=f"not ready: {names}", extra=failures)
    return Readiness(status="ok", checks=checks)


async def _probe(probe: Callable[[], object]) -> str | None:
    """``None`` if the probe answers in time, else why not (no internals beyond our errors)."""
    try:
        with anyio.fail_after(_READY_TIMEOUT):
            await anyio.to_thread.run_sync(probe, abandon_on_cancel=True)
    except TimeoutError:
        return f"no answer within {_READY_TIMEOUT:g} s"
    except BulkResizeError as exc:
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a plug-in's own error still only makes the check fail
        return type(exc).__name__
    return None


#: Routes that need the ``owner`` dependency (and an API key when keys are configured).
API_ROUTES: tuple[HTTPRouteHandler, ...] = (
    submit_request,
    request_status,
    request_images,
    request_output,
    jobs_options,  # first: see its docstring
    submit_job,
    job_status,
)

#: Routes open to everyone: stored outputs (their URLs go into CSVs) and health checks.
PUBLIC_ROUTES: tuple[HTTPRouteHandler, ...] = (stored_file, healthz, readyz)
