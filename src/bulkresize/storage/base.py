"""The storage port: where output images and CSVs are kept."""

from __future__ import annotations

import abc
from typing import Any, Self

from bulkresize.errors import ConfigurationError

__all__ = ["Storage"]


class Storage(abc.ABC):
    """Keeps bytes under string keys such as ``{request_id}/{row}-{position}.jpg``.

    Keys are relative, ``/``-separated, and never contain ``..``. Writing the same key twice
    replaces the object, so a job that runs twice writes the same result.
    """

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build the backend from a URL such as ``s3://bucket/prefix``; the registry calls this.

        Args:
            url: The storage URL; its scheme selected this class.
            **options: Backend options, from ``BULKRESIZE_STORAGE_OPTIONS``.
        """
        # A backend that only takes ready clients is injected, never named by URL.
        raise ConfigurationError(
            f"{cls.__name__} cannot be built from a URL ({url!r}); pass an instance instead"
        )

    @abc.abstractmethod
    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        """Store ``data`` under ``key``, replacing any object already there.

        Raises:
            InvalidKey: The key is empty, absolute or climbs out of the root.
            StorageError: The backend failed.
        """

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``.

        Raises:
            ObjectNotFound: Nothing is stored under ``key``.
            StorageError: The backend failed.
        """

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under ``key``. A missing key is not an error."""

    @abc.abstractmethod
    def url(self, key: str) -> str:
        """The public URL of ``key``. It is stable: the same key always gives the same URL.

        The pipeline uses ``BULKRESIZE_PUBLIC_URL`` instead, when that is set.
        """

    def close(self) -> None:  # noqa: B027  # lifecycle hooks are no-ops by default
        """Release connections and clients."""
