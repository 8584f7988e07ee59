"""bulkresize: bulk image compression from a CSV of product image URLs.

The library first: :func:`process_csv` runs the whole pipeline on one CSV;
:class:`Pipeline` is the service that the CLI, the HTTP app and the workers share. Every backend
sits behind a small port (:class:`Storage`, :class:`Queue`, :class:`Repository`,
:class:`Validator`, :class:`ImageEngine`) and is chosen by URL scheme.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bulkresize import errors
from bulkresize.__about__ import __version__
from bulkresize.models import (
    Image,
    ImageOptions,
    ImageStatus,
    Request,
    RequestStatus,
    StatusReport,
    ValidationProblem,
)
from bulkresize.settings import Settings

if TYPE_CHECKING:
    from bulkresize.engines.base import ImageEngine
    from bulkresize.queues.base import Job, Queue
    from bulkresize.repositories.base import Repository
    from bulkresize.service import Pipeline, process_csv
    from bulkresize.storage.base import Storage
    from bulkresize.validation.base import Validator

__all__ = [
    "Image",
    "ImageEngine",
    "ImageOptions",
    "ImageStatus",
    "Job",
    "Pipeline",
    "Queue",
    "Repository",
    "Request",
    "RequestStatus",
    "Settings",
    "StatusReport",
    "Storage",
    "ValidationProblem",
    "Validator",
    "__version__",
    "errors",
    "process_csv",
]

# Heavier names load on first use, so `import bulkresize` stays cheap and side-effect free.
_LAZY = {
    "Pipeline": "bulkresize.service",
    "process_csv": "bulkresize.service",
    "Storage": "bulkresize.storage.base",
    "Queue": "bulkresize.queues.base",
    "Job": "bulkresize.queues.base",
    "Repository": "bulkresize.repositories.base",
    "Validator": "bulkresize.validation.base",
    "ImageEngine": "bulkresize.engines.base",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bulkresize' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
