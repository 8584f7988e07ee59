"""Issue 4's acceptance: an API and RQ workers over real Redis, PostgreSQL and S3 (moto) lose no
accepted work when workers and the API are SIGKILLed and Redis loses every key."""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from images import encode, photo
from origin import Origin
from services import require_postgres, require_redis

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "distributed"))
from topology import Topology

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMAGES = 300


def processed(api_url: str, request_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while True:  # the API may be down for a moment: keep asking
        try:
            return httpx.get(f"{api_url}/v1/requests/{request_id}", timeout=5).json()
        except (httpx.TransportError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_until(api_url: str, request_id: str, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while processed(api_url, request_id)["processed_images"] < count:
        assert time.monotonic() < deadline, f"fewer than {count} images in {timeout} s"
        time.sleep(0.1)


def images_of_current_job(topology: Topology, worker_pid: int) -> set[tuple[int, int]]:
    """The (row, position) of every image in the batch a worker is running now."""
    import redis
    from rq import Worker

    connection = redis.Redis.from_url(topology.redis_url)
    for worker in Worker.all(connection=connection):
        if worker.pid == worker_pid:
            job = worker.get_current_job()
            if job is None:
                return set()
            return {(int(j["payload"]["row"]), int(j["payload"]["position"])) for j in job.args[0]}
    return set()


def test_no_accepted_work_is_lost(tmp_path: Path, origin: Origin) -> None:
    require_postgres()
    require_redis()
    picture = encode(photo(640, 480), "JPEG", quality=90)
    urls = [origin.add(f"/slow/{n}.jpg", picture, delay=1.0) for n in range(IMAGES)]
    rows = "".join(f"{n},Product {n},{url}\n" for n, url in enumerate(urls, start=1))
    data = f"S. No.,Product Name,Input Image Urls\n{rows}".encode()
    env = {"BULKRESIZE_ALLOW_PRIVATE_URLS": "true", "BULKRESIZE_SWEEP_INTERVAL": "5"}

    with Topology(tmp_path / "fleet", extra_env=env).start(workers=2) as fleet:
        started = time.monotonic()
        accepted = httpx.post(
            f"{fleet.api_url}/v1/requests", files={"file": ("p.csv", data, "text/csv")}, timeout=30
        )
        assert accepted.status_code == 202, accepted.text
        request_id = accepted.json()["request_id"]

        wait_until(fleet.api_url, request_id, 20)
        victim = fleet.workers[0]
        held = images_of_current_job(fleet, victim.pid)
        fleet.kill(victim)
        killed_at = time.monotonic()

        wait_until(fleet.api_url, request_id, 80)
        assert fleet.api is not None
        fleet.kill(fleet.api)
        fleet.start_api()

        wait_until(fleet.api_url, request_id, 150)
        fleet.flush_redis()
        fleet.add_worker()

        recovered_at = None
        deadline = time.monotonic() + 300
        while True:
            document = processed(fleet.api_url, request_id)
            if held and recovered_at is None:
                done = {
                    (i["row"], i["position"])
                    for i in httpx.get(
                        f"{fleet.api_url}/v1/requests/{request_id}/images", timeout=10
                    ).json()
                    if i["status"] != "pending"
                }
                if held <= done:
                    recovered_at = time.monotonic()
            if document["status"] in ("completed", "failed"):
                break
            assert time.monotonic() < deadline, document
            time.sleep(0.2)
        elapsed = time.monotonic() - started

        assert document["status"] == "completed"
        assert (document["processed_images"], document["failed_images"]) == (IMAGES, 0)

        # State is in PostgreSQL.
        import psycopg

        dsn = fleet.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as connection:
            row = connection.execute(
                "SELECT status, processed_images FROM bulkresize_requests WHERE id = %s",
                (request_id,),
            ).fetchone()
            assert row == ("completed", IMAGES)
            done = connection.execute(
                "SELECT count(*) FROM bulkresize_images WHERE request_id = %s AND status = 'done'",
                (request_id,),
            ).fetchone()
            assert done == (IMAGES,)

        # S3 holds exactly one object per image, and every output URL serves a JPEG.
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=fleet.moto_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        keys = [
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=fleet.bucket, Prefix=f"outputs/{request_id}/"
            )
            for o in page.get("Contents", [])
        ]
        assert len([k for k in keys if k.endswith(".jpg")]) == IMAGES
        output = httpx.get(f"{fleet.api_url}/v1/requests/{request_id}/output.csv", timeout=30)
        assert output.status_code == 200
        links = [row[-1] for row in csv.reader(io.StringIO(output.text))][1:]
        assert len(links) == IMAGES
        with httpx.Client(timeout=30) as client:
            for link in links:
                assert link.startswith(f"{fleet.moto_url}/{fleet.bucket}/outputs/{request_id}/")
                image = Image.open(io.BytesIO(client.get(link).content))
                assert image.format == "JPEG"

        recovery = (recovered_at - killed_at) if recovered_at else None
        print(
            f"\nupload to completion: {elapsed:.1f} s; images held by the killed worker: "
            f"{len(held)}; recovered after {recovery and round(recovery, 1)} s"
        )
        if held:
            assert recovery is not None and recovery < 90
