"""`bulkresize serve` as a real process: it serves, processes, links outputs to /files/."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from serving import csv_of

from commands import bulkresize_command
from images import encode, photo
from origin import Origin


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKRESIZE_")}
    env["BULKRESIZE_DATA_DIR"] = str(tmp_path / "data")
    env["BULKRESIZE_ALLOW_PRIVATE_URLS"] = "true"
    env.update(extra)
    return env


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`bulkresize serve --host 0.0.0.0 --port N`, up and answering /healthz."""
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [*bulkresize_command(), "serve", "--host", "0.0.0.0", "--port", str(port)],
        env=environment(tmp_path),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def test_serve_processes_and_links_outputs_to_its_files_route(
    served: tuple[str, subprocess.Popen[str]], origin: Origin
) -> None:
    url, process = served
    image = origin.add("/a.jpg", encode(photo(80, 60), "JPEG", quality=95))
    with httpx.Client(base_url=url, timeout=10) as client:
        response = client.post("/v1/requests", files={"file": ("a.csv", csv_of((1, "x", image)))})
        assert response.status_code == 202, response.text
        status_url = response.json()["status_url"]
        assert status_url.startswith(f"{url}/v1/requests/")
        deadline = time.monotonic() + 20
        while (document := client.get(status_url).json())["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert document["status"] == "completed"
        # Listening on 0.0.0.0, the links use 127.0.0.1 and this server's port.
        assert document["output_csv_url"] == f"{url}/files/{document['request_id']}/output.csv"
        (entry,) = client.get(f"{status_url}/images").json()
        assert entry["output_url"].startswith(f"{url}/files/")
        output = client.get(entry["output_url"])
        assert output.status_code == 200 and output.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(output.content)).format == "JPEG"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0


def test_serve_with_a_backend_that_is_not_installed_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [*bulkresize_command(), "serve", "--port", str(free_port())],
        env=environment(tmp_path, BULKRESIZE_STORAGE_URL="gcs://bucket/prefix"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "gcs" in result.stderr


def test_serve_with_a_malformed_variable_is_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [*bulkresize_command(), "serve"],
        env=environment(tmp_path, BULKRESIZE_QUALITY="high"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "BULKRESIZE_QUALITY" in result.stderr
