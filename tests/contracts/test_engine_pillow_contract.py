from __future__ import annotations

from pathlib import Path

import pytest

from bulkresize.engines.base import ImageEngine
from bulkresize.engines.pillow import PillowEngine
from bulkresize.testing import EngineContract


class TestPillowEngine(EngineContract):
    @pytest.fixture
    def engine(self) -> ImageEngine:
        return PillowEngine()

    @pytest.fixture
    def corpus_dir(self, corpus_dir: Path) -> Path:
        return corpus_dir
