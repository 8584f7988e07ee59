from __future__ import annotations

from pathlib import Path

import pytest

from bulkresize.engines.base import ImageEngine
from bulkresize.testing import EngineContract
from bulkresize_vips import VipsEngine


class TestVipsEngine(EngineContract):
    @pytest.fixture
    def engine(self) -> ImageEngine:
        return VipsEngine()

    @pytest.fixture
    def corpus_dir(self, vips_corpus_dir: Path) -> Path:
        return vips_corpus_dir
