"""``create_app``: the bulkresize HTTP service as a Litestar app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Tag

from bulkresize.__about__ import __version__
from bulkresize.settings import Settings
from bulkresize.web.errors import exception_handlers
from bulkresize.web.plugin import BulkResizePlugin

if TYPE_CHECKING:
    from bulkresize.queues.base import Queue
    from bulkresize.repositories.base import Repository
    from bulkresize.service import Pipeline
    from bulkresize.storage.base import Storage

__all__ = ["create_app"]

_DESCRIPTION = (
    "Upload a CSV of products with image URLs; every image is downloaded, re-encoded and "
    "stored in the background, and an output CSV lists the new URLs. Every error answer has "
    'the shape `{"status_code", "detail", "errors"?}`.'
)


def create_app(
    settings: Settings | None = None,
    *,
    storage: Storage | None = None,
    queue: Queue | None = None,
    repository: Repository | None = None,
    pipeline: Pipeline | None = None,
) -> Litestar:
    """Build the HTTP service: the routes of DESIGN §4 over one pipeline.

    Nothing is opened here: the plug-in builds and starts the pipeline when the app starts
    (``uvicorn``, ``TestClient``) and closes it when the app stops.

    Args:
        settings: The deployment; default ``Settings.from_env()``.
        storage: A ready storage backend instead of the configured one.
        queue: A ready queue instead of the configured one.
        repository: A ready repository instead of the configured one.
        pipeline: A ready, not yet started pipeline instead of building one (then no backend
            may be given).

    Returns:
        The Litestar app, with its OpenAPI document at ``/schema/openapi.json``.

    Raises:
        ConfigurationError: ``settings`` is None and a ``BULKRESIZE_*`` variable is malformed.
        ValueError: ``pipeline`` is given together with a backend.
    """
    plugin = BulkResizePlugin(
        settings, storage=storage, queue=queue, repository=repository, pipeline=pipeline
    )
    return Litestar(
        plugins=[plugin],
        # The plug-in shapes errors on its own routes; these do it for the app's own answers
        # (unknown route 404, wrong method 405) so that every error has one shape.
        exception_handlers=exception_handlers(upload_limit=plugin.settings.max_upload_bytes),
        openapi_config=OpenAPIConfig(
            title="bulkresize",
            version=__version__,
            description=_DESCRIPTION,
            path="/schema",
            use_handler_docstrings=True,
            tags=[
                Tag(name="requests", description="Upload CSVs and follow their processing."),
                Tag(name="files", description="Stored outputs, when storage is local."),
                Tag(name="health", description="Liveness and readiness."),
                Tag(name="compatibility", description="The original Node service's routes."),
            ],
        ),
    )
