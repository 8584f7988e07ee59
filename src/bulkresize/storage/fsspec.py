"""Storage over fsspec: ``file://``, ``memory://``, ``s3://`` and any other fsspec protocol."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, quote_from_bytes

from bulkresize.errors import BackendNotFound, InvalidKey, ObjectNotFound, StorageError
from bulkresize.storage.base import Storage

__all__ = ["FsspecStorage", "check_key"]


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise :class:`InvalidKey`."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidKey(f"invalid storage key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidKey(f"invalid storage key {key!r}")
    return key


class FsspecStorage(Storage):
    """Keeps objects in any fsspec filesystem, under a root path.

    Args:
        fs: A ready fsspec filesystem (constructors take ready clients, for tests and injection).
        root: The root path inside ``fs`` (``bucket/prefix`` for S3, a folder for files).
        public_url: Base URL that ``url()`` joins keys to; default: the filesystem's own URL.
        endpoint_url: For S3-compatible stores, the endpoint that ``url()`` uses when no
            ``public_url`` is given, path-style: ``{endpoint_url}/{bucket}/{key}``.
    """

    def __init__(
        self,
        fs: Any,
        root: str,
        *,
        public_url: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        self._fs = fs
        self._root = root.rstrip("/")
        self._public_url = public_url.rstrip("/") if public_url else None
        self._endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self._local = "file" in _protocols(fs)
        # A request's output CSV asks for every image's URL: a Path and as_uri() per key cost
        # a tenth of the parent's time on small images; the root's URI never changes.
        self._root_uri = Path(self._root or "/").as_uri().removesuffix("/") if self._local else ""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build from ``file:///path``, ``memory://name``, ``s3://bucket/prefix`` and the like.

        Args:
            url: The storage URL.
            **options: ``public_url``, plus options passed to the fsspec filesystem
                (for S3: ``endpoint_url``, ``key``, ``secret``, ``client_kwargs`` …).

        Raises:
            BackendNotFound: The protocol's package (e.g. s3fs) is not installed.
            StorageError: The filesystem could not be created.
        """
        import fsspec  # lazy: importing bulkresize costs nothing until storage is used

        public_url = options.pop("public_url", None)
        endpoint_url = options.get("endpoint_url") or options.get("client_kwargs", {}).get(
            "endpoint_url"
        )
        # Fresh instances: fsspec's cache would share clients across forked workers.
        options.setdefault("skip_instance_cache", True)
        try:
            fs, root = fsspec.core.url_to_fs(url, **options)
        except ImportError as exc:
            extra = " (pip install 'bulkresize[s3]')" if url.startswith("s3") else ""
            raise BackendNotFound(
                f"storage {url.split('://', 1)[0]}:// needs a package that is not installed: "
                f"{exc}{extra}"
            ) from exc
        except (ValueError, TypeError, OSError) as exc:
            raise StorageError(f"cannot open storage {url!r}: {exc}") from exc
        return cls(fs, root, public_url=public_url, endpoint_url=endpoint_url)

    def _path(self, key: str) -> str:
        return f"{self._root}/{check_key(key)}"

    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        """Store ``data`` under ``key``; on local disk the write is atomic (temp file, rename)."""
        path = self._path(key)
        try:
            if self._local:
                _atomic_write(path, data)
            else:
                self._fs.pipe_file(path, data, **self._put_options(content_type))
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot store {key!r}: {exc}") from exc
        except Exception as exc:  # any library error becomes ours, never the raw one
            raise StorageError(f"cannot store {key!r}: {type(exc).__name__}: {exc}") from exc

    def _put_options(self, content_type: str) -> dict[str, Any]:
        if "s3" in _protocols(self._fs):
            return {"ContentType": content_type}
        return {}

    def get(self, key: str) -> bytes:
        """Return the object under ``key``; ``ObjectNotFound`` if there is none."""
        path = self._path(key)
        try:
            data = self._fs.cat_file(path)
        except FileNotFoundError:
            raise ObjectNotFound(f"no object under key {key!r}") from None
        except IsADirectoryError:
            raise ObjectNotFound(f"no object under key {key!r}") from None
        except Exception as exc:  # any library error becomes ours, never the raw one
            raise StorageError(f"cannot read {key!r}: {type(exc).__name__}: {exc}") from exc
        return bytes(data)

    def exists(self, key: str) -> bool:
        """Whether an object (not a folder) is stored under ``key``."""
        path = self._path(key)
        try:
            return bool(self._fs.isfile(path))
        except Exception as exc:  # any library error becomes ours, never the raw one
            raise StorageError(f"cannot check {key!r}: {type(exc).__name__}: {exc}") from exc

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; a missing key is not an error."""
        path = self._path(key)
        try:
            self._fs.rm_file(path)
        except FileNotFoundError:
            return
        except Exception as exc:  # any library error becomes ours, never the raw one
            raise StorageError(f"cannot delete {key!r}: {type(exc).__name__}: {exc}") from exc

    def url(self, key: str) -> str:
        """The public URL of ``key``: under ``public_url`` if set, else the storage's own."""
        check_key(key)
        if self._public_url:
            return f"{self._public_url}/{quote(key)}"
        if self._local:  # what Path(path).as_uri() gives, without building a Path per key
            return f"{self._root_uri}/{quote_from_bytes(os.fsencode(key))}"
        path = self._path(key)
        if self._endpoint_url and "s3" in _protocols(self._fs):
            return f"{self._endpoint_url}/{quote(path.lstrip('/'))}"
        if "s3" in _protocols(self._fs):
            bucket, _, rest = path.lstrip("/").partition("/")
            return f"https://{bucket}.s3.amazonaws.com/{quote(rest)}"
        return str(self._fs.unstrip_protocol(path))

    def close(self) -> None:
        """Nothing to release: fsspec filesystems close their sessions when collected."""


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _atomic_write(path: str, data: bytes) -> None:
    # os.path on strings, not pathlib: a Path per write was 5 % of a tiny image's cost.
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be read by others
        os.replace(tmp, path)  # readers see the old object or the new one, never half of one
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
