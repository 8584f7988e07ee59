from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from commands import bulkresize_command


@pytest.fixture
def run_cli(tmp_path: Path):
    """Run `bulkresize …` as a real process with its own data dir; returns CompletedProcess."""

    def run(
        *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("BULKRESIZE_")}
        environment["BULKRESIZE_DATA_DIR"] = str(tmp_path / "data")
        environment.update(env or {})
        return subprocess.run(
            [*bulkresize_command(), *args],
            capture_output=True,
            text=True,
            env=environment,
            cwd=cwd or tmp_path,
            timeout=timeout,
            check=False,
        )

    return run
