"""The `bulkresize` commands as real processes, with images from a loopback origin."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest
from PIL import Image

from commands import bulkresize_command
from images import (
    encode,
    jpeg_with_orientation,
    mean_colour,
    photo,
    quality_50_tables,
    transparent_png,
)
from origin import Origin, Response

REPO = Path(__file__).resolve().parents[2]


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.reader(file))


def open_output(url: str) -> Image.Image:
    assert url.startswith("file://"), url
    path = Path(url2pathname(urlsplit(url).path))
    return Image.open(io.BytesIO(path.read_bytes()))


@pytest.fixture
def catalogue(origin: Origin, corpus_dir: Path, tmp_path: Path) -> dict[str, str]:
    """Serve one image of every kind the acceptance asks about; returns name → URL."""
    cmyk = (corpus_dir / "pil_sample_cmyk.jpg").read_bytes()
    urls = {
        "rotated": origin.add("/rotated.jpg", jpeg_with_orientation(6)),
        "plain": origin.add("/plain.jpg", encode(photo(200, 100), "JPEG", quality=95)),
        "alpha": origin.add(
            "/alpha.png", transparent_png(), headers={"Content-Type": "text/plain"}
        ),
        "cmyk": origin.add("/cmyk.jpg", cmyk),
        "cmyk_reference": origin.add("/rgb.jpg", (corpus_dir / "pil_sample_rgb.jpg").read_bytes()),
        "missing": origin.url("/missing.jpg"),
        "not_image": origin.add(
            "/page.jpg",
            b"<html><body>hello</body></html>" * 20,
            headers={"Content-Type": "image/jpeg"},
        ),
        "bomb": origin.add("/bomb.gif", (corpus_dir / "decompression_bomb.gif").read_bytes()),
        "huge": origin.add("/huge.jpg", b"\xff\xd8\xff" + b"\0" * 400_000, chunked=True),
        "slow": origin.add("/slow.jpg", encode(photo(), "JPEG"), drip=0.2, drip_size=200),
        "flaky": origin.add_sequence(
            "/flaky.jpg",
            [
                Response(b"busy", status=503),
                Response(encode(photo(150, 150, seed=3), "JPEG", quality=90)),
            ],
        ),
    }
    return urls


ENV = {
    "BULKRESIZE_ALLOW_PRIVATE_URLS": "true",
    "BULKRESIZE_MAX_IMAGE_BYTES": "300000",
    "BULKRESIZE_FETCH_TIMEOUT": "2",
    "BULKRESIZE_RETRY_BACKOFF": "0.05",
}


def write_input(path: Path, urls: dict[str, str]) -> list[list[str]]:
    rows = [
        ["S. No.", "Product Name", "Input Image Urls", "Notes, free text"],
        [
            "1",
            "Rotated, with GPS",
            f"{urls['rotated']}, {urls['missing']},{urls['plain']}",
            'keeps "quotes"\nand newlines',
        ],
        ["2", "Alpha & CMYK", f"{urls['alpha']},{urls['cmyk']},,{urls['cmyk_reference']},", ""],
        ["3", '=HYPERLINK("http://evil")', f"{urls['not_image']}, {urls['bomb']}", "x"],
        ["4", "Limits", f"{urls['huge']},{urls['slow']},{urls['flaky']}", "-5"],
    ]
    with path.open("w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows(rows)
    return rows


def test_process_writes_the_output_csv_and_fails_only_the_bad_images(
    run_cli, catalogue: dict[str, str], origin: Origin, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    rows = write_input(source, catalogue)
    output = tmp_path / "out.csv"

    result = run_cli("process", str(source), "-o", str(output), env=ENV)

    assert result.returncode == 0, result.stderr + result.stdout
    assert "completed" in result.stdout
    assert "11 total, 6 done, 5 failed" in result.stdout
    written = read_csv(output)
    # Same columns and values, plus the output column; formulas neutralised.
    assert written[0] == [*rows[0], "Output Image Urls"]
    assert written[1][:4] == rows[1]
    assert written[2][:4] == rows[2]
    assert written[3][:4] == ["3", '\'=HYPERLINK("http://evil")', rows[3][2], "x"]
    assert written[4][:4] == ["4", "Limits", rows[4][2], "'-5"]

    cells = [row[4].split(",") for row in written[1:]]
    # Failed images keep their input URL at their exact position; the rest are outputs.
    assert cells[0][1] == catalogue["missing"]
    assert cells[1][0] != catalogue["alpha"] and len(cells[1]) == 3
    assert cells[2] == [catalogue["not_image"], catalogue["bomb"]]
    assert cells[3][:2] == [catalogue["huge"], catalogue["slow"]]
    request_id = re.search(r"request ([0-9a-f]{32})", result.stdout).group(1)
    for row_number, row_cells in enumerate(cells, start=1):
        for position, url in enumerate(row_cells, start=1):
            if url.startswith("file://"):
                assert url.endswith(f"{request_id}/{row_number}-{position}.jpg")

    tables = quality_50_tables()
    outputs = {
        "rotated": open_output(cells[0][0]),
        "plain": open_output(cells[0][2]),
        "alpha": open_output(cells[1][0]),
        "cmyk": open_output(cells[1][1]),
        "cmyk_reference": open_output(cells[1][2]),
        "flaky": open_output(cells[3][2]),
    }
    for name, image in outputs.items():
        assert image.format == "JPEG", name
        assert image.quantization == tables, f"{name} is not quality 50"
        assert not image.getexif(), f"{name} kept EXIF"
        assert "icc_profile" not in image.info, name
    # EXIF orientation 6 is applied: the stored 300×200 comes out 200×300.
    assert outputs["rotated"].size == (200, 300)
    # Transparency flattened onto white (left half), opaque red kept (right half).
    assert min(mean_colour(outputs["alpha"], (5, 5, 50, 115))) > 245
    red = mean_colour(outputs["alpha"], (70, 5, 115, 115))
    assert red[0] > 230 and red[1] < 30 and red[2] < 30
    # CMYK comes out in sRGB, close to the RGB version of the same picture.
    cmyk, reference = outputs["cmyk"].convert("RGB"), outputs["cmyk_reference"].convert("RGB")
    diffs = [
        abs(a - b)
        for a, b in zip(
            mean_colour(cmyk, (0, 0, 100, 100)),
            mean_colour(reference, (0, 0, 100, 100)),
            strict=True,
        )
    ]
    assert max(diffs) < 12, diffs
    # The 503 was retried once and then served.
    assert origin.hits("/flaky.jpg") == 2
    assert [path for _, path, _ in origin.requests].count("/missing.jpg") == 1  # 404: no retry

    status = run_cli("status", request_id, env=ENV)
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["status"] == "completed"
    assert (document["total_images"], document["processed_images"], document["failed_images"]) == (
        11,
        11,
        5,
    )
    errors = {image["input_url"]: image["error"] for image in document["images"]}
    assert errors == {
        catalogue["missing"]: "http_status",
        catalogue["not_image"]: "not_an_image",
        catalogue["bomb"]: "too_many_pixels",
        catalogue["huge"]: "too_large",
        catalogue["slow"]: "timeout",
    }


def test_process_exits_1_when_every_image_fails(run_cli, origin: Origin, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(f"S. No.,Product Name,Input Image Urls\n1,A,{origin.url('/gone.jpg')}\n")
    result = run_cli("process", str(source), env=ENV)
    assert result.returncode == 1, result.stderr
    assert "failed" in result.stdout
    assert (tmp_path / "in-output.csv").exists()


def test_validate_prints_every_problem_and_exits_2(run_cli, tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_text(
        "S.No.,Product Name,Image URLs\n"
        "1,Shoe,https://img.example/a.jpg\n"
        "2,,https://img.example/b.jpg\n"
        "3,Hat,ftp://x\n"
        "1,Bag,https://img.example/c.jpg\n"
    )
    result = run_cli("validate", str(source))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert "row 3, column 'Image URLs': 'ftp://x' is not an http(s) URL" in lines
    assert any(line.startswith("row 2, column 'Product Name':") for line in lines)
    assert any(line.startswith("row 4, column 'S.No.':") for line in lines)
    assert "3 problems" in result.stderr


def test_validate_accepts_a_good_csv(run_cli, tmp_path: Path) -> None:
    source = tmp_path / "good.csv"
    source.write_text("S. No.,Product Name,Input Image Urls\n1,A,https://img.example/a.jpg\n")
    result = run_cli("validate", str(source))
    assert result.returncode == 0, result.stderr
    assert "valid: 1 rows, 1 images" in result.stdout


def test_process_of_an_invalid_csv_exits_2_and_processes_nothing(
    run_cli, origin: Origin, tmp_path: Path
) -> None:
    source = tmp_path / "bad.csv"
    source.write_text(f"Product Name,Input Image Urls\nA,{origin.url('/a.jpg')}\n")
    result = run_cli("process", str(source), env=ENV)
    assert result.returncode == 2
    assert "S. No." in result.stderr
    assert origin.requests == []


def test_bad_option_is_a_usage_error(run_cli, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("S. No.,Product Name,Input Image Urls\n1,A,https://img.example/a.jpg\n")
    result = run_cli("process", str(source), "--quality", "0")
    assert result.returncode == 2


def test_unknown_backend_scheme_is_one_clear_line(run_cli, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("S. No.,Product Name,Input Image Urls\n1,A,https://img.example/a.jpg\n")
    result = run_cli("process", str(source), env={"BULKRESIZE_STORAGE_URL": "gcs://bucket/x"})
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no storage backend for 'gcs://'; available:")
    assert "Traceback" not in result.stderr


def test_status_of_an_unknown_request(run_cli) -> None:
    result = run_cli("status", "nope")
    assert result.returncode == 1
    assert "no request 'nope'" in result.stderr


def test_backends_lists_every_port(run_cli) -> None:
    result = run_cli("backends")
    assert result.returncode == 0, result.stderr
    for port, scheme in [
        ("storage", "file"),
        ("storage", "s3"),
        ("queue", "local"),
        ("repository", "sqlite"),
        ("validator", "pandera"),
        ("engine", "pillow"),
    ]:
        assert re.search(rf"^{port}\s+{re.escape(scheme)}\s", result.stdout, re.MULTILINE), (
            port,
            scheme,
        )
    assert "bulkresize" in result.stdout


def test_the_shipped_example_runs_offline(run_cli, tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(
        REPO / "examples",
        examples,
        ignore=shutil.ignore_patterns("*-output.csv", "bulkresize-data"),
    )
    result = run_cli("process", "examples/products.csv", "-o", "products-output.csv")
    assert result.returncode == 0, result.stderr + result.stdout
    written = read_csv(tmp_path / "products-output.csv")
    assert written[0][-1] == "Output Image Urls"
    assert "0 failed" in result.stdout
    for row in written[1:]:
        for url in row[-1].split(","):
            assert open_output(url).format == "JPEG"


def test_process_shows_a_progress_bar_on_a_terminal_only(run_cli, tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(REPO / "examples", examples)
    primary, secondary = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKRESIZE_")}
    env["BULKRESIZE_DATA_DIR"] = str(tmp_path / "data")
    process = subprocess.run(
        [*bulkresize_command(), "process", "examples/products.csv"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=secondary,
        timeout=120,
        check=False,
    )
    os.close(secondary)
    terminal = b""
    while select.select([primary], [], [], 0.5)[0]:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    os.close(primary)
    assert process.returncode == 0
    assert b"images" in terminal and b"100%" in terminal
    piped = run_cli("process", "examples/products.csv")
    assert "%" not in piped.stderr  # no bar when stderr is not a terminal


def test_process_refuses_an_output_folder_that_does_not_exist(
    run_cli, origin: Origin, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(f"S. No.,Product Name,Input Image Urls\n1,A,{origin.url('/a.jpg')}\n")
    result = run_cli("process", str(source), "-o", str(tmp_path / "nope" / "out.csv"), env=ENV)
    assert result.returncode == 2
    assert "no such folder" in result.stderr
    assert origin.requests == []


def _producers_for(data_dir: Path) -> list[int]:
    """Live producer processes (any parent) whose environment names this data dir."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if b"bulkresize.producing" in command and f"={data_dir}\0".encode() in environ:
            found.append(int(proc.name))
    return found


def test_ctrl_c_leaves_images_pending_and_no_producer_behind(
    origin: Origin, tmp_path: Path
) -> None:
    """Ctrl-C from a terminal reaches the command, not its producer processes."""
    urls = [
        origin.add(f"/{n}.jpg", encode(photo(64, 48, seed=n), "JPEG"), delay=0.4) for n in range(12)
    ]
    source = tmp_path / "in.csv"
    source.write_text(
        "S. No.,Product Name,Input Image Urls\n"
        + "".join(f"{n},P{n},{url}\n" for n, url in enumerate(urls, start=1))
    )
    data_dir = tmp_path / "data"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BULKRESIZE_")}
    environment.update(
        ENV,
        BULKRESIZE_DATA_DIR=str(data_dir),
        BULKRESIZE_PROCESSES="2",
        BULKRESIZE_DOWNLOAD_CONCURRENCY="2",
    )
    process = subprocess.Popen(
        [*bulkresize_command(), "process", str(source)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job has
    )
    try:
        deadline = time.monotonic() + 60
        while sum(origin.hits(f"/{n}.jpg") for n in range(12)) < 3:
            assert time.monotonic() < deadline, "no image was fetched"
            time.sleep(0.05)
        assert len(_producers_for(data_dir)) == 2
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "keeps its pending images" in stderr
    deadline = time.monotonic() + 10
    while _producers_for(data_dir):
        assert time.monotonic() < deadline, "a producer process outlived the command"
        time.sleep(0.05)
    request_id = re.search(r"request ([0-9a-f]{32})", stderr)
    assert request_id is not None, stderr
    status = subprocess.run(
        [*bulkresize_command(), "status", request_id.group(1)],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    document = json.loads(status.stdout)
    assert document["failed_images"] == 0  # the interrupt failed nothing: pending, or done
    assert document["status"] in ("pending", "processing")
