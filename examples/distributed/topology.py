"""The distributed topology from local processes: an API and N workers over Redis, PostgreSQL
and an S3-compatible server (moto), the same wiring as ``compose.yaml``.

Run it to try the fleet on one machine (Redis on 127.0.0.1:6379 and PostgreSQL on
127.0.0.1:5432, as on a development machine; moto_server from ``pip install 'moto[server]'``)::

    python examples/distributed/topology.py --workers 2

It prints the API's URL and the environment every process shares, and runs until Ctrl-C. The
integration tests import :class:`Topology` to kill and restart pieces of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(name: str) -> list[str]:
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [shutil.which(name) or name]


class Topology:
    """Redis, PostgreSQL and moto (S3) as services; ``bulkresize serve`` and workers as processes.

    Args:
        workdir: Where logs go.
        redis_url: A Redis server; one of its databases is used and flushed at the end.
        postgres_url: A PostgreSQL server (an admin connection); a fresh database is made.
        extra_env: More ``BULKRESIZE_*`` settings for every process.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        redis_url: str = "redis://127.0.0.1:6379/14",
        postgres_url: str = "postgresql://postgres@127.0.0.1:5432/postgres",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url
        self.postgres_admin_url = postgres_url
        self.name = f"bulkresize_{uuid.uuid4().hex[:10]}"
        self.bucket = self.name.replace("_", "-")
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.moto_port = free_port()
        self.moto_url = f"http://127.0.0.1:{self.moto_port}"
        self.database_url = (
            postgres_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            + f"/{self.name}"
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BULKRESIZE_")}
        self.env.update(
            {
                "BULKRESIZE_QUEUE_URL": f"{redis_url}?queue={self.name}",
                "BULKRESIZE_DATABASE_URL": self.database_url,
                "BULKRESIZE_STORAGE_URL": f"s3://{self.bucket}/outputs",
                "BULKRESIZE_STORAGE_OPTIONS": json.dumps(
                    {
                        "endpoint_url": self.moto_url,
                        "key": "testing",
                        "secret": "testing",
                        "s3_additional_kwargs": {"ACL": "public-read"},
                    }
                ),
                "BULKRESIZE_DATA_DIR": str(workdir / "data"),
                **(extra_env or {}),
            }
        )
        self.moto: subprocess.Popen[bytes] | None = None
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: list[object] = []

    # -- services --------------------------------------------------------------------------

    def start(self, workers: int = 2) -> Topology:
        """Start moto, make the database and the bucket, then the API and the workers."""
        self.moto = self._spawn(
            "moto", [*_command("moto_server"), "-H", "127.0.0.1", "-p", str(self.moto_port)]
        )
        self._wait_http(self.moto_url, self.moto)
        self._create_bucket()
        self._create_database()
        self.start_api()
        for _ in range(workers):
            self.add_worker()
        return self

    def _create_bucket(self) -> None:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.moto_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=self.bucket)

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(self.postgres_admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')

    def _drop_database(self) -> None:
        import psycopg

        with psycopg.connect(self.postgres_admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def flush_redis(self) -> None:
        """Lose every key of the queue's Redis database, as a Redis restart without disk would."""
        import redis

        redis.Redis.from_url(self.redis_url).flushdb()

    # -- processes -------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        self._logs.append(log)
        return subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def _wait_http(self, url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args} exited with {process.returncode}")
            try:
                httpx.get(url, timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{url} did not answer in {timeout} s")

    def start_api(self) -> None:
        """Start ``bulkresize serve`` on the topology's fixed port."""
        self.api = self._spawn(
            "api",
            [*_command("bulkresize"), "serve", "--host", "127.0.0.1", "--port", str(self.api_port)],
        )
        self._wait_http(f"{self.api_url}/healthz", self.api)

    def add_worker(self) -> subprocess.Popen[bytes]:
        """Start one more ``bulkresize worker``."""
        worker = self._spawn(f"worker-{len(self.workers)}", [*_command("bulkresize"), "worker"])
        self.workers.append(worker)
        return worker

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        """SIGKILL: no shutdown code runs, as when a machine dies."""
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        """Stop every process, drop the database and flush the queue's Redis database."""
        for process in [*self.workers, self.api, self.moto]:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for log in self._logs:
            log.close()  # type: ignore[attr-defined]
        self._drop_database()
        self.flush_redis()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("bulkresize-distributed"))
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="BULKRESIZE_NAME=VALUE",
        help="a setting for every process, e.g. BULKRESIZE_ALLOW_PRIVATE_URLS=true",
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    with Topology(args.workdir, extra_env=extra).start(workers=args.workers) as topology:
        print(f"API: {topology.api_url}  (logs in {args.workdir})")
        for name, value in sorted(topology.env.items()):
            if name.startswith("BULKRESIZE_"):
                print(f"  {name}={value}")
        print("Ctrl-C to stop.")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
