"""Every runnable example in examples/ runs, offline, from a copy of the folder."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_library_example_processes_the_catalogue(tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(REPO / "examples", examples)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKRESIZE_")}
    env["BULKRESIZE_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, str(examples / "process_catalogue.py"), str(tmp_path / "out.csv")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "6 of 6 images, 0 failed" in result.stdout
    assert result.stdout.count(" -> file://") == 6
    with (tmp_path / "out.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0][-1] == "Output Image Urls"
    assert len(rows) == 5
