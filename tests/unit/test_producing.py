"""Images produced in child processes: the same results, and a crash costs only its images.

Linux only, like the pipeline's process tree checks: they read ``/proc``.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest

import bulkresize
from bulkresize import ImageStatus, RequestStatus, Settings, producing
from bulkresize.engines.pillow import PillowEngine
from bulkresize.errors import ConfigurationError
from bulkresize.producing import child_processes
from bulkresize.settings import available_cpus
from crashers import CRASH
from images import encode, photo
from origin import Origin


def _settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", allow_private_urls=True, fetch_retries=0, **changes)


def _producers() -> int:
    """How many live children of this process run ``python -m bulkresize.producing``."""
    count = 0
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue  # it ended meanwhile
            count += b"bulkresize.producing" in command and state != "Z"
    return count


def _csv(urls: list[str]) -> bytes:
    lines = ["S. No.,Product Name,Input Image Urls"]
    lines += [f"{n},Item {n},{url}" for n, url in enumerate(urls, start=1)]
    return ("\n".join(lines) + "\n").encode()


def test_children_produce_what_this_process_would(origin: Origin, tmp_path: Path) -> None:
    urls = [
        origin.add(f"/{n}.jpg", encode(photo(64, 48, seed=n), "JPEG", quality=90)) for n in range(8)
    ]
    outputs = {}
    for processes in (0, 2):
        settings = _settings(tmp_path / str(processes), processes=processes)
        with bulkresize.Pipeline.from_settings(settings) as pipeline:
            pipeline.start()
            request = pipeline.submit(_csv(urls))
            report = pipeline.wait(request.id, timeout=60)
            assert report.status is RequestStatus.COMPLETED
            assert _producers() == processes  # started with the first image, still there
            images = pipeline.images(request.id)
            assert [image.status for image in images] == [ImageStatus.DONE] * 8
            outputs[processes] = [pipeline.storage.get(image.output_key or "") for image in images]
        assert _producers() == 0  # closing the pipeline stops them
    assert outputs[2] == outputs[0]  # byte for byte


def test_a_child_that_dies_fails_the_image_it_held_and_is_replaced(
    origin: Origin, tmp_path: Path
) -> None:
    good = [origin.add(f"/{n}.jpg", encode(photo(64, 48, seed=n), "JPEG")) for n in range(4)]
    bad = origin.add("/bad.jpg", encode(photo(64, 48), "JPEG") + CRASH)
    # One child with one download at a time: the crash catches exactly one image in hand.
    settings = _settings(
        tmp_path, processes=1, download_concurrency=1, engine="crashers:DyingEngine"
    )
    with bulkresize.Pipeline.from_settings(settings) as pipeline:
        pipeline.start()
        request = pipeline.submit(_csv([good[0], good[1], bad, good[2], good[3]]))
        report = pipeline.wait(request.id, timeout=60)
        images = pipeline.images(request.id)
    assert report.status is RequestStatus.COMPLETED
    assert (report.processed_images, report.failed_images) == (5, 1)
    [failed] = [image for image in images if image.status is ImageStatus.FAILED]
    assert failed.input_url == bad
    assert failed.error == "internal_error"
    assert failed.error_message == "the process handling this image died (exit code 70)"


def test_children_that_cannot_start_fail_every_image_once_and_are_not_restarted(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKRESIZE_TEST_PARENT", str(os.getpid()))
    urls = [origin.add(f"/{n}.jpg", encode(photo(64, 48, seed=n), "JPEG")) for n in range(6)]
    settings = _settings(tmp_path, processes=2, engine="crashers:EngineThatFailsInChildren")
    with bulkresize.Pipeline.from_settings(settings) as pipeline:
        pipeline.start()
        request = pipeline.submit(_csv(urls))
        report = pipeline.wait(request.id, timeout=60)
        images = pipeline.images(request.id)
        assert _producers() == 0  # none started over and over
    assert report.status is RequestStatus.FAILED
    assert {image.error for image in images} == {"internal_error"}
    assert {image.error_message for image in images} == {
        "the process to handle this image could not start (exit code 1)"
    }


def test_child_processes_default_to_one_per_cpu_when_the_backends_can_be_shared() -> None:
    cpus = min(available_cpus(), 16)
    assert child_processes(Settings(), can_share=True) == (cpus if cpus > 1 else 0)
    assert child_processes(Settings(download_concurrency=1), can_share=True) == 0


def test_child_processes_default_to_none_off_posix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producing, "os", types.SimpleNamespace(name="nt"))  # this module's
    assert child_processes(Settings(), can_share=True) == 0
    assert child_processes(Settings(processes=2), can_share=True) == 2  # asked for: as asked
    assert child_processes(Settings(), can_share=False) == 0
    assert child_processes(Settings(processes=3), can_share=False) == 3
    assert child_processes(Settings(processes=0), can_share=True) == 0


def test_children_are_refused_beside_an_injected_engine(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="engine was given"):
        bulkresize.Pipeline.from_settings(_settings(tmp_path, processes=2), engine=PillowEngine())


def test_children_are_refused_with_memory_storage(tmp_path: Path) -> None:
    settings = _settings(tmp_path, processes=2, storage_url="memory://producing-test")
    with pytest.raises(ConfigurationError, match="memory:// is private"):
        bulkresize.Pipeline.from_settings(settings)


def test_memory_storage_keeps_the_work_in_this_process(origin: Origin, tmp_path: Path) -> None:
    url = origin.add("/a.jpg", encode(photo(64, 48), "JPEG"))
    settings = _settings(tmp_path, storage_url="memory://producing-test")
    with bulkresize.Pipeline.from_settings(settings) as pipeline:
        pipeline.start()
        request = pipeline.submit(_csv([url]))
        assert pipeline.wait(request.id, timeout=60).status is RequestStatus.COMPLETED
        assert _producers() == 0


def test_processes_is_read_from_the_environment() -> None:
    assert Settings.from_env({"BULKRESIZE_PROCESSES": "3"}).processes == 3
    with pytest.raises(ConfigurationError, match="processes must be 0 or more"):
        Settings.from_env({"BULKRESIZE_PROCESSES": "-1"})
