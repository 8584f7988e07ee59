"""A bulkresize storage backend that keeps objects in a plain folder: ``folder:///srv/images``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit
from urllib.request import url2pathname

from bulkresize.errors import ConfigurationError, InvalidKey, ObjectNotFound, StorageError
from bulkresize.storage import Storage

__all__ = ["SCHEME", "FolderStorage"]

SCHEME = "folder"


class FolderStorage(Storage):
    """Keeps each object in a file under ``root``.

    Args:
        root: The folder that holds the objects; created when the first object is stored.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    @property
    def root(self) -> Path:
        """The folder that holds the objects."""
        return self._root

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build from ``folder:///absolute/path``. Takes no options."""
        if options:
            raise ConfigurationError(f"folder storage takes no options, not {sorted(options)}")
        parts = urlsplit(url.strip())
        if parts.scheme.lower() != SCHEME or parts.netloc or parts.query or parts.fragment:
            raise ConfigurationError(f"folder storage needs folder:///absolute/path, not {url!r}")
        path = Path(url2pathname(parts.path))
        if not path.is_absolute():
            raise ConfigurationError(f"folder storage needs an absolute path, not {url!r}")
        return cls(path)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if (
            not key
            or key.startswith("/")
            or "\\" in key
            or "\x00" in key
            or any(part in ("", ".", "..") for part in parts)
        ):
            raise InvalidKey(f"invalid storage key {key!r}")
        return self._root.joinpath(*parts)

    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        """Store ``data`` under ``key``, atomically: readers never see half an object."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write to a temporary file beside the target, then rename over it.
            handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(data)
                os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be served
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise StorageError(f"cannot store {key!r}: {exc}") from exc

    def get(self, key: str) -> bytes:
        """The bytes stored under ``key``."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object under key {key!r}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {key!r}: {exc}") from exc

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        try:
            return self._path(key).is_file()
        except OSError as exc:
            raise StorageError(f"cannot check {key!r}: {exc}") from exc

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; a missing key is not an error."""
        try:
            self._path(key).unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError):
            return
        except OSError as exc:
            raise StorageError(f"cannot delete {key!r}: {exc}") from exc

    def url(self, key: str) -> str:
        """The storage's own URL of ``key``: ``folder:///absolute/path/<key>``.

        ``BULKRESIZE_PUBLIC_URL``, when set, is applied by the pipeline, not here.
        """
        file_uri = self._path(key).absolute().as_uri()  # file:///…, percent-encoded
        return SCHEME + file_uri.removeprefix("file")
