"""A validator that runs another one in a short-lived child process."""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any

from bulkresize._children import describe_exit, start_python_child, wait_or_kill
from bulkresize.errors import ConfigurationError, UploadTooLarge, ValidationFailed
from bulkresize.models import Catalogue, ValidationProblem
from bulkresize.validation.base import Validator

__all__ = ["IsolatedValidator"]

#: Seconds a child that was told to stop may take before it is killed.
_EXIT_SECONDS = 10.0


class _ChildFailed(Exception):
    """The child could not start, died, or answered something that is not an answer."""


class IsolatedValidator(Validator):
    """Runs the validator named ``target`` in a child process.

    The calling process then never imports the validator's libraries (pandas, pyarrow and
    pandera hold about 120 MB), and the memory that parsing a large CSV takes goes back to the
    system when the child exits, before the first image is fetched. ``bulkresize process`` uses
    it; a long-running server validates in-process instead, as a fresh child costs about 0.7 s.
    The child is a new interpreter (``python -P -m bulkresize.validation.isolated``) with this
    process's ``sys.path``, which gets the file and sends back the catalogue or the error over
    its standard input and output.

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
        self._lock = threading.Lock()  # one file at a time through the kept child
        self._kept: subprocess.Popen[bytes] | None = None

    def validate(self, data: bytes, *, allow_local_files: bool = False) -> Catalogue:
        """Validate ``data`` with the target validator, in a child process.

        Raises:
            ValidationFailed: As the target raises it; also when the child cannot run or dies,
                with one problem that says so.
            UploadTooLarge: As the target raises it.
            ConfigurationError: The target cannot be built (no such validator, say).
        """
        request = (self.target, self.limits, data, allow_local_files)
        try:
            if self.keep_child:
                with self._lock:
                    if self._kept is None:
                        self._kept = _start()
                    try:
                        answer = _ask(self._kept, request)
                    except BaseException:  # dead, or interrupted mid-file: out of step
                        _stop(self._kept, kill=True)
                        self._kept = None  # the next call starts a new child
                        raise
            else:
                child = _start()
                try:
                    answer = _ask(child, request)
                except BaseException:  # Ctrl-C here must not wait for the file to finish
                    _stop(child, kill=True)
                    raise
                _stop(child)
        except _ChildFailed as exc:
            message = f"the file could not be validated (the validating process failed: {exc})"
            raise ValidationFailed([ValidationProblem(None, None, None, message)]) from exc
        if isinstance(answer, Catalogue):
            return answer
        if isinstance(answer, ValidationFailed | UploadTooLarge | ConfigurationError):
            raise answer  # ConfigurationError: no such validator, as building it here would say
        # Any other error (a bug in the validator, say), or the text of one that did not pickle.
        what = f"{type(answer).__name__}: {answer}" if isinstance(answer, Exception) else answer
        message = f"the file could not be validated ({what})"
        raise ValidationFailed([ValidationProblem(None, None, None, message)])

    def close(self) -> None:
        """Stop the kept child, if any."""
        with self._lock:
            child, self._kept = self._kept, None
        if child is not None:
            _stop(child)


def _start() -> subprocess.Popen[bytes]:
    try:
        return start_python_child(
            "bulkresize.validation.isolated", stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
    except OSError as exc:
        raise _ChildFailed(f"it could not start: {exc}") from exc


def _ask(child: subprocess.Popen[bytes], request: tuple[Any, ...]) -> object:
    """Send one file to the child and read its answer: a catalogue, an error, or a message."""
    if child.stdin is None or child.stdout is None:
        raise _ChildFailed("it has no pipes")
    try:
        pickle.dump(request, child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        child.stdin.flush()
        return pickle.load(child.stdout)  # noqa: S301  # our own child's answer
    except (OSError, EOFError, pickle.UnpicklingError) as exc:  # it died on the way
        wait_or_kill(child, _EXIT_SECONDS)
        raise _ChildFailed(describe_exit(child.returncode)) from exc
    except Exception as exc:  # an answer that does not unpickle here (a class it lacks)
        child.kill()
        child.wait()
        raise _ChildFailed(f"its answer could not be read: {exc!r}") from exc


def _stop(child: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """Close the child's input, which ends it (or kill it), and reap it."""
    if kill and child.poll() is None:
        child.kill()
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                continue  # a pipe whose reader is gone: the child has ended anyway
    wait_or_kill(child, _EXIT_SECONDS)


def _serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """In the child: validate each file the parent sends until its input closes."""
    from bulkresize.registry import create_backend

    while True:
        try:
            target, limits, data, allow_local_files = pickle.load(requests)  # noqa: S301
        except EOFError:
            return  # the parent is done, or gone
        answer: object
        try:
            validator = create_backend("validator", target, Validator, **limits)
            try:
                answer = validator.validate(data, allow_local_files=allow_local_files)
            finally:
                validator.close()
        except Exception as exc:  # every error goes back to the parent, which decides
            answer = exc
        try:
            payload = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an error that does not pickle still says what it was
            payload = pickle.dumps(f"{type(answer).__name__}: {answer}")
        answers.write(payload)
        answers.flush()


def _child_main() -> None:
    # The answers take this process's standard output; anything a library prints goes to
    # standard error instead, where it cannot corrupt them.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with contextlib.suppress(BrokenPipeError), answers:  # the parent went away meanwhile
        _serve(sys.stdin.buffer, answers)


if __name__ == "__main__":  # python -m bulkresize.validation.isolated, run by IsolatedValidator
    _child_main()
