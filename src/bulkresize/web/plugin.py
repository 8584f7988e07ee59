"""The Litestar plug-in: the pipeline as a dependency, its lifespan, and the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
from litestar import Router
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins import InitPlugin

from bulkresize.service import Pipeline
from bulkresize.settings import Settings, parse_rate_limit
from bulkresize.web.errors import exception_handlers
from bulkresize.web.routes import (
    API_ROUTES,
    PIPELINE_STATE_KEY,
    PUBLIC_ROUTES,
    AnyRequest,
    owner_of,
    presented_key,
    provide_owner,
    provide_pipeline,
)

if TYPE_CHECKING:
    from litestar import Litestar

    from bulkresize.queues.base import Queue
    from bulkresize.repositories.base import Repository
    from bulkresize.storage.base import Storage

__all__ = ["MULTIPART_MARGIN", "BulkResizePlugin"]

#: Bytes allowed over ``max_upload_bytes`` for a whole request body: multipart boundaries,
#: part headers and the option fields. The CSV part itself is held to the limit exactly.
MULTIPART_MARGIN = 64 * 1024

_SECURITY_SCHEMES = {
    "bearerAuth": SecurityScheme(type="http", scheme="bearer", description="An API key."),
    "apiKeyHeader": SecurityScheme(
        type="apiKey", name="X-API-Key", security_scheme_in="header", description="An API key."
    ),
}


class BulkResizePlugin(InitPlugin):
    """Adds bulkresize to a Litestar app: the HTTP API of DESIGN §4 over one :class:`Pipeline`.

    On startup it builds the pipeline with :meth:`Pipeline.from_settings` and starts it (with
    the embedded ``local://`` queue the same process then does the work, and resumes
    unfinished requests); on shutdown it closes it, which releases every backend. Handlers get
    the pipeline as the ``pipeline`` dependency, so an app's own handlers can use it too.

    Use it through :func:`bulkresize.web.create_app`, or add it to an app of your own::

        app = Litestar(plugins=[BulkResizePlugin(settings, path="/bulk")])

    One plug-in per app: it owns the ``pipeline`` dependency and the route names.

    Args:
        settings: The deployment; default ``Settings.from_env()`` (or ``pipeline.settings``).
        storage: A ready storage backend instead of the configured one.
        queue: A ready queue instead of the configured one.
        repository: A ready repository instead of the configured one.
        pipeline: A ready, not yet started pipeline instead of building one. The plug-in
            starts it on startup and closes it on shutdown. The CLI uses this to report a
            backend that is not installed before the server starts.
        path: A path prefix for every route (``/files`` becomes ``{path}/files``).

    Raises:
        ValueError: ``pipeline`` is given together with a backend.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        storage: Storage | None = None,
        queue: Queue | None = None,
        repository: Repository | None = None,
        pipeline: Pipeline | None = None,
        path: str = "/",
    ) -> None:
        if pipeline is not None and any(
            backend is not None for backend in (storage, queue, repository)
        ):
            raise ValueError("pass either a ready pipeline or backends, not both")
        if settings is None:
            settings = pipeline.settings if pipeline is not None else Settings.from_env()
        self.settings = settings
        self.path = path
        self._storage = storage
        self._queue = queue
        self._repository = repository
        self._pipeline = pipeline

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Register the dependency, the lifespan and the routes on the app being built."""
        app_config.dependencies["pipeline"] = Provide(provide_pipeline, sync_to_thread=False)
        app_config.lifespan.append(self._lifespan)
        handlers = exception_handlers(upload_limit=self.settings.max_upload_bytes)
        secured = bool(self.settings.api_keys)
        api = Router(
            path=self.path,
            route_handlers=list(API_ROUTES),
            middleware=self._rate_limit(),
            dependencies={"owner": Provide(provide_owner, sync_to_thread=False)},
            exception_handlers=handlers,
            # Litestar stops a larger body while it streams, before it is read.
            request_max_body_size=self.settings.max_upload_bytes + MULTIPART_MARGIN,
            security=[{name: []} for name in _SECURITY_SCHEMES] if secured else None,
        )
        public = Router(
            path=self.path,
            route_handlers=list(PUBLIC_ROUTES),
            exception_handlers=handlers,
            request_max_body_size=MULTIPART_MARGIN,
        )
        app_config.route_handlers.extend([api, public])
        if secured and app_config.openapi_config is not None:
            config = app_config.openapi_config
            existing = (
                config.components if isinstance(config.components, list) else [config.components]
            )
            config.components = [*existing, Components(security_schemes=dict(_SECURITY_SCHEMES))]
        return app_config

    def _rate_limit(self) -> list[DefineMiddleware]:
        """Litestar's rate limiter on the API routes, per caller, when a limit is set.

        The caller is the hash of a valid API key, else the client address, so a wrong key
        spends its address's allowance, not a real key's. Counts live in the app's
        ``rate_limit`` store, in memory by default: one count per API process.
        """
        if self.settings.rate_limit is None:
            return []
        keys = self.settings.api_keys

        def caller(request: AnyRequest) -> str:
            presented = presented_key(request) if keys else None
            owner = owner_of(presented, keys) if presented else None
            if owner is not None:
                return owner
            return f"address:{request.client.host if request.client else 'unknown'}"

        config = RateLimitConfig(
            rate_limit=parse_rate_limit(self.settings.rate_limit),  # type: ignore[arg-type]
            identifier_for_request=caller,
        )
        return [config.middleware]

    @asynccontextmanager
    async def _lifespan(self, app: Litestar) -> AsyncIterator[None]:
        pipeline = self._pipeline
        self._pipeline = None  # a given pipeline is closed on shutdown: it serves one run
        if pipeline is None:
            pipeline = await anyio.to_thread.run_sync(self._build)
        try:
            await anyio.to_thread.run_sync(pipeline.start)
            app.state[PIPELINE_STATE_KEY] = pipeline
            yield
        finally:
            app.state.pop(PIPELINE_STATE_KEY, None)
            await anyio.to_thread.run_sync(pipeline.close)

    def _build(self) -> Pipeline:
        return Pipeline.from_settings(
            self.settings,
            storage=self._storage,
            queue=self._queue,
            repository=self._repository,
        )
