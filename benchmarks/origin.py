"""A loopback image origin in its own process, with optional latency per response.

Run as ``python -m benchmarks.origin FOLDER [--latency SECONDS]``; it prints its port and
serves every file of FOLDER from memory at ``/<name>`` (any query string is ignored, so each
image of a request can have its own URL) until stdin closes.
"""

from __future__ import annotations

import argparse
import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

__all__ = ["OriginProcess"]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real origins do
    # Headers and body go out in two writes; with Nagle's algorithm the body then waits for
    # the client's delayed ACK of the headers, 40 ms on Linux, which capped every download.
    disable_nagle_algorithm = True
    files: dict[str, bytes] = {}
    arrivals: dict[str, float] = {}
    latency = 0.0

    def do_GET(self) -> None:  # http.server's naming
        self.arrivals[self.path] = time.time()  # for per-image latency: arrival → stored
        body = self.files.get(self.path.split("?", 1)[0])
        if self.latency:
            time.sleep(self.latency)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header(
            "Content-Type", "image/jpeg" if self.path.endswith(".jpg") else "image/png"
        )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a benchmark's origin logs nothing."""


def _serve(folder: Path, latency: float, log: Path | None) -> None:
    handler = type(
        "Handler",
        (_Handler,),
        {
            "files": {f"/{path.name}": path.read_bytes() for path in folder.iterdir()},
            "latency": latency,
            "arrivals": {},
        },
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.request_queue_size = 256
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    server.shutdown()
    if log is not None:
        log.write_text(json.dumps(handler.arrivals))


class OriginProcess:
    """Starts the origin in a child process; ``url(name)`` addresses a file of the folder."""

    def __init__(self, folder: Path, latency: float = 0.0, log: Path | None = None) -> None:
        command = [
            sys.executable,
            "-m",
            "benchmarks.origin",
            str(folder),
            "--latency",
            str(latency),
        ]
        self._process = subprocess.Popen(
            [*command, *(["--log", str(log)] if log else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        self.port = int(self._process.stdout.readline())

    def url(self, name: str) -> str:
        """The URL of one file."""
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        """Stop the origin."""
        if self._process.stdin:
            self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--log", type=Path, help="write {path: arrival time} here at the end")
    arguments = parser.parse_args()
    _serve(arguments.folder, arguments.latency, arguments.log)
