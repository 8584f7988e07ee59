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
import contextlib
import itertools
import logging
import multiprocessing.connection
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bulkresize._children import describe_exit, start_python_child, wait_or_kill
from bulkresize.engines.base import ImageEngine
from bulkresize.errors import ConfigurationError, ImageError, ProcessingTimeout, StorageError
from bulkresize.fetching import Fetcher
from bulkresize.models import EncodedImage, ImageOptions, ImageOutcome, ImageStatus
from bulkresize.registry import create_backend
from bulkresize.settings import Settings, available_cpus
from bulkresize.storage.base import Storage

__all__ = ["ProcessProducer", "Producer", "child_processes", "image_key"]

logger = logging.getLogger(__name__)

#: Storage writes that fail are tried this many times before the image is failed.
_STORAGE_ATTEMPTS = 3


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
    ready: bool = False  # it built its backends and said so
    receiver: threading.Thread | None = None


class ProcessProducer:
    """Runs :meth:`Producer.produce` in ``processes`` child processes.

    Each child builds its own fetcher, engine and storage from ``settings`` (they must be
    reachable by name, and the storage shared: not ``memory://``), with ``download_concurrency``
    and ``encode_workers`` shared out between the children. Each image goes to the child with
    the fewest images in hand; :meth:`produce` blocks until it answers. A child is a new
    interpreter (``python -P -m bulkresize.producing``) with this process's ``sys.path`` as its
    ``PYTHONPATH``, in a session of its own, talking over a socket pair: not
    :mod:`multiprocessing`, whose ``spawn`` runs the caller's script again in each child (a
    script without an ``if __name__ == "__main__"`` guard starts over), nor ``fork``, unsafe in
    a process with threads. Children do not get the terminal's Ctrl-C, which is the parent's,
    and exit when the parent closes them or dies.

    A child that dies fails the images it held (``internal_error``, naming the exit code or
    signal) and is replaced, so an image that crashes a native decoder fails with the images
    in that child's hands, not the run. A child that dies before it could build its backends
    is not replaced: every image then fails at once with that error, rather than children
    being started over and over.

    Args:
        settings: The deployment settings, as the children build from them.
        processes: How many children.

    Raises:
        ConfigurationError: The settings cannot be sent to a child (they must pickle).
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
        self._failure: str | None = None  # set when a child could not start
        downloads = max(1, -(-settings.download_concurrency // processes))
        encodes = max(1, settings.resolved_encode_workers // processes)
        try:
            self._setup = pickle.dumps((settings, downloads, encodes))
        except Exception as exc:  # fail when the pipeline is built, not on every image
            raise ConfigurationError(f"the settings cannot be sent to a child: {exc}") from exc
        # A child finishes the images it holds before it exits: a download, an encode, slack.
        self._exit_seconds = settings.fetch_timeout + settings.image_timeout + 30.0

    def _spawn(self) -> _Child:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            process = start_python_child(
                "bulkresize.producing", str(theirs.fileno()), pass_fds=[theirs.fileno()]
            )
            connection = multiprocessing.connection.Connection(ours.detach())
        child = _Child(process, connection)
        # A child that died at once is reported by its receiver, like any other.
        with contextlib.suppress(OSError, ValueError):
            connection.send_bytes(self._setup)
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
            if self._failure is not None:
                return _failed(self._failure)
            try:
                while len(self._children) < self.processes:
                    self._children.append(self._spawn())
            except OSError as exc:  # no process or thread to be had: this image fails
                if not self._children:
                    return _failed(f"could not start a process to handle this image: {exc}")
            child = min(self._children, key=lambda each: len(each.pending))
            number = next(self._numbers)
            child.pending[number] = future
        task: _Task = (number, request_id, row, position, source_url, options.to_dict())
        with child.send_lock, contextlib.suppress(OSError, ValueError):
            child.connection.send(task)  # if the child is gone, its receiver fails this image
        return future.result()

    def _receive(self, child: _Child) -> None:
        """Resolve the child's answers until its pipe closes; then fail what it still held."""
        while True:
            try:
                message = child.connection.recv()
            except (EOFError, OSError):
                break
            if message == "ready":
                child.ready = True
                continue
            number, outcome = message
            with self._lock:
                future = child.pending.pop(number, None)
            if future is not None:
                future.set_result(outcome)
        wait_or_kill(child.process, self._exit_seconds)
        how = describe_exit(child.process.returncode)
        with self._lock:
            lost, child.pending = child.pending, {}
            if child in self._children:
                self._children.remove(child)
            if not child.ready and not self._closed:
                self._failure = f"the process to handle this image could not start ({how})"
            replace = not self._closed and self._failure is None
        if lost:
            # A decoder that crashes on a hostile image is the likely cause.
            logger.error("a producer process died (%s) holding %d images", how, len(lost))
        elif not child.ready and not self._closed:
            logger.error("a producer process could not start (%s); see its error output", how)
        message = self._failure or f"the process handling this image died ({how})"
        for future in lost.values():
            future.set_result(_failed(message))
        if replace:
            try:
                with self._lock:
                    if not self._closed:
                        self._children.append(self._spawn())
            except OSError:  # produce() tries again with the next image
                logger.exception("could not start a producer process")

    def close(self) -> None:
        """Let the children finish the images they hold, then stop them."""
        with self._lock:
            self._closed = True
            children = list(self._children)
            held = [future for child in children for future in child.pending.values()]
        concurrent.futures.wait(held, timeout=self._exit_seconds)
        for child in children:
            with child.send_lock, contextlib.suppress(OSError, ValueError):
                child.connection.send(None)
        for child in children:
            wait_or_kill(child.process, self._exit_seconds)
            if child.receiver is not None:
                child.receiver.join()
            child.connection.close()


def _failed(message: str) -> ImageOutcome:
    return ImageOutcome(ImageStatus.FAILED, error="internal_error", error_message=message)


def _child_main(descriptor: int) -> None:
    """A child: build a producer from the settings and work the images the parent sends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    connection = multiprocessing.connection.Connection(descriptor)
    try:
        settings, downloads, encodes = pickle.loads(connection.recv_bytes())  # noqa: S301
    except (EOFError, OSError):
        return  # the parent is gone already
    built = _build_backends(settings)  # an error here ends the child before it is ready
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
            with send_lock, contextlib.suppress(OSError, ValueError):
                connection.send((number, outcome))

    threads = [
        threading.Thread(target=work, name=f"bulkresize-download-{n}") for n in range(downloads)
    ]
    for thread in threads:
        thread.start()
    with send_lock, contextlib.suppress(OSError, ValueError):
        connection.send("ready")
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

    ``settings.processes`` when set; otherwise one per CPU (at most one per download in
    flight) when there are several, the pipeline's backends can be rebuilt in children
    (``can_share``) and the system is POSIX, else none.
    """
    if settings.processes is not None:
        return settings.processes
    if os.name != "posix":  # children inherit their socket by descriptor (pass_fds)
        return 0
    # More children than downloads in flight would sit idle, each holding its libraries.
    cpus = min(available_cpus(), settings.download_concurrency)
    return cpus if can_share and cpus > 1 else 0


if __name__ == "__main__":  # python -m bulkresize.producing FD, run by ProcessProducer
    _child_main(int(sys.argv[1]))
