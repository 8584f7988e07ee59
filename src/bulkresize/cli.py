"""The ``bulkresize`` command line (DESIGN §5)."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from bulkresize.__about__ import __version__
from bulkresize.errors import (
    BulkResizeError,
    ConfigurationError,
    InvalidOption,
    RequestNotFound,
    UploadTooLarge,
    ValidationFailed,
)
from bulkresize.models import FORMATS, ImageStatus, RequestStatus, StatusReport
from bulkresize.registry import available_backends
from bulkresize.settings import Settings

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130


class _Failed(click.ClickException):
    """An error message on stderr and exit code 1, never a traceback."""

    exit_code = EXIT_FAILED

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class _Invalid(_Failed):
    """Invalid input or usage: exit code 2."""

    exit_code = EXIT_INVALID


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigurationError as exc:
        raise _Invalid(str(exc)) from None


@contextmanager
def _errors() -> Iterator[None]:
    """Map bulkresize errors to messages and the exit codes of DESIGN §5."""
    try:
        yield
    except ValidationFailed as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        count = len(exc.problems)
        raise _Invalid(f"invalid CSV: {count} problem{'s' if count != 1 else ''}") from None
    except (UploadTooLarge, InvalidOption, ConfigurationError) as exc:
        raise _Invalid(str(exc)) from None
    except RequestNotFound as exc:
        raise _Failed(str(exc)) from None
    except BulkResizeError as exc:
        raise _Failed(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bulkresize")
def main() -> None:
    """Bulk image compression from a CSV of product image URLs.

    Configuration comes from BULKRESIZE_* environment variables (see docs/configuration.md).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("csv_file", metavar="IN.csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the output CSV. Default: IN-output.csv beside the input.",
)
@click.option("--quality", type=click.IntRange(1, 95), help="Encoder quality, 1-95.")
@click.option("--format", "image_format", type=click.Choice(FORMATS), help="Output format.")
@click.option("--max-width", type=click.IntRange(min=1), help="Fit inside this width.")
@click.option("--max-height", type=click.IntRange(min=1), help="Fit inside this height.")
def process(
    csv_file: Path,
    output: Path | None,
    quality: int | None,
    image_format: str | None,
    max_width: int | None,
    max_height: int | None,
) -> None:
    """Run the whole pipeline on IN.csv and write the output CSV.

    Exit code 0 when the request completed, 1 when it failed, 2 for an invalid CSV or usage.
    """
    from bulkresize.service import Pipeline, create_validator  # lazy: `--help` stays fast

    if not csv_file.is_file():
        raise _Invalid(f"no such file: {csv_file}")
    output = output or csv_file.with_name(f"{csv_file.stem}-output.csv")
    if not output.parent.is_dir():  # fail before the work, not after it
        raise _Invalid(f"cannot write {output}: no such folder {output.parent}")
    options = {
        "quality": quality,
        "format": image_format,
        "max_width": max_width,
        "max_height": max_height,
    }
    settings = _settings()
    # The CSV is checked in a child process: this one, which then fetches and encodes every
    # image, never holds pandas and pyarrow, nor the memory that parsing a large CSV takes.
    validator = create_validator(settings, isolated=True)
    with _errors(), Pipeline.from_settings(settings, validator=validator) as pipeline:
        pipeline.start()
        request = pipeline.submit(
            csv_file.read_bytes(), options=options, base_dir=csv_file.resolve().parent
        )
        try:
            with _progress(request.total_images) as on_progress:
                report = pipeline.wait(request.id, on_progress=on_progress)
        except KeyboardInterrupt:
            # Accepted work is in the database: the next run with this data dir resumes it.
            click.echo(
                f"\ninterrupted: request {request.id} keeps its pending images; any later "
                "bulkresize process that uses this data dir resumes them",
                err=True,
            )
            sys.exit(EXIT_INTERRUPTED)
        try:
            output.write_bytes(pipeline.output_csv(request.id))
        except OSError as exc:
            raise _Failed(
                f"cannot write {output}: {exc.strerror}; the output CSV is stored at "
                f"{report.output_csv_url}"
            ) from None
        _print_summary(report, output)
        failures = [
            image for image in pipeline.images(request.id) if image.status is ImageStatus.FAILED
        ]
        for image in failures[:20]:
            click.echo(
                f"  row {image.row}, image {image.position}: {image.error}: "
                f"{image.error_message} ({image.input_url})"
            )
        if len(failures) > 20:
            click.echo(f"  … and {len(failures) - 20} more (bulkresize status {request.id})")
    sys.exit(EXIT_OK if report.status is RequestStatus.COMPLETED else EXIT_FAILED)


@contextmanager
def _progress(total: int) -> Iterator[Callable[[StatusReport], None]]:
    """A progress bar on a terminal; nothing when stderr is a pipe or a file."""
    if not sys.stderr.isatty():
        yield lambda report: None
        return
    with click.progressbar(length=total, label="images", file=sys.stderr) as bar:
        seen = 0

        def on_progress(report: StatusReport) -> None:
            nonlocal seen
            bar.update(report.processed_images - seen)
            seen = report.processed_images

        yield on_progress


def _print_summary(report: StatusReport, output: Path) -> None:
    done = report.processed_images - report.failed_images
    click.echo(f"request {report.request_id}: {report.status}")
    click.echo(f"images: {report.total_images} total, {done} done, {report.failed_images} failed")
    click.echo(f"output CSV: {output}")
    if report.output_csv_url:
        click.echo(f"stored at: {report.output_csv_url}")


@main.command()
@click.argument("csv_file", metavar="IN.csv", type=click.Path(dir_okay=False, path_type=Path))
def validate(csv_file: Path) -> None:
    """Validate IN.csv only; print every problem. Exit 0 when valid, 2 when not."""
    from bulkresize.service import create_validator

    if not csv_file.is_file():
        raise _Invalid(f"no such file: {csv_file}")
    settings = _settings()
    with _errors():
        validator = create_validator(settings)
        catalogue = validator.validate(csv_file.read_bytes(), allow_local_files=True)
    click.echo(f"valid: {len(catalogue.rows)} rows, {catalogue.total_images} images")


@main.command()
@click.argument("request_id")
def status(request_id: str) -> None:
    """Print the status document of REQUEST_ID as JSON."""
    from bulkresize.service import Pipeline

    settings = _settings()
    with _errors(), Pipeline.from_settings(settings) as pipeline:
        report = pipeline.status(request_id)
        document = report.to_dict()
        document["images"] = [
            {
                "row": image.row,
                "position": image.position,
                "input_url": image.input_url,
                "output_url": pipeline.output_url(image),
                "status": str(image.status),
                "error": image.error,
                "error_message": image.error_message,
            }
            for image in pipeline.images(request_id)
            if image.status is ImageStatus.FAILED
        ]
    click.echo(json.dumps(document, indent=2))


@main.command()
def backends() -> None:
    """List every backend and plug-in found, per port, with its package."""
    rows = [
        (
            info.port,
            info.scheme,
            info.target,
            info.distribution,
            "ok" if info.error is None else info.error,
        )
        for info in available_backends()
    ]
    header = ("port", "scheme", "class", "package", "status")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        click.echo("  ".join([*cells, row[4]]).rstrip())


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port."
)
def serve(host: str, port: int) -> None:
    """Run the HTTP service (Litestar on uvicorn).

    With the embedded queue (the default) this process also processes the images. When
    BULKRESIZE_PUBLIC_URL is unset and storage is local, output URLs point at this server's
    /files/ route.
    """
    try:
        import uvicorn

        from bulkresize.service import Pipeline
        from bulkresize.web import create_app
    except ImportError as exc:
        hint = "pip install 'bulkresize[server]'"
        raise _Invalid(f"the HTTP service needs Litestar and uvicorn ({exc}): {hint}") from None
    settings = _settings()
    if not settings.public_url and settings.resolved_storage_url.startswith("file:"):
        settings = settings.replace(public_url=f"{_base_url(host, port)}/files")
    # Built here, not in the app's startup, so that a backend that is not installed is one
    # line and exit code 2 rather than a server traceback; the app starts and closes it.
    with _errors():
        pipeline = Pipeline.from_settings(settings)
    app = create_app(pipeline=pipeline)
    uvicorn.run(app, host=host, port=port, log_level="info", lifespan="on")


@main.command()
@click.option("--burst", is_flag=True, help="Quit once the queue is empty.")
def worker(burst: bool) -> None:
    """Run a worker for the distributed queue (BULKRESIZE_QUEUE_URL=redis://...).

    It builds the pipeline from the same settings as the API, resumes what dead processes left
    behind, sweeps for lost jobs and delivers due webhooks, and runs jobs until SIGTERM or
    Ctrl+C (after the running batch; a second signal abandons it, to be retried later), or
    with --burst until the queue is empty. Exit code 2 when the queue is the embedded
    local:// one.
    """
    from bulkresize.service import Pipeline, create_validator

    settings = _settings()
    logging.getLogger("bulkresize").setLevel(logging.INFO)
    # A worker never validates a CSV: the isolated validator loads nothing until asked, so the
    # worker does not hold pandas, pyarrow and pandera (about 120 MB) for nothing.
    validator = create_validator(settings, isolated=True)
    # Outside RQ's work loop (which has its own handlers), SIGTERM interrupts like Ctrl+C, so
    # the pipeline is closed either way.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with _errors(), Pipeline.from_settings(settings, validator=validator) as pipeline:
            pipeline.work(burst=burst)
    except KeyboardInterrupt:
        click.echo("interrupted: the worker stopped", err=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _base_url(host: str, port: int) -> str:
    """The URL clients on this machine reach the server at, for a listening address."""
    if host in ("", "0.0.0.0", "::", "[::]"):  # noqa: S104  # listening on all addresses
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"
