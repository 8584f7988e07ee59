"""The use cases: submit, process an image, finalize, status. No web framework here.

Data flows one way: CSV → validate → persist → enqueue → fetch → encode → store → count →
finalize. Routes, CLI commands and worker jobs are thin adapters over :class:`Pipeline`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Self
from urllib.parse import quote, urlsplit

from bulkresize.engines.base import ImageEngine
from bulkresize.errors import (
    BackendError,
    BlockedURL,
    ConfigurationError,
    InvalidCallbackURL,
    RepositoryError,
    RequestNotFinal,
    RequestNotFound,
)
from bulkresize.fetching import Fetcher
from bulkresize.models import (
    Catalogue,
    Image,
    ImageOptions,
    ImageOutcome,
    ImageStatus,
    Request,
    RequestStatus,
    StatusReport,
)
from bulkresize.output_csv import render_output_csv
from bulkresize.producing import ProcessProducer, Producer, child_processes, image_key
from bulkresize.queues.base import Job, Queue
from bulkresize.registry import create_backend, scheme_of
from bulkresize.repositories.base import Repository, WebhookOutbox
from bulkresize.settings import Settings
from bulkresize.storage.base import Storage
from bulkresize.validation.base import Validator
from bulkresize.webhooks import (
    WebhookSender,
    build_payload,
    check_callback_url,
    message_id,
    retry_delay,
)

__all__ = ["JOB_PROCESS_IMAGE", "Pipeline", "create_validator", "process_csv"]

logger = logging.getLogger(__name__)

JOB_PROCESS_IMAGE = "process_image"

#: How often the maintenance thread looks for due webhooks, and how often it sweeps.
_WEBHOOK_POLL_SECONDS = 0.25
#: How long a finalizer holds its claim; if it dies, another may finalize after this.
_FINALIZE_LEASE_SECONDS = 120.0
#: How long a claimed webhook stays with its claimer before another process may retry it.
_WEBHOOK_LEASE_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class _Keys:
    request_id: str

    @property
    def catalogue(self) -> str:
        return f"{self.request_id}/catalogue.json"

    @property
    def output_csv(self) -> str:
        return f"{self.request_id}/output.csv"

    def image(self, row: int, position: int, extension: str) -> str:
        return image_key(self.request_id, row, position, extension)


class Pipeline:
    """The whole service over injected backends, framework-free.

    Build it with :meth:`from_settings` (or pass ready backends), call :meth:`start` so an
    in-process queue begins working, then :meth:`submit` CSVs and read :meth:`status`.

    Args:
        settings: Limits and defaults.
        storage: Where outputs go.
        repository: Where state is kept.
        queue: Where jobs run.
        validator: Parses and checks CSVs.
        engine: Re-encodes images.
        fetcher: Downloads images; default built from ``settings``.
        webhook_sender: Delivers webhooks; default built from ``settings``.
        processes: Child processes that download, re-encode and store the images of an
            in-process queue, each with its own fetcher, engine and storage built from
            ``settings`` (see :class:`~bulkresize.producing.ProcessProducer`); 0 does it on
            threads of this process with the backends given here.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        storage: Storage,
        repository: Repository,
        queue: Queue,
        validator: Validator,
        engine: ImageEngine,
        fetcher: Fetcher | None = None,
        webhook_sender: WebhookSender | None = None,
        processes: int = 0,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.repository = repository
        self.queue = queue
        self.validator = validator
        self.engine = engine
        self.fetcher = fetcher if fetcher is not None else Fetcher.from_settings(settings)
        self.webhook_sender = (
            webhook_sender if webhook_sender is not None else WebhookSender.from_settings(settings)
        )
        self._stopping = threading.Event()
        self._maintenance: threading.Thread | None = None
        self._producer: Producer | ProcessProducer = (
            ProcessProducer(settings, processes=processes)
            if processes > 0
            else Producer(
                settings,
                fetcher=self.fetcher,
                engine=engine,
                storage=storage,
                encode_workers=settings.resolved_encode_workers,
            )
        )
        self._recorder = _Recorder(repository)
        self._started = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        storage: Storage | None = None,
        repository: Repository | None = None,
        queue: Queue | None = None,
        validator: Validator | None = None,
        engine: ImageEngine | None = None,
        fetcher: Fetcher | None = None,
        webhook_sender: WebhookSender | None = None,
    ) -> Pipeline:
        """Compose a pipeline from settings; any backend passed in is used as it is.

        With the embedded queue, images are produced in ``settings.processes`` child
        processes (by default one per CPU) when the pipeline builds its fetcher, engine and
        storage itself and the storage is not ``memory://`` (which a child cannot share).

        Raises:
            BackendNotFound: A configured URL names no installed backend.
            ConfigurationError: ``settings.processes`` asks for child processes, but a fetcher,
                engine or storage was passed in, which the children could not use, or the
                storage is ``memory://``, which they cannot share.
        """
        settings = settings if settings is not None else Settings.from_env()
        injected = [
            name
            for name, given in (("fetcher", fetcher), ("engine", engine), ("storage", storage))
            if given is not None
        ]
        if settings.processes and injected:
            raise ConfigurationError(
                f"processes={settings.processes} needs the pipeline to build its fetcher, "
                f"engine and storage from settings, but {' and '.join(injected)} was given"
            )
        built: list[Any] = []
        try:
            if storage is None:
                storage = create_backend(
                    "storage",
                    settings.resolved_storage_url,
                    Storage,
                    **dict(settings.storage_options),
                )
                built.append(storage)
            if repository is None:
                repository = create_backend(
                    "repository", settings.resolved_database_url, Repository
                )
                built.append(repository)
            if queue is None:
                queue_options: dict[str, Any] = {}
                scheme = settings.queue_url.split("://", 1)[0].lower()
                if scheme == "local":
                    queue_options["workers"] = settings.download_concurrency
                elif scheme in ("redis", "rediss"):
                    queue_options["concurrency"] = settings.download_concurrency
                queue = create_backend("queue", settings.queue_url, Queue, **queue_options)
                built.append(queue)
            if validator is None:
                validator = create_validator(settings)
            if webhook_sender is None:
                webhook_sender = WebhookSender.from_settings(settings)  # checks the secret
                built.append(webhook_sender)
            if engine is None:
                engine = create_backend(
                    "engine",
                    settings.engine,
                    ImageEngine,
                    max_image_pixels=settings.max_image_pixels,
                )
        except BaseException:
            for backend in reversed(built):
                backend.close()
            raise
        shareable = scheme_of(settings.resolved_storage_url) != "memory"
        if settings.processes and not shareable and queue.in_process:
            for backend in reversed(built):
                backend.close()
            raise ConfigurationError(
                f"processes={settings.processes} needs a storage that child processes share, "
                "and memory:// is private to each process"
            )
        processes = (
            child_processes(settings, can_share=not injected and shareable)
            if queue.in_process
            else 0
        )
        return cls(
            settings,
            storage=storage,
            repository=repository,
            queue=queue,
            validator=validator,
            engine=engine,
            fetcher=fetcher,
            webhook_sender=webhook_sender,
            processes=processes,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, resume: bool = True, maintenance: bool = True) -> None:
        """Let an in-process queue start running jobs, and resume unfinished work.

        With a distributed queue this only resumes; ``bulkresize worker`` runs the jobs.

        Args:
            resume: Queue again the pending images of unfinished requests now.
            maintenance: Start a background thread that delivers due webhooks and sweeps up
                lost jobs (pending images with no live job) every ``settings.sweep_interval``
                seconds.
        """
        if self._started:
            return
        self._started = True
        if self.queue.in_process:
            # Producer processes start with the first image, not here: until then, a CSV
            # being validated has the memory to itself.
            self.queue.start(self.handle_job)
        if resume:
            self.resume()
        if maintenance:
            self._maintenance = threading.Thread(
                target=self._maintain, name="bulkresize-maintenance", daemon=True
            )
            self._maintenance.start()

    def work(self, *, burst: bool = False) -> None:
        """Run jobs from the queue in the foreground: what ``bulkresize worker`` does.

        Starts the maintenance thread (webhooks and sweeping) and resumes unfinished work
        first, so any worker can repair what a dead process left behind.

        Args:
            burst: Return once the queue is empty instead of waiting for more jobs.

        Raises:
            ConfigurationError: The queue runs jobs in-process (``local://``), so there is
                nothing for a separate worker to take.
        """
        if self.queue.in_process:
            raise ConfigurationError(
                f"{type(self.queue).__name__} runs jobs inside the process that submits them; "
                "a worker needs a distributed queue such as redis://"
            )
        self.start(resume=True, maintenance=True)
        self.queue.work(self.handle_job, burst=burst)

    def _maintain(self) -> None:
        last_sweep = time.monotonic()
        while not self._stopping.wait(_WEBHOOK_POLL_SECONDS):
            try:
                self.deliver_due_webhooks()
                if time.monotonic() - last_sweep >= self.settings.sweep_interval:
                    last_sweep = time.monotonic()
                    self.resume()
            except Exception:  # the thread must outlive any one failure
                logger.exception("maintenance failed; trying again")

    def close(self) -> None:
        """Stop the queue and the maintenance thread, and release every backend."""
        self._stopping.set()
        if self._maintenance is not None:
            self._maintenance.join()
        self.queue.close()
        self._producer.close()
        self._recorder.close()
        self.webhook_sender.close()
        self.fetcher.close()
        self.engine.close()
        self.validator.close()
        self.repository.close()
        self.storage.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- submit ------------------------------------------------------------------------------

    def submit(
        self,
        data: bytes,
        *,
        options: ImageOptions | Mapping[str, Any] | None = None,
        callback_url: str | None = None,
        owner: str | None = None,
        base_dir: Path | None = None,
    ) -> Request:
        """Validate a CSV, persist the request and its images, then queue them.

        Args:
            data: The CSV file's bytes.
            options: Image options for this request, over the deployment's defaults.
            callback_url: Where to send the webhook when the request is final.
            owner: An opaque tag of who created it (the HTTP layer's API key hash).
            base_dir: Allows local files (``file://`` URLs and paths relative to this folder).
                Only the CLI and the library pass it; the HTTP API never does.

        Returns:
            The accepted request, ``pending``.

        Raises:
            ValidationFailed: The CSV breaks a rule; ``problems`` lists every one.
            UploadTooLarge: The CSV is over ``max_upload_bytes``.
            InvalidOption: An option is out of range.
        """
        image_options = self._options(options)
        if callback_url is not None:
            self._check_callback_url(callback_url)
        catalogue = self.validator.validate(data, allow_local_files=base_dir is not None)
        request_id = uuid.uuid4().hex
        now = datetime.now(UTC)
        images = [
            Image(
                request_id=request_id,
                row=row.number,
                position=position,
                input_url=url,
                source_url=_source_url(url, base_dir),
            )
            for row in catalogue.rows
            for position, url in enumerate(row.urls, start=1)
        ]
        request = Request(
            id=request_id,
            status=RequestStatus.PENDING,
            total_images=len(images),
            processed_images=0,
            failed_images=0,
            options=image_options,
            created_at=now,
            updated_at=now,
            callback_url=callback_url,
            owner=owner,
        )
        keys = _Keys(request_id)
        # The catalogue is stored first and the state committed before anything is queued,
        # so a crash at any point leaves either nothing or a request that can be resumed.
        self.storage.put(
            keys.catalogue,
            json.dumps(catalogue.to_dict(), ensure_ascii=False).encode(),
            content_type="application/json",
        )
        self.repository.add_request(request, images)
        self.queue.enqueue([self._image_job(request, image) for image in images])
        return request

    def _check_callback_url(self, url: str) -> None:
        if not isinstance(self.repository, WebhookOutbox):
            raise ConfigurationError(
                f"{type(self.repository).__name__} keeps no webhook outbox, so a callback_url "
                "cannot be delivered"
            )
        try:
            check_callback_url(
                url,
                allow_private_urls=self.settings.allow_private_urls,
                allowed_hosts=self.settings.allowed_hosts,
            )
        except BlockedURL as exc:
            raise InvalidCallbackURL(f"callback_url: {exc}", url=url) from None

    def _options(self, options: ImageOptions | Mapping[str, Any] | None) -> ImageOptions:
        if isinstance(options, ImageOptions):
            return options
        return self.settings.image_options.with_overrides(options or {})

    @staticmethod
    def _image_job(request: Request, image: Image) -> Job:
        return Job(
            id=f"{JOB_PROCESS_IMAGE}:{image.request_id}:{image.row}:{image.position}",
            kind=JOB_PROCESS_IMAGE,
            payload={
                "request_id": image.request_id,
                "row": image.row,
                "position": image.position,
                "source_url": image.source_url,
                "options": request.options.to_dict(),
            },
        )

    # -- jobs --------------------------------------------------------------------------------

    def handle_job(self, job: Job) -> None:
        """Run one job from the queue. Safe to run twice.

        Raises:
            BackendError: The repository failed; the queue should retry the job.
        """
        payload = job.payload
        if job.kind == JOB_PROCESS_IMAGE:
            self.process_image(
                str(payload["request_id"]),
                int(payload["row"]),
                int(payload["position"]),
                source_url=str(payload["source_url"]),
                options=ImageOptions.from_dict(payload["options"]),
            )
        else:
            logger.error("dropping job %s of unknown kind %r", job.id, job.kind)

    def process_image(
        self,
        request_id: str,
        row: int,
        position: int,
        *,
        source_url: str,
        options: ImageOptions,
    ) -> None:
        """Download, re-encode and store one image, record the outcome, finalize if last.

        Every failure of the image itself is recorded on that image only, with its error code.
        """
        with self._recorder.job():
            outcome = self._producer.produce(request_id, row, position, source_url, options)
            updated = self._recorder.record(request_id, row, position, outcome)
        if updated is None:
            # Recorded before (a re-run): make sure a lost finalization still happens.
            updated = self.repository.get_request(request_id)
        if updated.processed_images >= updated.total_images and not updated.is_final:
            self.finalize(request_id)

    def finalize(self, request_id: str) -> bool:
        """Write the output CSV and mark the request final, once all its images are final.

        Safe to call any number of times, from any process: one call at a time holds the
        finalization claim and writes the output CSV (at a fixed key), and only one call moves
        the request to its final status.

        Returns:
            True if this call finalized the request.
        """
        request = self.repository.get_request(request_id)
        if request.is_final or request.processed_images < request.total_images:
            return False
        if not self.repository.claim_finalization(request_id, lease=_FINALIZE_LEASE_SECONDS):
            return False  # another process is finalizing it now
        keys = _Keys(request_id)
        catalogue = Catalogue.from_dict(json.loads(self.storage.get(keys.catalogue)))
        output_urls = {
            (image.row, image.position): self.public_url(image.output_key)
            for image in self.repository.list_images(request_id, status=ImageStatus.DONE)
            if image.output_key
        }
        self.storage.put(
            keys.output_csv,
            render_output_csv(
                catalogue, output_urls, neutralize_formulas=self.settings.neutralize_formulas
            ),
            content_type="text/csv; charset=utf-8",
        )
        everything_failed = request.failed_images >= request.total_images
        status = RequestStatus.FAILED if everything_failed else RequestStatus.COMPLETED
        won = self.repository.finalize_request(request_id, status, keys.output_csv)
        if won:
            logger.info(
                "request %s %s: %d images, %d failed",
                request_id,
                status,
                request.total_images,
                request.failed_images,
            )
        return won

    def deliver_due_webhooks(self, *, limit: int = 100) -> int:
        """Send every webhook that is due, recording each attempt. Safe in many processes.

        Returns:
            How many deliveries were attempted.
        """
        if not isinstance(self.repository, WebhookOutbox):
            return 0
        outbox = self.repository
        claimed = outbox.claim_due_webhooks(
            datetime.now(UTC), lease=_WEBHOOK_LEASE_SECONDS, limit=limit
        )
        for request in claimed:
            if request.webhook is None:
                continue
            result = self.webhook_sender.send(
                request.webhook.url,
                message_id=message_id(request.id),
                payload=build_payload(self._report(request)),
            )
            attempt = request.webhook.attempts + 1
            next_attempt_at = None
            if (
                not result.delivered
                and result.retryable
                and attempt < self.settings.webhook_max_attempts
            ):
                delay = retry_delay(
                    attempt,
                    base=self.settings.webhook_backoff,
                    cap=self.settings.webhook_backoff_max,
                )
                if result.retry_after is not None:  # the receiver asked for a pause
                    delay = min(max(delay, result.retry_after), self.settings.webhook_backoff_max)
                next_attempt_at = datetime.now(UTC) + timedelta(seconds=delay)
            outbox.record_webhook_attempt(
                request.id,
                delivered=result.delivered,
                error=result.error,
                next_attempt_at=next_attempt_at,
            )
            logger.info(
                "webhook for %s: attempt %d %s",
                request.id,
                attempt,
                "delivered" if result.delivered else f"failed ({result.error})",
            )
        return len(claimed)

    def resume(self) -> int:
        """Queue again every pending image of every unfinished request; finalize the rest.

        Run at start, so a process killed mid-request loses nothing. Jobs are idempotent, so
        re-queueing an image that another worker still holds only costs a duplicate download.

        Returns:
            How many image jobs were queued.
        """
        queued = 0
        for request in self.repository.list_unfinished(limit=100_000):
            try:
                pending = self.repository.list_images(request.id, status=ImageStatus.PENDING)
            except RequestNotFound:
                continue
            jobs = [self._image_job(request, image) for image in pending]
            jobs = [job for job in jobs if not self.queue.is_pending(job.id)]
            if jobs:
                self.queue.enqueue(jobs)
                queued += len(jobs)
            elif request.processed_images >= request.total_images:
                try:
                    self.finalize(request.id)
                except BackendError:
                    logger.exception("could not finalize %s; will retry", request.id)
        return queued

    # -- reading -----------------------------------------------------------------------------

    def status(self, request_id: str) -> StatusReport:
        """The status document of a request.

        Raises:
            RequestNotFound: No request has this ID.
        """
        request = self.repository.get_request(request_id)
        return self._report(request)

    def _report(self, request: Request) -> StatusReport:
        output_url = None
        if request.is_final and request.output_key:
            output_url = self.public_url(request.output_key)
        return StatusReport(
            request_id=request.id,
            status=request.status,
            total_images=request.total_images,
            processed_images=request.processed_images,
            failed_images=request.failed_images,
            created_at=request.created_at,
            updated_at=request.updated_at,
            output_csv_url=output_url,
            webhook=request.webhook.to_dict() if request.webhook else None,
        )

    def images(self, request_id: str) -> list[Image]:
        """Every image of a request, by row and position.

        Raises:
            RequestNotFound: No request has this ID.
        """
        return self.repository.list_images(request_id)

    def public_url(self, key: str) -> str:
        """The public URL of a stored key.

        Under ``BULKRESIZE_PUBLIC_URL`` when it is set, else the storage's own ``url()``.
        """
        if self.settings.public_url:
            return f"{self.settings.public_url.rstrip('/')}/{quote(key)}"
        return self.storage.url(key)

    def output_url(self, image: Image) -> str | None:
        """The public URL of a done image's output."""
        return self.public_url(image.output_key) if image.output_key else None

    def output_csv(self, request_id: str) -> bytes:
        """The output CSV of a final request.

        Raises:
            RequestNotFound: No request has this ID.
            RequestNotFinal: The request is not final yet.
        """
        request = self.repository.get_request(request_id)
        if not request.is_final or not request.output_key:
            raise RequestNotFinal(f"request {request_id!r} is {request.status}; not final yet")
        return self.storage.get(request.output_key)

    def wait(
        self,
        request_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.1,
        sweep_after: float = 30.0,
        on_progress: Callable[[StatusReport], None] | None = None,
    ) -> StatusReport:
        """Block until the request is final and return its status.

        With an in-process queue, a request that makes no progress for ``sweep_after`` seconds
        is swept: images still pending with no queued job (a job dropped after repeated
        backend errors) are queued again, so waiting never hangs on lost work.

        Args:
            request_id: The request.
            timeout: Seconds to wait at most; ``None`` waits for ever.
            poll_interval: Seconds between looks at the repository.
            sweep_after: Seconds without progress before a sweep.
            on_progress: Called with each status seen (for progress bars).

        Raises:
            TimeoutError: The request was not final within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last_count, last_change = -1, time.monotonic()
        while True:
            report = self.status(request_id)
            if on_progress is not None:
                on_progress(report)
            if report.status.is_final:
                return report
            now = time.monotonic()
            if report.processed_images != last_count:
                last_count, last_change = report.processed_images, now
            elif self.queue.in_process and now - last_change >= sweep_after:
                self.resume()
                last_change = now
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"request {request_id} is still {report.status}")
            time.sleep(poll_interval)


def create_validator(settings: Settings, *, isolated: bool = False) -> Validator:
    """The configured CSV validator, with the deployment's limits.

    Args:
        settings: The deployment settings.
        isolated: Run it in a child process per CSV (:class:`IsolatedValidator`), so that this
            process never loads the validator's libraries; a missing validator is then
            reported when the first CSV is validated.

    Raises:
        BackendNotFound: ``settings.validator`` names no installed validator.
    """
    limits = {
        "max_rows": settings.max_rows,
        "max_urls_per_row": settings.max_urls_per_row,
        "max_upload_bytes": settings.max_upload_bytes,
    }
    if isolated:
        from bulkresize.validation.isolated import IsolatedValidator

        return IsolatedValidator(settings.validator, limits)
    return create_backend("validator", settings.validator, Validator, **limits)


def _source_url(url: str, base_dir: Path | None) -> str:
    """What to fetch for a URL as written: local paths become absolute ``file://`` URLs."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https") or base_dir is None:
        return url
    if scheme == "file":
        return url
    path = Path(url).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return path.resolve().as_uri()


class _Recorder:
    """Records image outcomes in batches: one transaction for all the images done meanwhile.

    A job hands its outcome over and waits until it is committed, so a job still ends only
    after its image is durably recorded. A batch waits up to ``_LINGER`` for the outcomes of
    the other jobs in flight, and not at all once they are all in, so an idle pipeline writes
    each outcome at once.
    """

    _BATCH = 64
    #: How long a batch may wait for the outcomes of jobs still in flight: about one write
    #: under load, so batches are larger and writes (each a commit under the GIL) fewer. 2,000
    #: tiny images: 148/s with no wait (two outcomes a batch), 217/s with 20 ms (eight).
    _LINGER = 0.02

    def __init__(self, repository: Repository) -> None:
        self._repository = repository
        self._pending: queue.SimpleQueue[
            tuple[tuple[str, int, int, ImageOutcome], concurrent.futures.Future[Request | None]]
            | None
        ] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._active = 0  # jobs in job() that have not handed their outcome over yet
        self._local = threading.local()

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        """Mark a job in flight, so that a batch waits (briefly) for its outcome too."""
        with self._lock:
            self._active += 1
        self._local.in_flight = True
        try:
            yield
        finally:
            self._leave()

    def _leave(self) -> None:
        """The calling thread's job is no longer awaited (its outcome is in, or it failed)."""
        if getattr(self._local, "in_flight", False):
            self._local.in_flight = False
            with self._lock:
                self._active -= 1

    def record(
        self, request_id: str, row: int, position: int, outcome: ImageOutcome
    ) -> Request | None:
        """``Repository.record_image``, batched with the outcomes of other threads."""
        future: concurrent.futures.Future[Request | None] = concurrent.futures.Future()
        # Out of the count before the outcome is in the queue: a writer that saw the count
        # first would wait out the linger for an outcome it already has.
        self._leave()
        with self._lock:
            if self._thread is None:  # started on first use: nothing runs before it is needed
                self._thread = threading.Thread(
                    target=self._run, name="bulkresize-recorder", daemon=True
                )
                self._thread.start()
            self._pending.put(((request_id, row, position, outcome), future))
        return future.result()

    def close(self) -> None:
        """Write what is waiting, then stop."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._pending.put(None)
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            item = self._pending.get()
            if item is None:
                return
            batch = [item]
            deadline = time.monotonic() + self._LINGER
            while len(batch) < self._BATCH:
                # Wait only while some job in flight has yet to hand its outcome over.
                wait = deadline - time.monotonic() if self._active else 0.0
                try:
                    more = (
                        self._pending.get(timeout=wait) if wait > 0 else self._pending.get_nowait()
                    )
                except queue.Empty:
                    break
                if more is None:
                    self._write(batch)
                    return
                batch.append(more)
            self._write(batch)

    def _write(
        self,
        batch: list[
            tuple[tuple[str, int, int, ImageOutcome], concurrent.futures.Future[Request | None]]
        ],
    ) -> None:
        try:
            results = self._repository.record_images([record for record, _ in batch])
            if len(results) != len(batch):  # a broken backend must not stop this thread
                raise RepositoryError(f"record_images gave {len(results)} results for {len(batch)}")
        except RequestNotFound:
            # One unknown image must not fail the others: record them one by one.
            for record, future in batch:
                try:
                    future.set_result(self._repository.record_image(*record))
                except Exception as exc:  # handed to the job that owns it
                    future.set_exception(exc)
            return
        except Exception as exc:  # the job retries, as it would after its own failure
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)


def process_csv(
    source: str | Path | BinaryIO,
    output: str | Path | BinaryIO | None = None,
    *,
    settings: Settings | None = None,
    on_progress: Callable[[StatusReport], None] | None = None,
    **options: Any,
) -> StatusReport:
    """Run the whole pipeline on one CSV and block until the request is final.

    Local image paths in the CSV are resolved against the CSV's folder (for a file object,
    the current folder).

    Args:
        source: A path to the CSV, or a binary file object.
        output: Where to write the output CSV, a path or a binary file object; optional (it is
            also kept in storage, at the status's ``output_csv_url``).
        settings: The deployment; default ``Settings.from_env()``.
        on_progress: Called with each status seen while waiting.
        **options: Image options for this request: ``quality``, ``format``, ``max_width``,
            ``max_height``.

    Returns:
        The final status: ``request_id``, ``status``, ``total_images``, ``processed_images``,
        ``failed_images``, ``output_csv_url`` …

    Raises:
        ValidationFailed: The CSV breaks a rule; ``problems`` lists every one.
        UploadTooLarge: The CSV is over ``max_upload_bytes``.
        InvalidOption: An option is out of range.
        BackendNotFound: A configured backend is not installed.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        data = path.read_bytes()
        base_dir = path.resolve().parent
    else:
        data = source.read()
        base_dir = Path.cwd()
    with Pipeline.from_settings(settings) as pipeline:
        pipeline.start()
        request = pipeline.submit(data, options=options, base_dir=base_dir)
        report = pipeline.wait(request.id, on_progress=on_progress)
        if output is not None:
            csv_bytes = pipeline.output_csv(request.id)
            if isinstance(output, (str, Path)):
                Path(output).write_bytes(csv_bytes)
            else:
                output.write(csv_bytes)
    return report
