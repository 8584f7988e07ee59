"""Every corpus file, cut short at random points, through the whole embedded pipeline."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

import bulkresize
from bulkresize import ImageStatus, RequestStatus, Settings
from bulkresize.errors import (
    DecodeError,
    DownloadError,
    NotAnImage,
    ProcessingTimeout,
    TooManyPixels,
)
from origin import Origin

#: What a cut-off image may fail with: never internal_error, never a crash.
EXPECTED_CODES = {
    error.code
    for error in (DecodeError, NotAnImage, TooManyPixels, DownloadError, ProcessingTimeout)
}


@pytest.mark.slow
def test_truncated_corpus_files_fail_cleanly_and_leave_no_files(
    origin: Origin, corpus_dir: Path, tmp_path: Path
) -> None:
    rng = random.Random(20261129)
    urls: list[str] = []
    for path in sorted(corpus_dir.iterdir()):
        if path.suffix.lower() in (".csv", ".md"):
            continue
        data = path.read_bytes()
        for cut in sorted({rng.randrange(1, len(data)) for _ in range(2)} | {len(data) // 2}):
            urls.append(origin.add(f"/{path.name}-{cut}", data[:cut]))
    rows = "".join(f"{n},Cut {n},{url}\n" for n, url in enumerate(urls, start=1))
    csv = f"S. No.,Product Name,Input Image Urls\n{rows}".encode()
    settings = Settings(
        data_dir=tmp_path / "data", allow_private_urls=True, fetch_retries=0, image_timeout=30
    )

    started = time.monotonic()
    report = bulkresize.process_csv(csv_source(tmp_path, csv), settings=settings)
    elapsed = time.monotonic() - started

    assert report.status is RequestStatus.COMPLETED, report
    assert report.processed_images == len(urls)
    with bulkresize.Pipeline.from_settings(settings) as pipeline:
        images = pipeline.images(report.request_id)
    files = tmp_path / "data" / "files"
    stored = {path.relative_to(files).as_posix() for path in files.rglob("*") if path.is_file()}
    failed = [image for image in images if image.status is ImageStatus.FAILED]
    assert {image.error for image in failed} <= EXPECTED_CODES, {
        (image.input_url.rsplit("/", 1)[-1], image.error, image.error_message)
        for image in failed
        if image.error not in EXPECTED_CODES
    }
    # Only finished outputs and the output CSV are on disk: no temporary or partial file.
    done_keys = {image.output_key for image in images if image.status is ImageStatus.DONE}
    request_files = {f"{report.request_id}/{name}" for name in ("output.csv", "catalogue.json")}
    assert stored == done_keys | request_files
    assert elapsed < 120


def csv_source(folder: Path, data: bytes) -> Path:
    path = folder / "cut.csv"
    path.write_bytes(data)
    return path
