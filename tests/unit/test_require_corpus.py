"""bulkresize.testing.require_corpus: skip when the corpus is missing, fail under CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkresize.testing import require_corpus


def test_a_present_folder_is_returned(tmp_path: Path) -> None:
    assert require_corpus(str(tmp_path)) == tmp_path


def test_a_missing_folder_skips_locally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="missing at"):
        require_corpus(tmp_path / "absent")


def test_a_missing_folder_fails_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="missing at"):
        require_corpus(tmp_path / "absent")
