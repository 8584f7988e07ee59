"""The OpenAPI document describes every route, its bodies and its errors as they really are."""

from __future__ import annotations

from typing import Any

import jsonschema
import openapi_spec_validator
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from serving import csv_of, wait_final

from images import encode, photo
from origin import Origin

ROUTES = {
    "/v1/requests": {"post"},
    "/v1/requests/{request_id}": {"get"},
    "/v1/requests/{request_id}/images": {"get"},
    "/v1/requests/{request_id}/output.csv": {"get"},
    "/files/{key}": {"get"},
    "/healthz": {"get"},
    "/readyz": {"get"},
    "/jobs": {"get", "post"},
}
ERRORS = {
    ("/v1/requests", "post"): {"400", "401", "413", "415", "422"},
    ("/v1/requests/{request_id}", "get"): {"401", "404"},
    ("/v1/requests/{request_id}/images", "get"): {"401", "404"},
    ("/v1/requests/{request_id}/output.csv", "get"): {"401", "404", "409"},
    ("/files/{key}", "get"): {"404"},
    ("/readyz", "get"): {"503"},
    ("/jobs", "post"): {"400", "401", "413", "415", "422"},
    ("/jobs", "get"): {"400", "401", "404"},
}


@pytest.fixture
def document(client: TestClient[Litestar]) -> dict[str, Any]:
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def test_every_route_is_documented(document: dict[str, Any]) -> None:
    assert {path: set(item) for path, item in document["paths"].items()} == ROUTES


def test_every_error_answer_is_documented_in_the_error_shape(document: dict[str, Any]) -> None:
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for (path, method), codes in ERRORS.items():
        responses = document["paths"][path][method]["responses"]
        assert codes <= set(responses), (path, method, set(responses))
        for code, response in responses.items():
            if code.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == error_ref, (path, code)
    error = document["components"]["schemas"]["ErrorBody"]
    assert set(error["properties"]) == {"status_code", "detail", "errors"}
    assert set(error["required"]) == {"status_code", "detail"}
    assert '"extra"' not in str(document).replace("'", '"')  # Litestar's own shape is gone


def test_the_upload_bodies_are_documented(document: dict[str, Any]) -> None:
    body = document["paths"]["/v1/requests"]["post"]["requestBody"]
    assert set(body["content"]) == {"multipart/form-data", "text/csv", "application/csv"}
    form = body["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"]
    assert set(form["properties"]) == {
        "file",
        "callback_url",
        "quality",
        "format",
        "max_width",
        "max_height",
    }
    assert form["properties"]["file"] == {
        "type": "string",
        "format": "binary",
        "description": "The CSV (UTF-8).",
    }
    query = {
        p["name"]: p["schema"] for p in document["paths"]["/v1/requests"]["post"]["parameters"]
    }
    assert set(query) == {"quality", "format", "max_width", "max_height", "callback_url"}
    assert query["quality"]["type"] == "integer"
    assert (query["quality"]["minimum"], query["quality"]["maximum"]) == (1, 95)
    assert query["format"]["enum"] == ["jpeg", "webp", "png", "keep"]
    jobs = document["paths"]["/jobs"]["post"]["requestBody"]["content"]
    assert set(jobs) == {"multipart/form-data"}
    assert "webhook" in jobs["multipart/form-data"]["schema"]["properties"]
    output = document["paths"]["/v1/requests/{request_id}/output.csv"]["get"]["responses"]["200"]
    assert set(output["content"]) == {"text/csv"}


def test_the_document_is_valid_and_real_answers_match_it(
    client: TestClient[Litestar], document: dict[str, Any], origin: Origin
) -> None:
    openapi_spec_validator.validate(document)

    def check(path: str, method: str, response: Any) -> None:
        spec = document["paths"][path][method]["responses"][str(response.status_code)]
        schema = spec["content"]["application/json"]["schema"]
        resolver = {"components": document["components"], **schema}
        jsonschema.validate(response.json(), resolver)

    url = origin.add("/a.jpg", encode(photo(40, 40), "JPEG"))
    data = csv_of((1, "x", f"{url},{origin.url('/missing.jpg')}"))
    submitted = client.post("/v1/requests", files={"file": ("a.csv", data)})
    check("/v1/requests", "post", submitted)
    request_id = submitted.json()["request_id"]
    wait_final(client, request_id)
    check("/v1/requests/{request_id}", "get", client.get(f"/v1/requests/{request_id}"))
    check(
        "/v1/requests/{request_id}/images", "get", client.get(f"/v1/requests/{request_id}/images")
    )
    check("/jobs", "get", client.get(f"/jobs?job_id={request_id}"))
    check("/jobs", "post", client.post("/jobs", files={"file": ("a.csv", data)}))
    check("/healthz", "get", client.get("/healthz"))
    check("/readyz", "get", client.get("/readyz"))
    for status_code, response in {
        400: client.post(
            "/v1/requests?quality=0", content=data, headers={"Content-Type": "text/csv"}
        ),
        415: client.post("/v1/requests", json={}),
        422: client.post("/v1/requests", files={"file": ("a.csv", b"nope")}),
        404: client.get("/v1/requests/unknown"),
    }.items():
        assert response.status_code == status_code
        check(
            "/v1/requests" if status_code != 404 else "/v1/requests/{request_id}",
            "post" if status_code != 404 else "get",
            response,
        )
