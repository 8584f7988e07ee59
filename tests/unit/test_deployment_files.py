"""The deployment files cannot run here (no Docker engine), so their wiring is checked as data."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from bulkresize.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]
FIELDS = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}


def test_compose_has_the_whole_fleet_wired_with_real_settings() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    assert {"api", "worker", "redis", "postgres", "minio"} <= set(services)
    assert services["api"]["command"][:2] == ["bulkresize", "serve"]
    assert services["worker"]["command"] == ["bulkresize", "worker"]
    assert services["worker"]["deploy"]["replicas"] >= 2
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["BULKRESIZE_QUEUE_URL"].startswith("redis://redis:")
        assert env["BULKRESIZE_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["BULKRESIZE_STORAGE_URL"].startswith("s3://")
        unknown = {k for k in env if k.startswith(ENV_PREFIX)} - FIELDS
        assert not unknown, f"compose sets variables bulkresize does not read: {unknown}"


def test_the_dockerfile_installs_every_extra_and_runs_unprivileged() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r'pip install "\.\[all\]"', dockerfile)
    assert re.search(r"^USER bulkresize$", dockerfile, re.MULTILINE)
    assert 'CMD ["bulkresize", "serve"' in dockerfile
