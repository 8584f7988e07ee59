"""Fixtures of the bulkresize-dct tests (named ``dct_*`` so none shadows the main suite's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bulkresize.testing import require_corpus

#: The shared corpus of real-world images, beside the repository: plugins/dct/tests → ../../../..
CORPUS = Path(
    os.environ.get(
        "BULKRESIZE_TEST_CORPUS",
        Path(__file__).resolve().parents[4] / "shared" / "corpus" / "real-world",
    )
)


@pytest.fixture(scope="session")
def dct_corpus_dir() -> Path:
    """The shared corpus; skipped when missing locally, a failure when ``CI=true``."""
    return require_corpus(CORPUS)
