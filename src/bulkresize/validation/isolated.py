"""A validator that runs another one in a short-lived child process."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import threading
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from bulkresize.errors import ConfigurationError, UploadTooLarge, ValidationFailed
from bulkresize.models import Catalogue, ValidationProblem
from bulkresize.validation.base import Validator

__all__ = ["IsolatedValidator"]


class IsolatedValidator(Validator):
    """Runs the validator named ``target`` in a child process.

    The calling process then never imports the validator's libraries (pandas, pyarrow and
    pandera hold about 120 MB), and the memory that parsing a large CSV takes goes back to the
    system when the child exits, before the first image is fetched. ``bulkresize process`` uses
    it; a long-running server validates in-process instead, as a fresh child costs about 0.7 s.
    The child is started with :mod:`multiprocessing`'s ``spawn``, which imports the caller's
    main module again: a script that uses it directly needs an
    ``if __name__ == "__main__":`` guard.

    Args:
        target: The validator's registry name (``pandera``) or dotted path, as in
            ``BULKRESIZE_VALIDATOR``.
        limits: The keyword arguments of the target's ``from_url``: ``max_rows``,
            ``max_urls_per_row`` and ``max_upload_bytes``.
        keep_child: Keep one child for every call until :meth:`close`, instead of a fresh
            child per CSV that exits when it is done (the default).
    """

    def __init__(
        self,
        target: str = "pandera",
        limits: Mapping[str, Any] | None = None,
        *,
        keep_child: bool = False,
    ) -> None:
        self.target = target
        self.keep_child = keep_child
        self.limits = dict(limits or {})
        self._lock = threading.Lock()
        self._kept: concurrent.futures.ProcessPoolExecutor | None = None

    def validate(self, data: bytes, *, allow_local_files: bool = False) -> Catalogue:
        """Validate ``data`` with the target validator, in a child process.

        Raises:
            ValidationFailed: As the target raises it; also when the child cannot run or dies,
                with one problem that says so.
            UploadTooLarge: As the target raises it.
            ConfigurationError: The target cannot be built (no such validator, say).
        """
        try:
            if self.keep_child:
                with self._lock:
                    if self._kept is None:
                        self._kept = _one_child()
                    pool = self._kept
                return self._run(pool, data, allow_local_files)
            with _one_child() as pool:
                return self._run(pool, data, allow_local_files)
        except (ValidationFailed, UploadTooLarge, ConfigurationError):
            raise  # ConfigurationError: no such validator, as building it in-process would say
        except Exception as exc:  # the child died or could not start: the port allows no more
            message = f"the file could not be validated (the validating process failed: {exc!r})"
            raise ValidationFailed([ValidationProblem(None, None, None, message)]) from exc

    def _run(
        self, pool: concurrent.futures.ProcessPoolExecutor, data: bytes, allow_local_files: bool
    ) -> Catalogue:
        future = pool.submit(_validate, self.target, self.limits, data, allow_local_files)
        try:
            return future.result()
        except BrokenProcessPool:
            with self._lock:
                if pool is self._kept:  # the next call starts a new child
                    self._kept = None
            pool.shutdown(wait=False)
            raise

    def close(self) -> None:
        """Stop the kept child, if any."""
        with self._lock:
            pool, self._kept = self._kept, None
        if pool is not None:
            pool.shutdown(wait=True)


def _one_child() -> concurrent.futures.ProcessPoolExecutor:
    # spawn, not fork: the caller has threads running, and a forked child of a threaded
    # process may inherit a held lock.
    return concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn")
    )


def _validate(
    target: str, limits: dict[str, Any], data: bytes, allow_local_files: bool
) -> Catalogue:
    """In the child: build the target validator and run it once."""
    from bulkresize.registry import create_backend

    validator = create_backend("validator", target, Validator, **limits)
    try:
        return validator.validate(data, allow_local_files=allow_local_files)
    finally:
        validator.close()
