"""The third-party storage plug-in in examples/storage_plugin, installed beside bulkresize.

It registers the ``folder`` scheme through the ``bulkresize.storage`` entry point group. These
tests need it installed (``pip install ./examples/storage_plugin``; ``nox -s tests`` does): they
are skipped without it locally, and fail without it when ``CI=true``.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest

import bulkresize
from services import unavailable

REPO = Path(__file__).resolve().parents[2]
PLUGIN_MISSING = importlib.util.find_spec("bulkresize_folder") is None


@pytest.fixture(autouse=True)
def _plugin_installed() -> None:
    """Skip locally, fail in CI, when the plug-in is not installed."""
    if PLUGIN_MISSING:
        unavailable(
            "the bulkresize-folder-storage plug-in",
            "it is not installed (pip install ./examples/storage_plugin)",
        )


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A copy of examples/, so nothing is written into the source tree."""
    copy = tmp_path / "examples"
    shutil.copytree(REPO / "examples", copy, ignore=shutil.ignore_patterns("storage_plugin"))
    return copy


def _output_urls(output: Path) -> list[str]:
    with output.open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0][-1] == "Output Image Urls"
    assert len(rows) == 5  # the header and the catalogue's four products
    return [url.strip() for row in rows[1:] for url in row[-1].split(",") if url.strip()]


def _assert_stored_in_folder(urls: list[str], folder: Path) -> None:
    assert len(urls) == 6, urls
    for url in urls:
        assert url.startswith("folder:///"), url
        path = Path(url2pathname(urlsplit(url).path))
        assert path.is_relative_to(folder), (path, folder)
        assert path.is_file(), path
        assert path.stat().st_size > 0


def test_backends_lists_the_plugin_with_its_package(run_cli) -> None:
    version = importlib.metadata.version("bulkresize-folder-storage")
    result = run_cli("backends")
    assert result.returncode == 0, result.stderr
    line = re.compile(
        r"^storage\s+folder\s+bulkresize_folder:FolderStorage\s+"
        rf"bulkresize-folder-storage {re.escape(version)}\s+ok$",
        re.MULTILINE,
    )
    assert line.search(result.stdout), result.stdout


def test_process_command_stores_outputs_through_the_plugin(
    run_cli, examples: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "objects"
    output = tmp_path / "out.csv"
    result = run_cli(
        "process",
        str(examples / "products.csv"),
        "-o",
        str(output),
        env={"BULKRESIZE_STORAGE_URL": f"folder://{folder}"},
    )
    assert result.returncode == 0, result.stderr
    _assert_stored_in_folder(_output_urls(output), folder)
    assert not (tmp_path / "data" / "files").exists()  # nothing went to the default storage


def test_process_csv_stores_outputs_through_the_plugin(examples: Path, tmp_path: Path) -> None:
    folder = tmp_path / "objects"
    output = tmp_path / "out.csv"
    settings = bulkresize.Settings(data_dir=tmp_path / "data", storage_url=f"folder://{folder}")
    report = bulkresize.process_csv(examples / "products.csv", output, settings=settings)
    assert report.status is bulkresize.RequestStatus.COMPLETED
    assert (report.total_images, report.failed_images) == (6, 0)
    assert report.output_csv_url is not None
    assert report.output_csv_url.startswith("folder:///")
    _assert_stored_in_folder(_output_urls(output), folder)
    with bulkresize.Pipeline.from_settings(settings) as pipeline:
        assert type(pipeline.storage).__name__ == "FolderStorage"
