"""The Litestar mount example and the webhook receiver example, over loopback only."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient
from standardwebhooks import Webhook

from bulkresize import Settings
from images import encode, photo
from origin import Origin
from server import ServeProcess, free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SECRET = "whsec_5zF4k/LQNGvMy6uKAKGlM+Va4Ai1+y75zP1wrzNIRyU="
HEADER = "S. No.,Product Name,Input Image Urls,Category\n"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` by path, as a module of its own."""
    module_name = f"bulkresize_example_{name}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # Litestar resolves the handlers' annotations through it
    spec.loader.exec_module(module)
    return module


# -- examples/litestar_mount.py ----------------------------------------------------------------


def test_the_mount_example_keeps_its_own_routes_and_serves_bulkresize_under_bulk(
    tmp_path: Path, origin: Origin
) -> None:
    mount = load_example("litestar_mount")
    url = origin.add("/shoe.jpg", encode(photo(), "JPEG"))
    app = mount.build_app(Settings(data_dir=tmp_path, allow_private_urls=True))
    with TestClient(app) as client:
        hello = client.get("/hello")
        assert hello.status_code == 200
        assert hello.json() == {"message": "hello from my app"}

        assert client.get("/stats").json() == {"unfinished_requests": 0}

        accepted = client.post(
            "/bulk/v1/requests",
            files={"file": ("products.csv", f"{HEADER}1,Shoe,{url},shoes\n", "text/csv")},
        )
        assert accepted.status_code == 202, accepted.text
        request_id = accepted.json()["request_id"]
        assert accepted.json()["total_images"] == 1

        deadline = time.monotonic() + 60
        while True:
            document = client.get(f"/bulk/v1/requests/{request_id}").json()
            if document["status"] in ("completed", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert document["status"] == "completed", document
        assert document["processed_images"] == 1
        assert document["failed_images"] == 0

        stats = client.get("/stats")
        assert stats.status_code == 200
        assert stats.json() == {"unfinished_requests": 0}
        # Not mounted at the root: the routes moved under the prefix.
        assert client.get(f"/v1/requests/{request_id}").status_code == 404


# -- examples/webhook_receiver.py --------------------------------------------------------------


class RunningReceiver:
    """The example's server in a thread, keeping every verified event."""

    def __init__(self, secret: str) -> None:
        receiver = load_example("webhook_receiver")
        self.events: list[dict[str, Any]] = []
        self.received = threading.Condition()
        self.server = receiver.make_server(secret, free_port(), on_event=self._record)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def _record(self, event: dict[str, Any]) -> None:
        with self.received:
            self.events.append(event)
            self.received.notify_all()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hooks/bulkresize"

    def wait_for(self, count: int, timeout: float) -> bool:
        with self.received:
            return self.received.wait_for(lambda: len(self.events) >= count, timeout)


@pytest.fixture
def receiver() -> Iterator[RunningReceiver]:
    running = RunningReceiver(SECRET)
    running.thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


def test_the_receiver_example_accepts_a_signed_body_and_refuses_a_tampered_one(
    receiver: RunningReceiver,
) -> None:
    assert receiver.url.startswith("http://127.0.0.1:")
    body = json.dumps(
        {"type": "request.completed", "request_id": "abc", "output_csv_url": None},
        separators=(",", ":"),
    )
    now = datetime.now(UTC)
    headers = {
        "webhook-id": "msg_abc",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign("msg_abc", now, body),
        "content-type": "application/json",
    }
    good = httpx.post(receiver.url, content=body.encode(), headers=headers, timeout=10)
    assert good.status_code == 204
    tampered = body.replace('"abc"', '"abd"')
    bad = httpx.post(receiver.url, content=tampered.encode(), headers=headers, timeout=10)
    assert bad.status_code == 400
    unsigned = {k: v for k, v in headers.items() if k != "webhook-signature"}
    assert httpx.post(receiver.url, content=body, headers=unsigned, timeout=10).status_code == 400
    # Only the verified message was handled, once.
    assert receiver.events == [json.loads(body)]


def test_the_receiver_example_verifies_a_real_delivery_from_serve(
    tmp_path: Path, origin: Origin, receiver: RunningReceiver
) -> None:
    url = origin.add("/bag.jpg", encode(photo(seed=2), "JPEG"))
    serve = ServeProcess(
        tmp_path / "data",
        {"BULKRESIZE_ALLOW_PRIVATE_URLS": "true", "BULKRESIZE_WEBHOOK_SECRET": SECRET},
    ).start()
    try:
        accepted = httpx.post(
            f"{serve.base_url}/v1/requests",
            files={"file": ("products.csv", f"{HEADER}1,Bag,{url},bags\n".encode(), "text/csv")},
            data={"callback_url": receiver.url},
            timeout=30,
        )
        assert accepted.status_code == 202, accepted.text
        request_id = accepted.json()["request_id"]
        assert receiver.wait_for(1, timeout=60), serve.output()
        # The receiver sees the event before serve reads its 204 and records the delivery.
        deadline = time.monotonic() + 30
        while True:
            status = httpx.get(f"{serve.base_url}/v1/requests/{request_id}", timeout=10).json()
            if status["webhook"]["status"] != "pending" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        serve.stop()
    event = receiver.events[0]
    assert event["type"] == "request.completed"
    assert event["request_id"] == request_id
    assert event["processed_images"] == 1
    assert status["webhook"]["status"] == "delivered"
