from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkresize.errors import InvalidKey
from bulkresize.registry import create_backend
from bulkresize.storage import Storage
from bulkresize.storage.fsspec import FsspecStorage
from bulkresize.testing import StorageContract
from services import MotoServer


class TestLocalFileStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> Storage:
        return FsspecStorage.from_url((tmp_path / "files").as_uri())


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    def storage(self) -> Storage:
        return FsspecStorage.from_url(f"memory://bulkresize-{uuid.uuid4().hex}")


def test_local_urls_are_file_uris_under_the_root(tmp_path: Path) -> None:
    storage = FsspecStorage.from_url((tmp_path / "files").as_uri())
    storage.put("r/1-1.jpg", b"x", content_type="image/jpeg")
    url = storage.url("r/1-1.jpg")
    assert url == (tmp_path / "files" / "r" / "1-1.jpg").as_uri()
    assert Path(url.removeprefix("file://")).read_bytes() == b"x"


_KEY_PART = st.text(min_size=1, max_size=12).filter(lambda part: "/" not in part)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_KEY_PART, min_size=1, max_size=3), folder=_KEY_PART)
def test_local_urls_are_the_file_uris_of_any_key(
    tmp_path: Path, parts: list[str], folder: str
) -> None:
    """Percent-encoding, spaces and non-ASCII names: the URL names the stored file itself."""
    key = "/".join(parts)
    fresh = Path(tempfile.mkdtemp(dir=tmp_path))  # tmp_path is shared by the examples
    storage = FsspecStorage.from_url((fresh / folder).as_uri())
    try:
        storage.put(key, b"x", content_type="image/jpeg")
    except InvalidKey:
        return  # refused keys are the conformance suite's business
    url = storage.url(key)
    path = Path(url2pathname(urlsplit(url).path))
    assert path.read_bytes() == b"x"
    assert url == path.as_uri()


def test_public_url_overrides_the_storage_url(tmp_path: Path) -> None:
    storage = FsspecStorage.from_url(
        tmp_path.as_uri(), public_url="https://cdn.example.com/images/"
    )
    assert storage.url("abc/2-3.jpg") == "https://cdn.example.com/images/abc/2-3.jpg"


def test_local_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    storage = FsspecStorage.from_url(tmp_path.as_uri())
    for _ in range(3):
        storage.put("r/1-1.jpg", b"data", content_type="image/jpeg")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["1-1.jpg"]


def test_the_registry_builds_fsspec_storage_for_file_and_memory(tmp_path: Path) -> None:
    assert isinstance(create_backend("storage", tmp_path.as_uri(), Storage), FsspecStorage)
    assert isinstance(create_backend("storage", "memory://x", Storage), FsspecStorage)


def test_local_objects_are_readable_by_others(tmp_path: Path) -> None:
    storage = FsspecStorage.from_url(tmp_path.as_uri())
    storage.put("r/1-1.jpg", b"data", content_type="image/jpeg")
    assert (tmp_path / "r" / "1-1.jpg").stat().st_mode & 0o777 == 0o644


@pytest.mark.integration
class TestS3Storage(StorageContract):
    @pytest.fixture
    def storage(self, moto: MotoServer) -> Storage:
        bucket = f"bulkresize-{uuid.uuid4().hex[:12]}"
        moto.create_bucket(bucket)
        return FsspecStorage.from_url(f"s3://{bucket}/outputs", **moto.storage_options())


@pytest.mark.integration
def test_s3_urls_are_path_style_under_the_endpoint_and_serve_the_object(
    moto: MotoServer,
) -> None:
    import httpx

    moto.create_bucket("bulkresize-urls")
    # Outputs are public: here by an object ACL through s3fs's `s3_additional_kwargs`.
    storage = FsspecStorage.from_url(
        "s3://bulkresize-urls/prefix",
        **moto.storage_options(),
        s3_additional_kwargs={"ACL": "public-read"},
    )
    storage.put("r/1-1.jpg", b"\xff\xd8\xffjpeg", content_type="image/jpeg")
    url = storage.url("r/1-1.jpg")
    assert url == f"{moto.endpoint_url}/bulkresize-urls/prefix/r/1-1.jpg"
    assert "Signature" not in url and "Expires" not in url  # never a presigned URL
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"\xff\xd8\xffjpeg"
    assert response.headers["content-type"] == "image/jpeg"


@pytest.mark.integration
def test_s3_without_an_endpoint_gives_the_aws_url() -> None:
    storage = FsspecStorage.from_url("s3://my-bucket/p", key="x", secret="y")
    assert storage.url("r/1-1.jpg") == "https://my-bucket.s3.amazonaws.com/p/r/1-1.jpg"
