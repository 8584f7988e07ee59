"""A webhook receiver for bulkresize: verifies the signature, then handles each message once.

The same logic as the receiver in docs/webhooks.md, with only the standard library and the
official ``standardwebhooks`` package: the signature is checked on the raw body; a valid
message is answered 204 and printed (once per ``webhook-id``), anything else 400 (which
bulkresize does not retry).

Run it with the same ``whsec_…`` secret that bulkresize signs with::

    $ export BULKRESIZE_WEBHOOK_SECRET=whsec_5zF4k/LQNGvMy6uKAKGlM+Va4Ai1+y75zP1wrzNIRyU=
    $ python examples/webhook_receiver.py --port 9000

and give ``callback_url=http://127.0.0.1:9000/hooks/bulkresize`` with an upload. Or import it:
``make_server(secret, port)`` returns the ``HTTPServer``; call ``serve_forever()`` on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

Event = dict[str, Any]


def print_event(event: Event) -> None:
    print(event["type"], event["request_id"], event.get("output_csv_url"), flush=True)


def make_server(
    secret: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    on_event: Callable[[Event], None] = print_event,
) -> HTTPServer:
    """A receiver for ``secret`` on ``host:port`` (0 picks a free port), not yet serving.

    Args:
        secret: The ``whsec_…`` secret bulkresize signs with (``BULKRESIZE_WEBHOOK_SECRET``).
        port: The port to listen on.
        host: The address to listen on.
        on_event: Called with each verified event, once per ``webhook-id``; default prints it.
    """
    webhook = Webhook(secret)
    handled: set[str] = set()  # keep this in your database in real life
    lock = threading.Lock()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                # Checks webhook-signature against the raw body, and that webhook-timestamp
                # is within 5 minutes of now; returns the parsed JSON.
                event = webhook.verify(body, dict(self.headers))
            except WebhookVerificationError as exc:
                self.send_response(400)  # any 4xx but 408/429: bulkresize does not retry
                self.send_header("Content-Length", "0")
                self.end_headers()
                print("refused:", exc, flush=True)
                return
            message_id = self.headers["webhook-id"]  # msg_<request_id>, the same on every retry
            with lock:
                first = message_id not in handled
                handled.add(message_id)
            if first:
                on_event(event)
            self.send_response(204)  # any 2xx means delivered
            self.end_headers()

    server = ThreadingHTTPServer((host, port), Receiver)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    secret = os.environ.get("BULKRESIZE_WEBHOOK_SECRET")
    if not secret:
        sys.exit("error: set BULKRESIZE_WEBHOOK_SECRET to the whsec_… secret bulkresize uses")
    server = make_server(secret, args.port, host=args.host)
    print(f"listening on http://{args.host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
