"""A loopback HTTP origin for tests: serves images, errors, redirects and slow bodies."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Response:
    """One canned response.

    Attributes:
        body: What the origin sends.
        status: The HTTP status.
        headers: Extra headers (``Content-Length`` is added unless ``chunked``).
        delay: Seconds to wait before the status line.
        drip: When set, the body is sent in ``drip_size`` pieces with this many seconds between.
        drip_size: Bytes per piece when dripping.
        chunked: Send the body chunked, with no ``Content-Length``.
        drop_after: When set, send the headers (announcing the whole body) and only this many
            bytes of the body, then close the connection, as a crashing server would.
    """

    body: bytes = b""
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drip: float | None = None
    drip_size: int = 1024
    chunked: bool = False
    drop_after: int | None = None


@dataclass
class Route:
    responses: list[Response]
    hits: int = 0

    def next(self) -> Response:
        response = self.responses[min(self.hits, len(self.responses) - 1)]
        self.hits += 1
        return response


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connections when many clients connect at once, and the
    # kernel's retry after a dropped SYN adds a one-second stall that breaks timing tests.
    request_queue_size = 128

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that closes a kept-alive connection mid-wait is normal, not a test failure.
        if isinstance(sys.exc_info()[1], ConnectionResetError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class Origin:
    """A threaded HTTP server on 127.0.0.1 with routes set by the test."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        #: Every POST received, as ``(path, headers, body)``, in order.
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        #: The client's address of every request: one per TCP connection, reused by keep-alive.
        self.peers: list[tuple[str, int]] = []
        #: The most requests that were being answered at once.
        self.most_at_once = 0
        self._at_once = 0
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output quiet

            def do_GET(self) -> None:
                origin._serve(self)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                origin._serve(self, body=self.rfile.read(length))

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval so that shutting the origin down after each test takes milliseconds.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, body: bytes = b"", **options: object) -> str:
        """Serve ``body`` at ``path``; options as in :class:`Response`. Returns the URL."""
        return self.add_sequence(path, [Response(body, **options)])  # type: ignore[arg-type]

    def add_sequence(self, path: str, responses: Sequence[Response]) -> str:
        """Serve ``responses`` at ``path`` in turn, repeating the last one."""
        with self._lock:
            self._routes[path] = Route(list(responses))
        return self.url(path)

    def hits(self, path: str) -> int:
        with self._lock:
            route = self._routes.get(path)
            return route.hits if route else 0

    def _serve(self, handler: BaseHTTPRequestHandler, body: bytes | None = None) -> None:
        path = handler.path.split("?", 1)[0]
        with self._lock:
            self.requests.append((handler.command, handler.path, dict(handler.headers)))
            self.peers.append(handler.client_address[:2])
            self._at_once += 1
            self.most_at_once = max(self.most_at_once, self._at_once)
            if body is not None:
                self.posts.append((handler.path, dict(handler.headers), body))
            route = self._routes.get(path)
            response = route.next() if route else Response(b"not found", status=404)
        try:
            if response.delay:
                time.sleep(response.delay)
            handler.send_response(response.status)
            for name, value in response.headers.items():
                handler.send_header(name, value)
            if response.chunked:
                handler.send_header("Transfer-Encoding", "chunked")
            else:
                handler.send_header("Content-Length", str(len(response.body)))
            handler.end_headers()
            if handler.command == "HEAD":
                return
            if response.drop_after is not None:
                handler.wfile.write(response.body[: response.drop_after])
                handler.wfile.flush()
                handler.close_connection = True  # the server closes the socket after this
                return
            for piece in _pieces(response):
                if response.chunked:
                    handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                else:
                    handler.wfile.write(piece)
                handler.wfile.flush()
                if response.drip:
                    time.sleep(response.drip)
            if response.chunked:
                handler.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should on limits and timeouts
        finally:
            with self._lock:
                self._at_once -= 1

    def __enter__(self) -> Origin:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _pieces(response: Response) -> Iterator[bytes]:
    if not response.drip and not response.chunked:
        yield response.body
        return
    size = response.drip_size
    for start in range(0, len(response.body), size):
        yield response.body[start : start + size]
