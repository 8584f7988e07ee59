"""The conformance suites must fail a backend that breaks its contract, not only pass good ones."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

BROKEN_STORAGE = '''
import pytest

from bulkresize.storage.fsspec import FsspecStorage
from bulkresize.testing import StorageContract


class CorruptingStorage(FsspecStorage):
    """Flips the first byte of every object it returns."""

    def get(self, key):
        data = super().get(key)
        return bytes([data[0] ^ 0xFF]) + data[1:] if data else data


class TestCorruptingStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        return CorruptingStorage.from_url(tmp_path.as_uri())
'''

DOUBLE_COUNTING_REPOSITORY = '''
import pytest

from bulkresize.repositories.sql import SQLRepository
from bulkresize.testing import RepositoryContract


class ForgetfulRepository(SQLRepository):
    """Forgets that an image was already recorded, so a re-run counts it twice."""

    def record_image(self, request_id, row, position, outcome):
        updated = super().record_image(request_id, row, position, outcome)
        if updated is None:
            return self.get_request(request_id)
        return updated


class TestForgetfulRepository(RepositoryContract):
    @pytest.fixture
    def repository(self, tmp_path):
        return ForgetfulRepository.from_url(f"sqlite:///{tmp_path / 'db.sqlite'}")
'''


def test_a_storage_that_corrupts_one_byte_fails_the_storage_contract(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_broken=BROKEN_STORAGE)
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 1
    result.stdout.fnmatch_lines(["*test_put_then_get_returns_the_same_bytes*"])


def test_a_repository_that_counts_twice_fails_the_repository_contract(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_broken=DOUBLE_COUNTING_REPOSITORY)
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    assert result.parseoutcomes().get("failed", 0) >= 1
    result.stdout.fnmatch_lines(["*test_recording_the_same_image_twice_changes_nothing*"])
