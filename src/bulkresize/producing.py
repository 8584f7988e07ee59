"""The work of one image: download, re-encode, store. In this process, or in child processes.

A :class:`Producer` does it on threads of this process. A :class:`ProcessProducer` hands each
image to one of several child processes, each with its own producer. Python runs one thread at
a time per process, and for small images the Python code around each download (httpx, the
storage write) is most of the cost: one process then keeps about one core busy, however many
cores there are. Child processes use them all. The parent keeps the queue, the recording and
finalization, so nothing about how work is counted, retried or resumed changes.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import multiprocessing.connection
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bulkresize.engines.base import ImageEngine
from bulkresize.errors import ImageError, ProcessingTimeout, StorageError
from bulkresize.fetching import Fetcher
from bulkresize.models import EncodedImage, ImageOptions, ImageOutcome, ImageStatus
from bulkresize.registry import create_backend
from bulkresize.settings import Settings, available_cpus
from bulkresize.storage.base import Storage

__all__ = ["ProcessProducer", "Producer", "child_processes", "image_key"]

logger = logging.getLogger(__name__)

#: Storage writes that fail are tried this many times before the image is failed.
_STORAGE_ATTEMPTS = 3
#: Seconds a child has to finish its images and exit when the producer closes.
_CHILD_EXIT_SECONDS = 30.0


def image_key(request_id: str, row: int, position: int, extension: str) -> str:
    """The storage key of one output image."""
    return f"{request_id}/{row}-{position}.{extension}"


class Producer:
    """Downloads, re-encodes and stores one image at a time per calling thread.

    Args:
        settings: Limits: ``image_timeout``, ``retry_backoff``.
        fetcher: Downloads the image.
        engine: Re-encodes it.
        storage: Keeps the output.
        encode_workers: Threads that decode and encode, however many threads download.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        fetcher: Fetcher,
        engine: ImageEngine,
        storage: Storage,
        encode_workers: int,
    ) -> None:
        self.settings = settings
        self.fetcher = fetcher
        self.engine = engine
        self.storage = storage
        # Decoding and encoding are CPU-bound: one thread per core, however many downloads. A
        # dedicated pool, not a semaphore over the download threads: glibc gives each thread
        # its own malloc arena, and every arena that ever held a decoded image keeps that much
        # memory (16 download threads decoding 6 MP photos held 580 MB; 2 encode threads, 260).
        self._encoder = concurrent.futures.ThreadPoolExecutor(
            encode_workers, thread_name_prefix="bulkresize-encode"
        )

    def produce(
        self, request_id: str, row: int, position: int, source_url: str, options: ImageOptions
    ) -> ImageOutcome:
        """Download, re-encode and store one image; every failure becomes a failed outcome."""
        bytes_in: int | None = None
        try:
            fetched = self.fetcher.fetch(source_url, allow_files=source_url[:5].lower() == "file:")
            bytes_in = len(fetched.data)
            encoded = self._encode(fetched.data, options)
            key = image_key(request_id, row, position, encoded.extension)
            self._put_with_retries(key, encoded.data, encoded.content_type)
        except ImageError as exc:
            return ImageOutcome(
                ImageStatus.FAILED, error=exc.code, error_message=str(exc), bytes_in=bytes_in
            )
        except StorageError as exc:
            return ImageOutcome(
                ImageStatus.FAILED,
                error="storage_error",
                error_message=str(exc),
                bytes_in=bytes_in,
            )
        except Exception as exc:  # a bug must fail one image, never the worker
            logger.exception("unexpected error on %s row %d position %d", request_id, row, position)
            return ImageOutcome(
                ImageStatus.FAILED,
                error="internal_error",
                error_message=f"{type(exc).__name__}: {exc}",
                bytes_in=bytes_in,
            )
        return ImageOutcome(
            ImageStatus.DONE, output_key=key, bytes_in=bytes_in, bytes_out=len(encoded.data)
        )

    def _encode(self, data: bytes, options: ImageOptions) -> EncodedImage:
        """Decode and re-encode on the encode pool, for at most ``image_timeout`` once started.

        The clock starts when an encode thread takes the image, not while it waits for one, so
        a slow image never fails the images queued behind it.
        """
        started: list[float] = []  # when an encode thread took the image

        def run() -> EncodedImage:
            started.append(time.monotonic())
            return self.engine.process(data, options)

        future = self._encoder.submit(run)
        limit = self.settings.image_timeout
        wait = limit
        while True:
            try:
                return future.result(timeout=wait)
            except concurrent.futures.TimeoutError:
                # Waiting behind the images ahead of this one is not this one's fault.
                wait = limit if not started else started[0] + limit - time.monotonic()
                if started and wait <= 0:
                    break
        # A thread inside a C decoder cannot be stopped: it keeps its encode slot until the
        # call returns, and its result is dropped. The image, and its job, end now.
        logger.warning("an image took more than %s s to decode and encode", limit)
        raise ProcessingTimeout(f"decoding and encoding took longer than {limit:g} s")

    def _put_with_retries(self, key: str, data: bytes, content_type: str) -> None:
        for attempt in range(1, _STORAGE_ATTEMPTS + 1):
            try:
                self.storage.put(key, data, content_type=content_type)
                return
            except StorageError:
                if attempt == _STORAGE_ATTEMPTS:
                    raise
                time.sleep(self.settings.retry_backoff * 2 ** (attempt - 1))

    def close(self) -> None:
        """Wait for the encodes under way; the backends are their owner's to close."""
        self._encoder.shutdown(wait=True)


# A task: (number, request_id, row, position, source_url, options as a dict).
_Task = tuple[int, str, int, int, str, dict[str, Any]]


@dataclass(eq=False)
class _Child:
    """One child process, its end of the pipe, and the images it has not answered yet."""

    process: subprocess.Popen[bytes]
    connection: multiprocessing.connection.Connection
    pending: dict[int, concurrent.futures.Future[ImageOutcome]] = field(default_factory=dict)
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    receiver: threading.Thread | None = None


class ProcessProducer:
    """Runs :meth:`Producer.produce` in ``processes`` child processes.

    Each child builds its own fetcher, engine and storage from ``settings`` (they must be
    reachable by name, and the storage shared: not ``memory://``), with ``download_concurrency``
    and ``encode_workers`` shared out between the children. Each image goes to the child with
    the fewest images in hand; :meth:`produce` blocks until it answers. A child is a new
    interpreter (``python -m bulkresize.producing``) with this process's ``sys.path``, talking
    over a socket pair: not :mod:`multiprocessing`'s ``spawn``, which would import the caller's
    ``__main__`` again, nor ``fork``, unsafe in a process with threads. Children ignore Ctrl-C,
    which is the parent's, and exit when the parent closes them or dies.

    A child that dies fails the images it held (``internal_error``, naming the exit code or
    signal) and is replaced, so an image that crashes a native decoder fails alone.

    Args:
        settings: The deployment settings, as the children build from them.
        processes: How many children.
    """

    def __init__(self, settings: Settings, *, processes: int) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.settings = settings
        self.processes = processes
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._children: list[_Child] = []
        self._closed = False
        downloads = max(1, -(-settings.download_concurrency // processes))
        encodes = max(1, settings.resolved_encode_workers // processes)
        self._child_setup = (settings, downloads, encodes)

    def _spawn(self) -> _Child:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            process = subprocess.Popen(  # noqa: S603  # our own module, by this interpreter
                [sys.executable, "-m", "bulkresize.producing", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
            connection = multiprocessing.connection.Connection(ours.detach())
        child = _Child(process, connection)
        with _suppress_broken_pipe():  # a child that died at once is reported by the receiver
            connection.send((sys.path, *self._child_setup))
        child.receiver = threading.Thread(
            target=self._receive, args=(child,), name="bulkresize-producer-results", daemon=True
        )
        child.receiver.start()
        return child

    def produce(
        self, request_id: str, row: int, position: int, source_url: str, options: ImageOptions
    ) -> ImageOutcome:
        """Hand one image to a child and wait for its outcome.

        The children start with the first image, not before: until then, a CSV being
        validated has the memory to itself.
        """
        future: concurrent.futures.Future[ImageOutcome] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the producer is closed")
            while len(self._children) < self.processes:
                self._children.append(self._spawn())
            child = min(self._children, key=lambda each: len(each.pending))
            number = next(self._numbers)
            child.pending[number] = future
        task: _Task = (number, request_id, row, position, source_url, options.to_dict())
        try:
            with child.send_lock:
                child.connection.send(task)
        except (OSError, ValueError):
            pass  # the child is gone: its receiver fails the pending images, this one included
        return future.result()

    def _receive(self, child: _Child) -> None:
        """Resolve the child's answers until its pipe closes; then fail what it still held."""
        while True:
            try:
                number, outcome = child.connection.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                future = child.pending.pop(number, None)
            if future is not None:
                future.set_result(outcome)
        _wait(child.process)
        with self._lock:
            lost, child.pending = child.pending, {}
            replace = not self._closed and child in self._children
            if replace:
                self._children.remove(child)
                self._children.append(self._spawn())
        if lost:
            code = child.process.returncode
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            # A decoder that crashes on a hostile image is the likely cause.
            logger.error("a producer process died (%s) holding %d images", how, len(lost))
            for future in lost.values():
                future.set_result(
                    ImageOutcome(
                        ImageStatus.FAILED,
                        error="internal_error",
                        error_message=f"the process handling this image died ({how})",
                    )
                )

    def close(self) -> None:
        """Let the children finish the images they hold, then stop them."""
        with self._lock:
            self._closed = True
            children = list(self._children)
        for child in children:
            with child.send_lock, _suppress_broken_pipe():
                child.connection.send(None)
        for child in children:
            _wait(child.process)
            if child.receiver is not None:
                child.receiver.join()
            child.connection.close()


def _wait(process: subprocess.Popen[bytes]) -> None:
    """Wait for a child to exit; kill it if it takes longer than ``_CHILD_EXIT_SECONDS``."""
    try:
        process.wait(timeout=_CHILD_EXIT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _suppress_broken_pipe:  # reads as a context manager, like contextlib's
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> bool:
        return exc_type is not None and issubclass(exc_type, (OSError, ValueError))


def _child_main(descriptor: int) -> None:
    """A child: build a producer from the settings and work the images the parent sends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    connection = multiprocessing.connection.Connection(descriptor)
    try:
        path, settings, downloads, encodes = connection.recv()
    except (EOFError, OSError):
        return  # the parent is gone already
    sys.path[:] = path  # so that plug-ins by dotted path import here as they do there
    built = _build_backends(settings)
    fetcher, engine, storage = built
    producer = Producer(
        settings, fetcher=fetcher, engine=engine, storage=storage, encode_workers=encodes
    )
    tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
    send_lock = threading.Lock()

    def work() -> None:
        while (task := tasks.get()) is not None:
            number, request_id, row, position, source_url, options = task
            outcome = producer.produce(
                request_id, row, position, source_url, ImageOptions.from_dict(options)
            )
            with send_lock, _suppress_broken_pipe():
                connection.send((number, outcome))

    threads = [
        threading.Thread(target=work, name=f"bulkresize-download-{n}") for n in range(downloads)
    ]
    for thread in threads:
        thread.start()
    try:
        while True:
            try:
                task = connection.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            if task is None:
                break
            tasks.put(task)
    finally:
        for _ in threads:
            tasks.put(None)
        for thread in threads:
            thread.join()
        producer.close()
        for backend in reversed(built):
            backend.close()
        connection.close()


def _build_backends(settings: Settings) -> tuple[Fetcher, ImageEngine, Storage]:
    fetcher = Fetcher.from_settings(settings)
    engine = create_backend(
        "engine", settings.engine, ImageEngine, max_image_pixels=settings.max_image_pixels
    )
    storage = create_backend(
        "storage", settings.resolved_storage_url, Storage, **dict(settings.storage_options)
    )
    return fetcher, engine, storage


def child_processes(settings: Settings, *, can_share: bool) -> int:
    """How many producer processes a pipeline should use (0: work in this process).

    ``settings.processes`` when set; otherwise one per CPU when there are several and the
    pipeline's backends can be rebuilt in children (``can_share``), else none.
    """
    if settings.processes is not None:
        return settings.processes
    cpus = available_cpus()
    return cpus if can_share and cpus > 1 else 0


if __name__ == "__main__":  # python -m bulkresize.producing FD, run by ProcessProducer
    _child_main(int(sys.argv[1]))
