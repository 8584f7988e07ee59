"""Health, readiness, the compatibility routes, API keys, the error shape, and the plug-in."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.di import NamedDependency
from litestar.testing import TestClient
from serving import BASE_URL, csv_of, wait_final

from bulkresize.errors import BulkResizeError, InvalidCallbackURL, RepositoryError, StorageError
from bulkresize.repositories.sql import SQLRepository
from bulkresize.service import Pipeline
from bulkresize.settings import Settings
from bulkresize.storage.fsspec import FsspecStorage
from bulkresize.web import BulkResizePlugin, create_app
from bulkresize.web.errors import exception_handlers
from images import encode, photo
from origin import Origin

ERROR_KEYS = {"status_code", "detail"}


# -- health ------------------------------------------------------------------------------------


def test_healthz(client: TestClient[Litestar]) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_checks_every_backend(client: TestClient[Litestar]) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"repository": "ok", "storage": "ok", "queue": "ok"},
    }


class BrokenStorage(FsspecStorage):
    """Local storage whose every lookup fails, as an unreachable bucket would."""

    def exists(self, key: str) -> bool:
        raise StorageError("cannot reach the bucket")


def test_readyz_is_503_naming_the_failed_backend(
    settings: Settings, make_client: Callable[..., TestClient[Litestar]]
) -> None:
    storage = BrokenStorage.from_url(settings.resolved_storage_url)
    client = make_client(settings, storage=storage)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status_code": 503,
        "detail": "not ready: storage",
        "errors": [{"check": "storage", "message": "StorageError: cannot reach the bucket"}],
    }
    assert client.get("/healthz").status_code == 200  # alive, only not ready


# -- compatibility -----------------------------------------------------------------------------


def test_the_original_services_routes(client: TestClient[Litestar], origin: Origin) -> None:
    url = origin.add("/a.jpg", encode(photo(60, 40), "JPEG"))
    hook = origin.add("/hook", b"ok")
    response = client.post(
        "/jobs", files={"file": ("a.csv", csv_of((1, "x", url)))}, data={"webhook": hook}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"job_id", "request_id", "status", "total_images", "status_url"}
    assert body["job_id"] == body["request_id"] and body["status"] == "pending"
    assert body["status_url"] == f"{BASE_URL}/v1/requests/{body['job_id']}"

    wait_final(client, body["job_id"])
    status = client.get("/jobs", params={"job_id": body["job_id"]})
    assert status.status_code == 200
    document = status.json()
    assert document["job_id"] == body["job_id"] and document["status"] == "completed"
    v1 = client.get(f"/v1/requests/{body['job_id']}").json()
    assert set(document) == {*v1, "job_id"}
    assert document["webhook"]["url"] == hook  # the webhook field sets the callback URL


def test_jobs_without_a_job_id_is_400(client: TestClient[Litestar]) -> None:
    response = client.get("/jobs")
    assert response.status_code == 400
    assert response.json() == {"status_code": 400, "detail": response.json()["detail"]}
    assert "job_id" in response.json()["detail"]


def test_jobs_takes_multipart_only(client: TestClient[Litestar]) -> None:
    response = client.post(
        "/jobs",
        content=csv_of((1, "x", "https://example.com/a.jpg")),
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 415


# -- the error shape ---------------------------------------------------------------------------


def test_unknown_route_is_404_in_the_error_shape(client: TestClient[Litestar]) -> None:
    response = client.get("/v2/nothing")
    assert response.status_code == 404
    assert response.json() == {"status_code": 404, "detail": "Not Found"}


def test_wrong_method_is_405_in_the_error_shape(client: TestClient[Litestar]) -> None:
    response = client.delete("/v1/requests")
    assert response.status_code == 405
    assert response.json() == {"status_code": 405, "detail": "Method Not Allowed"}
    assert "POST" in response.headers["allow"]


def test_malformed_multipart_is_400(client: TestClient[Litestar]) -> None:
    response = client.post(
        "/v1/requests",
        content=b"--nope\r\nnot a part",
        headers={"Content-Type": "multipart/form-data; boundary=other"},
    )
    assert response.status_code == 400
    assert set(response.json()) >= ERROR_KEYS


class ExplodingRepository(SQLRepository):
    """A repository with a bug: reads raise an exception that is not ours."""

    def get_request(self, request_id: str) -> Any:
        raise RuntimeError("secret internals: password=hunter2")


class DownRepository(SQLRepository):
    """A repository whose database is down."""

    def get_request(self, request_id: str) -> Any:
        raise RepositoryError("connection refused by db.internal:5432")


def test_an_unexpected_error_is_500_without_internals(
    settings: Settings, make_client: Callable[..., TestClient[Litestar]]
) -> None:
    repository = ExplodingRepository.from_url(settings.resolved_database_url)
    client = make_client(settings, repository=repository)
    response = client.get("/v1/requests/0123456789abcdef0123456789abcdef")
    assert response.status_code == 500
    assert response.json() == {"status_code": 500, "detail": "Internal Server Error"}


def test_a_backend_that_is_down_is_503_without_internals(
    settings: Settings, make_client: Callable[..., TestClient[Litestar]]
) -> None:
    repository = DownRepository.from_url(settings.resolved_database_url)
    client = make_client(settings, repository=repository)
    response = client.get("/v1/requests/0123456789abcdef0123456789abcdef")
    assert response.status_code == 503
    assert response.json() == {
        "status_code": 503,
        "detail": "a backend is unavailable; try again later",
    }
    assert "db.internal" not in response.text


def test_a_refused_callback_url_maps_to_422_with_the_field() -> None:
    handler = exception_handlers()[BulkResizeError]
    exc = InvalidCallbackURL("callback_url: not public", url="http://10.0.0.1/")
    response = handler(None, exc)  # type: ignore[arg-type]
    assert response.status_code == 422
    assert response.content == {
        "status_code": 422,
        "detail": "callback_url: not public",
        "errors": [
            {
                "field": "callback_url",
                "value": "http://10.0.0.1/",
                "message": "callback_url: not public",
            }
        ],
    }


# -- API keys ----------------------------------------------------------------------------------


def test_api_keys_guard_the_api_and_keep_requests_private(
    settings: Settings, make_client: Callable[..., TestClient[Litestar]], origin: Origin
) -> None:
    client = make_client(settings.replace(api_keys=("key-one", "key-two")))
    data = csv_of((1, "x", origin.add("/a.jpg", encode(photo(40, 40), "JPEG"))))

    missing = client.post("/v1/requests", files={"file": ("a.csv", data)})
    assert missing.status_code == 401 and set(missing.json()) == ERROR_KEYS
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = client.post(
        "/v1/requests", files={"file": ("a.csv", data)}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401

    one = {"Authorization": "Bearer key-one"}
    accepted = client.post("/v1/requests", files={"file": ("a.csv", data)}, headers=one)
    assert accepted.status_code == 202
    request_id = accepted.json()["request_id"]
    assert client.get(f"/v1/requests/{request_id}", headers=one).status_code == 200
    assert (
        client.get(f"/v1/requests/{request_id}", headers={"X-API-Key": "key-one"}).status_code
        == 200
    )
    # Another key does not see it at all; no key is refused.
    two = {"X-API-Key": "key-two"}
    for path in (
        f"/v1/requests/{request_id}",
        f"/v1/requests/{request_id}/images",
        f"/jobs?job_id={request_id}",
    ):
        assert client.get(path, headers=two).status_code == 404
        assert client.get(path).status_code == 401
    # Health checks and stored files stay open: output URLs are handed out in CSVs.
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    schema = client.get("/schema/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"bearerAuth", "apiKeyHeader"}
    assert schema["paths"]["/v1/requests"]["post"]["security"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_the_rate_limit_counts_per_key_and_spares_health_checks(
    settings: Settings, make_client: Callable[..., TestClient[Litestar]]
) -> None:
    client = make_client(settings.replace(api_keys=("key-one", "key-two"), rate_limit="3/minute"))
    one, two = {"X-API-Key": "key-one"}, {"Authorization": "Bearer key-two"}
    path = "/v1/requests/" + "0" * 32
    assert [client.get(path, headers=one).status_code for _ in range(3)] == [404] * 3
    limited = client.get(path, headers=one)
    assert limited.status_code == 429
    assert set(limited.json()) == ERROR_KEYS
    assert limited.headers["ratelimit-reset"], limited.headers
    assert client.get(path, headers=two).status_code == 404  # another key has its own count
    # Wrong keys count against the client's address, not against a real key.
    assert [client.get(path, headers={"X-API-Key": "x"}).status_code for _ in range(4)] == [
        401,
        401,
        401,
        429,
    ]
    assert client.get(path, headers=two).status_code == 404
    assert [client.get("/healthz").status_code for _ in range(5)] == [200] * 5


def test_a_malformed_rate_limit_is_a_configuration_error() -> None:
    with pytest.raises(BulkResizeError, match="120/minute"):
        Settings(rate_limit="lots")


# -- the plug-in in an app of one's own --------------------------------------------------------


def test_the_plugin_mounts_under_a_prefix_in_another_app(
    settings: Settings, origin: Origin
) -> None:
    @get("/mine")
    async def mine(pipeline: NamedDependency[Pipeline]) -> dict[str, int]:
        return {"quality": pipeline.settings.quality}

    app = Litestar(route_handlers=[mine], plugins=[BulkResizePlugin(settings, path="/bulk")])
    url = origin.add("/a.jpg", encode(photo(40, 40), "JPEG"))
    with TestClient(app, base_url=BASE_URL) as client:
        assert client.get("/mine").json() == {"quality": 50}
        assert client.get("/bulk/healthz").status_code == 200
        response = client.post(
            "/bulk/v1/requests", files={"file": ("a.csv", csv_of((1, "x", url)))}
        )
        assert response.status_code == 202
        status_url = response.json()["status_url"]
        assert status_url.startswith(f"{BASE_URL}/bulk/v1/requests/")
        assert client.get(status_url.removeprefix(BASE_URL)).status_code == 200
        assert client.get("/v1/requests/x").status_code == 404


def test_a_ready_pipeline_cannot_come_with_backends(settings: Settings) -> None:
    storage = FsspecStorage.from_url("memory://web-plugin-test")
    with pytest.raises(ValueError, match="not both"):
        BulkResizePlugin(pipeline=Pipeline.from_settings(settings), storage=storage)


def test_create_app_opens_nothing(settings: Settings) -> None:
    create_app(settings)
    assert not settings.data_dir.exists()


def test_importing_bulkresize_does_not_import_litestar() -> None:
    code = (
        "import sys, bulkresize, bulkresize.cli, bulkresize.service; "
        "assert 'litestar' not in sys.modules, 'litestar imported'; "
        "import bulkresize.web; assert 'litestar' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
