"""`bulkresize.process_csv` and `Pipeline` from Python, images from a loopback origin."""

from __future__ import annotations

import csv
import io
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

import bulkresize
from bulkresize import ImageStatus, RequestStatus, Settings
from bulkresize.errors import InvalidOption, ValidationFailed
from bulkresize.models import ImageOutcome
from images import encode, photo
from origin import Origin


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", allow_private_urls=True, retry_backoff=0.01, fetch_timeout=5
    )


def test_process_csv_from_a_file_object(origin: Origin, settings: Settings) -> None:
    a = origin.add("/a.jpg", encode(photo(400, 300), "JPEG", quality=95))
    b = origin.add("/b.png", encode(photo(100, 100), "PNG"))
    header = "Serial Number,product name ,IMAGE URLS\n"
    source = io.BytesIO(f'{header}7,Lamp,"{a}, {b}"\n8,Desk,{origin.url("/x")}\n'.encode())
    output = io.BytesIO()

    report = bulkresize.process_csv(source, output, settings=settings, quality=30, max_width=200)

    assert report.status is RequestStatus.COMPLETED
    assert (report.total_images, report.processed_images, report.failed_images) == (3, 3, 1)
    assert report.output_csv_url and report.output_csv_url.endswith("/output.csv")
    rows = list(csv.reader(io.StringIO(output.getvalue().decode())))
    assert rows[0] == ["Serial Number", "product name ", "IMAGE URLS", "Output Image Urls"]
    first, second = rows[1][3].split(",")
    assert rows[2][3] == origin.url("/x")
    pipeline = bulkresize.Pipeline.from_settings(settings)
    try:
        images = pipeline.images(report.request_id)
        assert [(i.row, i.position, i.status) for i in images] == [
            (1, 1, ImageStatus.DONE),
            (1, 2, ImageStatus.DONE),
            (2, 1, ImageStatus.FAILED),
        ]
        stored = pipeline.storage.get(images[0].output_key or "")
        assert stored == Path(first.removeprefix("file://")).read_bytes()
    finally:
        pipeline.close()
    out = Image.open(io.BytesIO(Path(first.removeprefix("file://")).read_bytes()))
    assert out.size == (200, 150)  # fit inside the box, aspect kept
    with Image.open(Path(second.removeprefix("file://"))) as kept:
        assert kept.size == (100, 100)  # never upscaled


def test_process_csv_with_local_paths_writes_the_output_file(
    tmp_path: Path, settings: Settings
) -> None:
    folder = tmp_path / "catalogue"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "a.png").write_bytes(encode(photo(50, 40), "PNG"))
    source = folder / "products.csv"
    source.write_text(
        "S. No.,Product Name,Input Image Urls\n"
        f'1,Local,"img/a.png,{(folder / "img" / "a.png").as_uri()}"\n'
    )
    report = bulkresize.process_csv(source, tmp_path / "out.csv", settings=settings)
    assert report.status is RequestStatus.COMPLETED
    assert report.failed_images == 0
    assert (tmp_path / "out.csv").read_text().count(".jpg") == 2


def test_process_csv_reports_every_problem(settings: Settings) -> None:
    source = io.BytesIO(b"S. No.,Product Name,Input Image Urls\n1,,ftp://x\n1,B,\n")
    with pytest.raises(ValidationFailed) as raised:
        bulkresize.process_csv(source, settings=settings)
    assert len(raised.value.problems) >= 4
    assert {p.row for p in raised.value.problems} == {1, 2}


def test_process_csv_rejects_a_bad_option(settings: Settings) -> None:
    with pytest.raises(InvalidOption):
        bulkresize.process_csv(io.BytesIO(b"x"), settings=settings, quality=120)


def test_a_slow_url_does_not_hold_up_the_others(origin: Origin, settings: Settings) -> None:
    slow = origin.add("/slow.jpg", encode(photo(), "JPEG"), delay=3)
    fast = [origin.add(f"/f{n}.jpg", encode(photo(seed=n), "JPEG")) for n in range(10)]
    cells = ",".join([slow, *fast])
    data = f'S. No.,Product Name,Input Image Urls\n1,A,"{cells}"\n'.encode()
    with bulkresize.Pipeline.from_settings(settings) as pipeline:
        pipeline.start()
        started = time.monotonic()
        request = pipeline.submit(data)
        deadline = started + 2.5
        while time.monotonic() < deadline:
            done = pipeline.images(request.id)
            if sum(i.status is ImageStatus.DONE for i in done) == 10:
                break
            time.sleep(0.05)
        finished_fast = time.monotonic() - started
        statuses = {i.position: i.status for i in pipeline.images(request.id)}
        assert statuses[1] is ImageStatus.PENDING, "the slow image finished too early"
        assert all(statuses[p] is ImageStatus.DONE for p in range(2, 12)), finished_fast
        report = pipeline.wait(request.id, timeout=30)
        assert report.status is RequestStatus.COMPLETED and report.failed_images == 0


def test_a_job_run_twice_counts_once_and_finalizes_once(origin: Origin, settings: Settings) -> None:
    url = origin.add("/a.jpg", encode(photo(), "JPEG"))
    data = f"S. No.,Product Name,Input Image Urls\n1,A,{url}\n".encode()
    pipeline = bulkresize.Pipeline.from_settings(settings)
    try:
        request = pipeline.submit(data)  # not started: we run the job by hand
        options = bulkresize.ImageOptions()
        threads = [
            threading.Thread(
                target=pipeline.process_image,
                args=(request.id, 1, 1),
                kwargs={"source_url": url, "options": options},
            )
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        report = pipeline.status(request.id)
        assert report.status is RequestStatus.COMPLETED
        assert (report.processed_images, report.failed_images) == (1, 0)
        assert origin.hits("/a.jpg") == 4
    finally:
        pipeline.close()


def test_a_lost_finalization_is_redone_on_resume(origin: Origin, settings: Settings) -> None:
    url = origin.add("/a.jpg", encode(photo(), "JPEG"))
    data = f"S. No.,Product Name,Input Image Urls\n1,A,{url}\n".encode()
    pipeline = bulkresize.Pipeline.from_settings(settings)
    try:
        request = pipeline.submit(data)
        # Record the image behind the service's back, as a worker that died before finalizing.
        pipeline.repository.record_image(
            request.id,
            1,
            1,
            ImageOutcome(ImageStatus.FAILED, error="timeout", error_message="gave up"),
        )
        assert pipeline.status(request.id).status is RequestStatus.PROCESSING
    finally:
        pipeline.close()
    with bulkresize.Pipeline.from_settings(settings) as restarted:
        restarted.start()  # resumes
        report = restarted.wait(request.id, timeout=10)
        assert report.status is RequestStatus.FAILED  # every image failed
        assert restarted.output_csv(request.id).decode().splitlines()[1].endswith(url)


def test_pending_images_are_resumed_after_a_restart(origin: Origin, settings: Settings) -> None:
    urls = [origin.add(f"/r{n}.jpg", encode(photo(seed=n), "JPEG")) for n in range(5)]
    data = ('S. No.,Product Name,Input Image Urls\n1,A,"' + ",".join(urls) + '"\n').encode()
    first = bulkresize.Pipeline.from_settings(settings)
    request = first.submit(data)  # accepted, but this process "dies" before running anything
    first.close()
    assert origin.requests == []
    with bulkresize.Pipeline.from_settings(settings) as second:
        second.start()
        report = second.wait(request.id, timeout=20)
    assert report.status is RequestStatus.COMPLETED
    assert report.processed_images == 5 and report.failed_images == 0


def test_waiting_sweeps_up_a_job_the_queue_gave_up_on(
    origin: Origin, settings: Settings, tmp_path: Path
) -> None:
    from bulkresize.errors import RepositoryError
    from bulkresize.queues.local import LocalQueue
    from bulkresize.repositories.sql import SQLRepository

    class FlakyRepository(SQLRepository):
        """Fails the first three attempts to record an image, as a locked database would."""

        failures = 3

        def record_images(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if self.failures:
                self.failures -= 1
                raise RepositoryError("database is locked")
            return super().record_images(*args, **kwargs)

    url = origin.add("/a.jpg", encode(photo(), "JPEG"))
    data = f"S. No.,Product Name,Input Image Urls\n1,A,{url}\n".encode()
    repository = FlakyRepository.from_url(f"sqlite:///{tmp_path / 'flaky.db'}")
    queue = LocalQueue(workers=2, max_attempts=3, retry_delay=0.01)
    with bulkresize.Pipeline.from_settings(
        settings, repository=repository, queue=queue
    ) as pipeline:
        pipeline.start()
        request = pipeline.submit(data)
        report = pipeline.wait(request.id, timeout=20, sweep_after=0.5)
    assert report.status is RequestStatus.COMPLETED
    assert repository.failures == 0
    assert origin.hits("/a.jpg") == 4  # three dropped attempts, then the swept job


def test_public_url_is_the_base_of_every_output_link(origin: Origin, settings: Settings) -> None:
    url = origin.add("/a.jpg", encode(photo(), "JPEG"))
    source = io.BytesIO(f"S. No.,Product Name,Input Image Urls\n1,A,{url}\n".encode())
    output = io.BytesIO()
    report = bulkresize.process_csv(
        source, output, settings=settings.replace(public_url="https://cdn.example.com/img/")
    )
    assert report.output_csv_url == f"https://cdn.example.com/img/{report.request_id}/output.csv"
    rows = list(csv.reader(io.StringIO(output.getvalue().decode())))
    assert rows[1][3] == f"https://cdn.example.com/img/{report.request_id}/1-1.jpg"


def test_exactly_one_finalizer_writes_the_output_csv(origin: Origin, settings: Settings) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from bulkresize.storage.fsspec import FsspecStorage

    class CountingStorage(FsspecStorage):
        """Counts writes of output CSVs, slowly, so concurrent finalizers would overlap."""

        csv_writes = 0

        def put(self, key: str, data: bytes, *, content_type: str) -> None:
            if key.endswith("/output.csv"):
                type(self).csv_writes += 1
                time.sleep(0.2)
            super().put(key, data, content_type=content_type)

    url = origin.add("/a.jpg", encode(photo(), "JPEG"))
    data = f"S. No.,Product Name,Input Image Urls\n1,A,{url}\n".encode()
    storage = CountingStorage.from_url(settings.resolved_storage_url)
    with bulkresize.Pipeline.from_settings(settings, storage=storage) as pipeline:
        request = pipeline.submit(data)  # not started: the image is recorded by hand
        pipeline.repository.record_image(
            request.id, 1, 1, ImageOutcome(ImageStatus.FAILED, error="timeout", error_message="x")
        )
        with ThreadPoolExecutor(8) as pool:
            wins = list(pool.map(lambda _: pipeline.finalize(request.id), range(8)))
        assert wins.count(True) == 1
        assert CountingStorage.csv_writes == 1
        assert pipeline.status(request.id).status is RequestStatus.FAILED


def test_an_image_that_takes_too_long_to_encode_fails_alone(
    origin: Origin, settings: Settings
) -> None:
    from bulkresize.engines.pillow import PillowEngine
    from bulkresize.models import EncodedImage, ImageOptions

    class SlowOnOne(PillowEngine):
        """Takes 3 s on 1×1 images, as a decoder would on a pathological file."""

        def process(self, data: bytes, options: ImageOptions) -> EncodedImage:
            if Image.open(io.BytesIO(data)).size == (1, 1):
                time.sleep(3)
            return super().process(data, options)

    slow = origin.add("/slow.png", encode(photo(1, 1), "PNG"))
    fine = [origin.add(f"/f{n}.jpg", encode(photo(seed=n), "JPEG")) for n in range(4)]
    data = f'S. No.,Product Name,Input Image Urls\n1,A,"{",".join([slow, *fine])}"\n'.encode()
    # One encode thread: the images queued behind the slow one wait for it, and must not be
    # charged for that wait.
    limited = settings.replace(image_timeout=1.0, encode_workers=1, download_concurrency=1)
    with bulkresize.Pipeline.from_settings(limited, engine=SlowOnOne()) as pipeline:
        pipeline.start()
        started = time.monotonic()
        report = pipeline.wait(pipeline.submit(data).id, timeout=20)
        elapsed = time.monotonic() - started
        images = pipeline.images(report.request_id)
    assert report.status is RequestStatus.COMPLETED
    assert [(i.status, i.error) for i in images] == [
        (ImageStatus.FAILED, "processing_timeout"),
        *[(ImageStatus.DONE, None)] * 4,
    ]
    assert "longer than 1 s" in (images[0].error_message or "")
    assert elapsed < 10


def test_allowed_hosts_open_the_guard_for_those_hosts_only(
    origin: Origin, settings: Settings
) -> None:
    picture = encode(photo(), "JPEG")
    named = origin.add("/a.jpg", picture).replace("127.0.0.1", "localhost")
    literal = origin.add("/b.jpg", picture)
    data = f'S. No.,Product Name,Input Image Urls\n1,A,"{named},{literal}"\n'.encode()
    guarded = settings.replace(allow_private_urls=False, allowed_hosts=("LOCALHOST",))
    report = bulkresize.process_csv(io.BytesIO(data), settings=guarded)
    with bulkresize.Pipeline.from_settings(guarded) as pipeline:
        images = pipeline.images(report.request_id)
    assert [(i.status, i.error) for i in images] == [
        (ImageStatus.DONE, None),
        (ImageStatus.FAILED, "blocked_url"),
    ]
    assert origin.hits("/b.jpg") == 0
