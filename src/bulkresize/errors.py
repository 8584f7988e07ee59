"""The exceptions of bulkresize.

Every backend catches its own library's exceptions and raises one of these, so callers never
need to import redis, botocore, SQLAlchemy or Pillow to handle an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from bulkresize.models import ValidationProblem

__all__ = [
    "BackendError",
    "BackendNotFound",
    "BlockedURL",
    "BulkResizeError",
    "ConfigurationError",
    "DecodeError",
    "DownloadError",
    "FetchTimeout",
    "HTTPStatusError",
    "ImageError",
    "ImageTooLarge",
    "InvalidCallbackURL",
    "InvalidKey",
    "InvalidOption",
    "NotAnImage",
    "ObjectNotFound",
    "ProcessingTimeout",
    "QueueError",
    "RepositoryError",
    "RequestNotFinal",
    "RequestNotFound",
    "StorageError",
    "TooManyPixels",
    "UploadTooLarge",
    "ValidationFailed",
]


class BulkResizeError(Exception):
    """The base of every error that bulkresize raises on purpose."""


class ConfigurationError(BulkResizeError):
    """A setting or option is malformed or names something that does not exist."""


class BackendNotFound(ConfigurationError):
    """No backend is registered for a URL scheme, or the backend's package is not installed."""


class InvalidOption(BulkResizeError):
    """An image option (quality, format, max_width, max_height) is out of range."""


class BackendError(BulkResizeError):
    """A backend failed to do its work (I/O, connection, server error). Often transient."""


class StorageError(BackendError):
    """The storage backend failed."""


class ObjectNotFound(StorageError, KeyError):
    """No object is stored under the key."""

    def __str__(self) -> str:  # KeyError quotes its argument; a message reads better plain
        return str(self.args[0]) if self.args else "object not found"


class InvalidKey(StorageError, ValueError):
    """A storage key is empty, absolute, or climbs out of the storage root."""


class RepositoryError(BackendError):
    """The repository (database) failed."""


class QueueError(BackendError):
    """The queue failed to accept or run a job."""


class RequestNotFound(BulkResizeError, LookupError):
    """No request has this ID (or it is not visible to the caller)."""


class RequestNotFinal(BulkResizeError):
    """The request has not reached a final state yet, so it has no output CSV."""


class InvalidCallbackURL(BulkResizeError):
    """The ``callback_url`` of a request is not an http(s) URL or fails the SSRF guard.

    Attributes:
        url: The URL as given.
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class UploadTooLarge(BulkResizeError):
    """The uploaded CSV is larger than ``max_upload_bytes``."""


class ValidationFailed(BulkResizeError):
    """The CSV breaks one or more rules. ``problems`` lists every one of them.

    Args:
        problems: Every problem found, each ``{row, column, value, message}``.
    """

    def __init__(self, problems: Sequence[ValidationProblem]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        first = str(self.problems[0]) if self.problems else "invalid CSV"
        more = f" (and {count - 1} more)" if count > 1 else ""
        super().__init__(f"{first}{more}")

    def __reduce__(self) -> tuple[type[ValidationFailed], tuple[list[ValidationProblem]]]:
        # Rebuilt from its problems, not its message, when it crosses a process boundary.
        return type(self), (self.problems,)


class ImageError(BulkResizeError):
    """One image could not be processed. ``code`` is the stable error code of the status API."""

    code: ClassVar[str] = "image_error"


class DownloadError(ImageError):
    """The download failed: connection refused, reset, TLS or protocol error, bad redirect."""

    code = "download_error"


class HTTPStatusError(DownloadError):
    """The origin answered with an HTTP error status."""

    code = "http_status"

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class FetchTimeout(DownloadError):
    """The download took longer than a connect, read or total timeout."""

    code = "timeout"


class ImageTooLarge(DownloadError):
    """The download is larger than ``max_image_bytes``, counted while streaming."""

    code = "too_large"


class BlockedURL(DownloadError):
    """The URL is not allowed: its scheme, or an address that is not public (SSRF guard)."""

    code = "blocked_url"


class NotAnImage(ImageError):
    """The bytes are not an image of a supported format."""

    code = "not_an_image"


class TooManyPixels(ImageError):
    """The image has more pixels than ``max_image_pixels``, checked before decoding."""

    code = "too_many_pixels"


class DecodeError(ImageError):
    """The bytes look like an image but cannot be decoded (truncated, corrupt)."""

    code = "decode_error"


class ProcessingTimeout(ImageError):
    """Decoding and encoding took longer than ``image_timeout``."""

    code = "processing_timeout"
