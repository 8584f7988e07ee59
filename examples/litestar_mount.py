"""Mount bulkresize under ``/bulk`` in a Litestar app of your own.

The app keeps its own routes (``GET /hello``) and adds the whole bulkresize HTTP API with
``BulkResizePlugin(settings, path="/bulk")``: ``POST /bulk/v1/requests``,
``GET /bulk/v1/requests/{id}``, ``GET /bulk/files/…`` and so on. The plug-in registers the running
pipeline as the ``pipeline`` dependency, so the app's own handlers can use it too
(``GET /stats``).

Run it (needs ``pip install 'bulkresize[server]'``)::

    $ python examples/litestar_mount.py          # http://127.0.0.1:8000
    $ curl http://127.0.0.1:8000/hello
    $ curl http://127.0.0.1:8000/stats
    $ curl -F file=@examples/products.csv http://127.0.0.1:8000/bulk/v1/requests

or import it: ``build_app(settings)`` returns the Litestar app.
"""

from __future__ import annotations

import argparse
import dataclasses

from litestar import Litestar, get
from litestar.di import NamedDependency

from bulkresize import Pipeline, Settings
from bulkresize.web import BulkResizePlugin

PREFIX = "/bulk"


@get("/hello", sync_to_thread=False)
def hello() -> dict[str, str]:
    """The app's own route, untouched by the plug-in."""
    return {"message": "hello from my app"}


@get("/stats", sync_to_thread=True)
def stats(pipeline: NamedDependency[Pipeline]) -> dict[str, int]:
    """The app's own handler over bulkresize's pipeline: how many requests are unfinished."""
    return {"unfinished_requests": len(pipeline.repository.list_unfinished(limit=1000))}


def build_app(settings: Settings | None = None) -> Litestar:
    """The user's app with bulkresize mounted under ``/bulk``.

    Args:
        settings: The bulkresize deployment; default ``Settings.from_env()``.
    """
    if settings is None:
        settings = Settings.from_env()
    return Litestar(
        route_handlers=[hello, stats],
        plugins=[BulkResizePlugin(settings, path=PREFIX)],
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    settings = Settings.from_env()
    if settings.public_url is None and settings.storage_url is None:
        # Serve stored outputs through the mounted /bulk/files route, as `bulkresize serve` does.
        public_url = f"http://{args.host}:{args.port}{PREFIX}/files"
        settings = dataclasses.replace(settings, public_url=public_url)
    uvicorn.run(build_app(settings), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
