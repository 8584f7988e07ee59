"""The storage conformance suite."""

from __future__ import annotations

import concurrent.futures
import os

import pytest

from bulkresize.errors import InvalidKey, ObjectNotFound, StorageError
from bulkresize.storage.base import Storage

__all__ = ["StorageContract"]


class StorageContract:
    """Mix into a test class and provide the ``storage`` fixture (a fresh, empty storage)."""

    @pytest.fixture
    def storage(self) -> Storage:
        """The backend under test. Override this fixture."""
        raise NotImplementedError("provide a `storage` fixture")

    def test_put_then_get_returns_the_same_bytes(self, storage: Storage) -> None:
        data = bytes(range(256)) * 64 + os.urandom(4096)
        storage.put("req/1-1.jpg", data, content_type="image/jpeg")
        assert storage.get("req/1-1.jpg") == data

    def test_empty_object_round_trips(self, storage: Storage) -> None:
        storage.put("req/empty.bin", b"", content_type="application/octet-stream")
        assert storage.get("req/empty.bin") == b""
        assert storage.exists("req/empty.bin")

    def test_put_replaces_an_existing_object(self, storage: Storage) -> None:
        storage.put("req/1-2.jpg", b"first version", content_type="image/jpeg")
        storage.put("req/1-2.jpg", b"second", content_type="image/jpeg")
        assert storage.get("req/1-2.jpg") == b"second"

    def test_get_of_a_missing_key_raises_object_not_found(self, storage: Storage) -> None:
        with pytest.raises(ObjectNotFound):
            storage.get("req/never-written.jpg")

    def test_object_not_found_is_a_storage_error(self, storage: Storage) -> None:
        with pytest.raises(StorageError):
            storage.get("req/never-written-either.jpg")

    def test_exists_tells_written_from_missing(self, storage: Storage) -> None:
        assert not storage.exists("req/3-1.jpg")
        storage.put("req/3-1.jpg", b"x", content_type="image/jpeg")
        assert storage.exists("req/3-1.jpg")

    def test_delete_removes_the_object(self, storage: Storage) -> None:
        storage.put("req/4-1.jpg", b"x", content_type="image/jpeg")
        storage.delete("req/4-1.jpg")
        assert not storage.exists("req/4-1.jpg")
        with pytest.raises(ObjectNotFound):
            storage.get("req/4-1.jpg")

    def test_delete_of_a_missing_key_is_not_an_error(self, storage: Storage) -> None:
        storage.delete("req/not-there.jpg")
        storage.delete("req/not-there.jpg")

    def test_keys_do_not_collide(self, storage: Storage) -> None:
        storage.put("a/1-1.jpg", b"a", content_type="image/jpeg")
        storage.put("b/1-1.jpg", b"b", content_type="image/jpeg")
        storage.put("a/1-10.jpg", b"c", content_type="image/jpeg")
        assert storage.get("a/1-1.jpg") == b"a"
        assert storage.get("b/1-1.jpg") == b"b"
        assert storage.get("a/1-10.jpg") == b"c"

    def test_url_is_stable_and_distinct_per_key(self, storage: Storage) -> None:
        storage.put("req/5-1.jpg", b"x", content_type="image/jpeg")
        first = storage.url("req/5-1.jpg")
        assert first == storage.url("req/5-1.jpg")
        assert first != storage.url("req/5-2.jpg")
        assert isinstance(first, str)
        assert "://" in first

    @pytest.mark.parametrize("key", ["", "/abs/key", "../escape", "a/../../b", "a//b", "a\\b"])
    def test_unsafe_keys_are_refused(self, storage: Storage, key: str) -> None:
        with pytest.raises(InvalidKey):
            storage.put(key, b"x", content_type="image/jpeg")

    def test_concurrent_puts_of_different_keys_all_land(self, storage: Storage) -> None:
        payloads = {f"req/c-{n}.bin": os.urandom(1000 + n) for n in range(32)}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda item: storage.put(
                        item[0], item[1], content_type="application/octet-stream"
                    ),
                    payloads.items(),
                )
            )
        for key, data in payloads.items():
            assert storage.get(key) == data
