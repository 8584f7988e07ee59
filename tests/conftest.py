from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulkresize.testing import require_corpus

sys.path.insert(0, str(Path(__file__).parent))  # for the test helpers beside this file

from origin import Origin
from services import MotoServer

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(
    os.environ.get("BULKRESIZE_TEST_CORPUS", REPO.parent / "shared" / "corpus" / "real-world")
)


@pytest.fixture
def origin() -> Iterator[Origin]:
    """A loopback HTTP origin whose routes the test sets."""
    with Origin() as server:
        yield server


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The shared corpus of real-world images that break pipelines."""
    return require_corpus(CORPUS)


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """A moto S3 server on loopback, started once per test session."""
    server = MotoServer().wait_ready()
    yield server
    server.stop()
