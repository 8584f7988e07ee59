"""`bulkresize serve` as a real process, over real HTTP, with images and a webhook receiver on
loopback servers (issue 3's acceptance)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from standardwebhooks.webhooks import Webhook

from images import encode, photo, quality_50_tables
from origin import Origin
from receiver import WebhookReceiver
from server import ServeProcess

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ENV = {
    "BULKRESIZE_ALLOW_PRIVATE_URLS": "true",
    "BULKRESIZE_WEBHOOK_SECRET": SECRET,
    "BULKRESIZE_WEBHOOK_BACKOFF": "0.3",
    "BULKRESIZE_RETRY_BACKOFF": "0.05",
}
HEADER = "S. No.,Product Name,Input Image Urls,Notes\n"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path / "data", ENV).start()
    yield process
    process.stop()


def upload(base_url: str, data: bytes, **fields: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/requests",
        files={"file": ("products.csv", data, "text/csv")},
        data=fields,
        timeout=30,
    )


def poll(base_url: str, request_id: str, timeout: float = 60) -> list[dict[str, object]]:
    """Every status document seen until the request is final."""
    seen: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        document = httpx.get(f"{base_url}/v1/requests/{request_id}", timeout=10).json()
        seen.append(document)
        if document["status"] in ("completed", "failed"):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"not final in {timeout} s: {seen[-1]}")


def test_a_request_runs_to_completion_and_its_webhook_is_retried_and_signed(
    serve: ServeProcess, origin: Origin
) -> None:
    urls = [
        origin.add(
            f"/p{n}.jpg", encode(photo(320, 240, seed=n), "JPEG", quality=95), delay=0.4 + 0.2 * n
        )
        for n in range(5)
    ]
    missing = origin.add("/missing.jpg", b"gone", status=404, delay=0.4)
    data = (
        HEADER
        + f'1,Shoe,"{urls[0]},{missing}",a\n'
        + f'2,Hat,"{urls[1]}, {urls[2]}",b\n'
        + f'3,Bag,"{urls[3]},{urls[4]}",c\n'
    ).encode()
    with WebhookReceiver([500, 200]) as receiver:
        accepted = upload(serve.base_url, data, callback_url=receiver.url)
        assert accepted.status_code == 202, accepted.text
        body = accepted.json()
        assert set(body) == {"request_id", "status", "total_images", "status_url"}
        assert (body["status"], body["total_images"]) == ("pending", 6)
        request_id = body["request_id"]
        assert body["status_url"] == f"{serve.base_url}/v1/requests/{request_id}"

        seen = poll(serve.base_url, request_id)
        statuses = [
            s
            for i, s in enumerate(d["status"] for d in seen)
            if i == 0 or s != seen[i - 1]["status"]
        ]
        assert statuses == ["pending", "processing", "completed"], statuses
        final = seen[-1]
        assert (final["total_images"], final["processed_images"], final["failed_images"]) == (
            6,
            6,
            1,
        )

        images = httpx.get(f"{serve.base_url}/v1/requests/{request_id}/images").json()
        assert len(images) == 6
        failed = [i for i in images if i["status"] == "failed"]
        assert [(i["row"], i["position"], i["input_url"], i["error"]) for i in failed] == [
            (1, 2, missing, "http_status")
        ]

        output = httpx.get(f"{serve.base_url}/v1/requests/{request_id}/output.csv")
        assert output.status_code == 200
        assert output.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(output.text)))
        assert rows[0] == [
            "S. No.",
            "Product Name",
            "Input Image Urls",
            "Notes",
            "Output Image Urls",
        ]
        assert rows[1][4].split(",")[1] == missing  # the failure keeps its place
        tables = quality_50_tables()
        outputs = [u for row in rows[1:] for u in row[4].split(",") if u != missing]
        assert len(outputs) == 5
        for url in outputs:
            assert url.startswith(f"{serve.base_url}/files/{request_id}/")
            fetched = httpx.get(url)
            assert fetched.status_code == 200
            image = Image.open(io.BytesIO(fetched.content))
            assert image.format == "JPEG"
            assert image.quantization == tables

        assert receiver.wait_for(2, timeout=30), serve.output()
        first, second = receiver.deliveries[:2]
        assert (first.answered, second.answered) == (500, 200)
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        payload = Webhook(SECRET).verify(second.body.decode(), second.headers)
        assert payload == {
            "type": "request.completed",
            "request_id": request_id,
            "status": "completed",
            "total_images": 6,
            "processed_images": 6,
            "failed_images": 1,
            "output_csv_url": f"{serve.base_url}/files/{request_id}/output.csv",
        }
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            webhook = httpx.get(f"{serve.base_url}/v1/requests/{request_id}").json()["webhook"]
            if webhook["status"] == "delivered":
                break
            time.sleep(0.1)
        assert webhook == {"url": receiver.url, "status": "delivered", "attempts": 2}


def test_raw_csv_compatibility_routes_and_errors(serve: ServeProcess, origin: Origin) -> None:
    url = origin.add("/a.jpg", encode(photo(), "JPEG"))
    raw = httpx.post(
        f"{serve.base_url}/v1/requests?quality=40",
        content=f"{HEADER}1,A,{url},x\n".encode(),
        headers={"Content-Type": "text/csv"},
    )
    assert raw.status_code == 202, raw.text
    assert poll(serve.base_url, raw.json()["request_id"])[-1]["status"] == "completed"

    job = httpx.post(
        f"{serve.base_url}/jobs",
        files={"file": ("p.csv", f"{HEADER}1,A,{url},x\n".encode(), "text/csv")},
    )
    assert job.status_code == 202, job.text
    job_id = job.json()["job_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = httpx.get(f"{serve.base_url}/jobs", params={"job_id": job_id}).json()
        if state["status"] == "completed":
            break
        time.sleep(0.1)
    assert state["job_id"] == job_id and state["status"] == "completed"

    invalid = upload(serve.base_url, b"S. No.,Product Name,Input Image Urls\n1,,ftp://x\n")
    assert invalid.status_code == 422
    problem = invalid.json()
    assert problem["status_code"] == 422 and problem["detail"]
    assert {(e["row"], e["column"]) for e in problem["errors"]} >= {
        (1, "Product Name"),
        (1, "Input Image Urls"),
    }

    unknown = httpx.get(f"{serve.base_url}/v1/requests/no-such-request")
    assert unknown.status_code == 404
    assert unknown.json()["status_code"] == 404

    blocked = upload(
        serve.base_url, f"{HEADER}1,A,{url},x\n".encode(), callback_url="ftp://hooks.example/x"
    )
    assert blocked.status_code == 422
    assert blocked.json()["errors"][0]["field"] == "callback_url"


def test_killing_serve_mid_request_loses_nothing(tmp_path: Path, origin: Origin) -> None:
    urls = [
        origin.add(f"/slow{n}.jpg", encode(photo(seed=n), "JPEG"), delay=1.0) for n in range(12)
    ]
    data = (HEADER + "".join(f"{n},P{n},{u},x\n" for n, u in enumerate(urls, start=1))).encode()
    first = ServeProcess(tmp_path / "data", {**ENV, "BULKRESIZE_DOWNLOAD_CONCURRENCY": "2"})
    first.start()
    with WebhookReceiver([200]) as receiver:
        try:
            accepted = upload(first.base_url, data, callback_url=receiver.url)
            assert accepted.status_code == 202, accepted.text
            request_id = accepted.json()["request_id"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                document = httpx.get(f"{first.base_url}/v1/requests/{request_id}").json()
                if document["processed_images"] >= 2:
                    break
                time.sleep(0.05)
            assert 2 <= document["processed_images"] < 12
            first.kill()
        finally:
            first.stop()

        second = ServeProcess(tmp_path / "data", ENV)
        second.port, second.base_url = first.port, first.base_url  # same public URL as before
        second.start()
        try:
            final = poll(second.base_url, request_id)[-1]
            assert final["status"] == "completed"
            assert (final["processed_images"], final["failed_images"]) == (12, 0)
            assert receiver.wait_for(1, timeout=30), second.output()
            payload = json.loads(receiver.deliveries[0].body)
            assert payload["request_id"] == request_id
            assert payload["processed_images"] == 12
        finally:
            second.stop()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    serve: ServeProcess, tmp_path: Path
) -> None:
    checks = "all"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "--no-color",
            "run",
            f"{serve.base_url}/schema/openapi.json",
            "--checks",
            checks,
            "--max-examples",
            "40",
            "--seed",
            "20261129",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # schemathesis keeps a cache in its working folder
        check=False,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-3000:]
