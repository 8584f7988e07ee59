"""The v1 API end to end over a TestClient: upload, status, images, output CSV, files."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from PIL import Image
from serving import BASE_URL, HEADER, csv_of, wait_final

from bulkresize.settings import Settings
from images import encode, photo
from origin import Origin

STATUS_KEYS = {
    "request_id",
    "status",
    "total_images",
    "processed_images",
    "failed_images",
    "created_at",
    "updated_at",
    "output_csv_url",
    "webhook",
}
IMAGE_KEYS = {
    "row",
    "position",
    "input_url",
    "output_url",
    "status",
    "error",
    "error_message",
    "bytes_in",
    "bytes_out",
}


def fetch_output(client: TestClient[Litestar], url: str) -> Image.Image:
    """An output URL served by the app's own /files/ route, opened as an image."""
    assert url.startswith(f"{BASE_URL}/files/"), url
    response = client.get(url.removeprefix(BASE_URL))
    assert response.status_code == 200, response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def test_multipart_upload_is_processed_to_completed(
    client: TestClient[Litestar], origin: Origin
) -> None:
    good = origin.add("/a.jpg", encode(photo(400, 300), "JPEG", quality=95))
    png = origin.add("/b.png", encode(photo(200, 100, seed=2), "PNG"))
    missing = origin.url("/missing.jpg")
    data = csv_of((1, "Shoe", f"{good}, {missing}"), (2, "Bag", png))

    response = client.post(
        "/v1/requests",
        files={"file": ("products.csv", data, "text/csv")},
        data={"quality": "60", "max_width": "200"},
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"request_id", "status", "total_images", "status_url"}
    assert body["status"] == "pending"
    assert body["total_images"] == 3
    assert body["status_url"] == f"{BASE_URL}/v1/requests/{body['request_id']}"
    assert response.headers["location"] == body["status_url"]

    document = wait_final(client, body["request_id"])
    assert set(document) == STATUS_KEYS
    assert document["status"] == "completed"
    assert (document["total_images"], document["processed_images"]) == (3, 3)
    assert document["failed_images"] == 1
    assert document["webhook"] is None
    assert document["output_csv_url"] == f"{BASE_URL}/files/{body['request_id']}/output.csv"

    images = client.get(f"/v1/requests/{body['request_id']}/images").json()
    assert [(entry["row"], entry["position"]) for entry in images] == [(1, 1), (1, 2), (2, 1)]
    assert all(set(entry) == IMAGE_KEYS for entry in images)
    first, failed, second = images
    assert first["status"] == "done" and first["error"] is None
    assert first["input_url"] == good and first["bytes_in"] > first["bytes_out"] > 0
    assert failed["status"] == "failed" and failed["error"] == "http_status"
    assert failed["output_url"] is None and "404" in failed["error_message"]
    assert second["status"] == "done"

    jpeg = fetch_output(client, first["output_url"])
    assert jpeg.format == "JPEG" and jpeg.size == (200, 150)  # max_width applied
    assert fetch_output(client, second["output_url"]).format == "JPEG"

    output = client.get(f"/v1/requests/{body['request_id']}/output.csv")
    assert output.status_code == 200
    assert output.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(output.text)))
    assert rows[0] == [*HEADER.split(","), "Output Image Urls"]
    # The failed image keeps its input URL at its position.
    assert rows[1][3] == f"{first['output_url']},{missing}"
    assert rows[2][3] == second["output_url"]
    # The stored copy behind output_csv_url is the same file.
    stored = client.get(document["output_csv_url"].removeprefix(BASE_URL))
    assert stored.status_code == 200 and stored.content == output.content
    assert stored.headers["content-type"] == "text/csv; charset=utf-8"


@pytest.mark.parametrize("media_type", ["text/csv", "application/csv", "text/csv; charset=utf-8"])
def test_raw_csv_body_takes_options_as_query_parameters(
    client: TestClient[Litestar], origin: Origin, media_type: str
) -> None:
    url = origin.add("/a.jpg", encode(photo(120, 80), "JPEG"))
    response = client.post(
        "/v1/requests?format=png&quality=70",
        content=csv_of((1, "Shoe", url)),
        headers={"Content-Type": media_type},
    )
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    assert wait_final(client, request_id)["status"] == "completed"
    (image,) = client.get(f"/v1/requests/{request_id}/images").json()
    assert image["output_url"].endswith("/1-1.png")
    assert fetch_output(client, image["output_url"]).format == "PNG"


def test_every_image_failing_makes_the_request_failed(
    client: TestClient[Litestar], origin: Origin
) -> None:
    url = origin.add("/text.jpg", b"this is not an image")
    response = client.post("/v1/requests", files={"file": ("a.csv", csv_of((1, "x", url)))})
    document = wait_final(client, response.json()["request_id"])
    assert document["status"] == "failed"
    (image,) = client.get(f"/v1/requests/{document['request_id']}/images").json()
    assert image["error"] == "not_an_image"


def test_output_csv_is_409_until_the_request_is_final(
    client: TestClient[Litestar], origin: Origin
) -> None:
    slow = origin.add("/slow.jpg", encode(photo(64, 64), "JPEG"), delay=1.0)
    response = client.post("/v1/requests", files={"file": ("a.csv", csv_of((1, "x", slow)))})
    request_id = response.json()["request_id"]

    early = client.get(f"/v1/requests/{request_id}/output.csv")
    assert early.status_code == 409
    assert early.json() == {"status_code": 409, "detail": early.json()["detail"]}
    assert "not final" in early.json()["detail"]
    assert client.get(f"/v1/requests/{request_id}").json()["output_csv_url"] is None

    wait_final(client, request_id)
    late = client.get(f"/v1/requests/{request_id}/output.csv")
    assert late.status_code == 200 and late.text.startswith(HEADER)


def test_invalid_csv_is_422_with_every_problem(client: TestClient[Litestar]) -> None:
    data = csv_of(
        (1, "Shoe", "ftp://example.com/a.jpg"),
        (1, "", "https://example.com/b.jpg"),
        (3, "Hat", ""),
    )
    response = client.post("/v1/requests", files={"file": ("a.csv", data)})
    assert response.status_code == 422
    body = response.json()
    assert set(body) == {"status_code", "detail", "errors"} and body["status_code"] == 422
    assert all(set(error) == {"row", "column", "value", "message"} for error in body["errors"])
    where = {(error["row"], error["column"]) for error in body["errors"]}
    assert (1, "Input Image Urls") in where
    assert (2, "S. No.") in where
    assert (2, "Product Name") in where
    assert (3, "Input Image Urls") in where
    ftp = next(error for error in body["errors"] if error["value"] == "ftp://example.com/a.jpg")
    assert "http" in ftp["message"]


@pytest.mark.parametrize(
    "urls", ["file:///etc/passwd", "images/shoe.jpg", "/etc/passwd", "../secret.jpg"]
)
def test_the_http_api_never_accepts_local_files(client: TestClient[Litestar], urls: str) -> None:
    response = client.post("/v1/requests", files={"file": ("a.csv", csv_of((1, "x", urls)))})
    assert response.status_code == 422
    assert response.json()["errors"][0]["column"] == "Input Image Urls"


def test_unknown_request_is_404(client: TestClient[Litestar]) -> None:
    paths = [
        "/v1/requests/{id}",
        "/v1/requests/{id}/images",
        "/v1/requests/{id}/output.csv",
        "/jobs?job_id={id}",
    ]
    ids = ["0123456789abcdef0123456789abcdef", "x" * 300, "a%20b", "%00", "..%2F..", "-1"]
    for path in paths:
        for request_id in ids:
            response = client.get(path.format(id=request_id))
            assert response.status_code == 404, (path, request_id, response.text)
            assert set(response.json()) == {"status_code", "detail"}
            assert response.json()["status_code"] == 404


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"quality": "0"}, "quality"),
        ({"quality": "96"}, "quality"),
        ({"quality": "high"}, "quality"),
        ({"format": "gif"}, "format"),
        ({"max_width": "abc"}, "max_width"),
        ({"max_height": "-3"}, "max_height"),
    ],
)
def test_bad_option_in_the_form_is_400(
    client: TestClient[Litestar], fields: dict[str, str], field: str
) -> None:
    response = client.post(
        "/v1/requests",
        files={"file": ("a.csv", csv_of((1, "x", "https://example.com/a.jpg")))},
        data=fields,
    )
    assert response.status_code == 400
    body = response.json()
    assert body["status_code"] == 400 and field in body["detail"]
    assert [error["field"] for error in body["errors"]] == [field]


def test_every_bad_option_is_named(client: TestClient[Litestar]) -> None:
    response = client.post(
        "/v1/requests",
        files={"file": ("a.csv", csv_of((1, "x", "https://example.com/a.jpg")))},
        data={"quality": "0", "format": "gif"},
    )
    assert response.status_code == 400
    assert {error["field"] for error in response.json()["errors"]} == {"quality", "format"}


@pytest.mark.parametrize(
    "query",
    ["quality=abc", "quality=0", "quality=1.5", "format=gif", "max_width=0", "max_height=x"],
)
def test_bad_option_in_the_query_is_400(client: TestClient[Litestar], query: str) -> None:
    response = client.post(
        f"/v1/requests?{query}",
        content=csv_of((1, "x", "https://example.com/a.jpg")),
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"status_code", "detail", "errors"} and body["status_code"] == 400
    assert body["errors"][0]["field"] == query.split("=")[0]
    assert "Validation failed" not in body["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "text/csv; charset=latin-1"},
        {},
    ],
)
def test_a_body_that_is_not_a_csv_is_415(
    client: TestClient[Litestar], headers: dict[str, str]
) -> None:
    response = client.post("/v1/requests", content=b"S. No.,x\n", headers=headers)
    assert response.status_code == 415
    assert set(response.json()) == {"status_code", "detail"}
    assert response.json()["status_code"] == 415


def test_a_form_without_a_file_is_400_naming_the_field(client: TestClient[Litestar]) -> None:
    response = client.post("/v1/requests", files={"csv": ("a.csv", b"S. No.\n")})
    assert response.status_code == 400
    body = response.json()
    assert "'file'" in body["detail"]
    assert body["errors"] == [{"field": "file", "message": body["errors"][0]["message"]}]


def test_a_file_field_sent_as_plain_text_is_accepted(
    client: TestClient[Litestar], origin: Origin
) -> None:
    url = origin.add("/a.jpg", encode(photo(50, 50), "JPEG"))
    # curl -F 'file=<products.csv' sends the CSV as a plain field, without a file name.
    response = client.post("/v1/requests", files={"file": (None, csv_of((1, "x", url)))})
    assert response.status_code == 202, response.text


def test_two_files_are_400(client: TestClient[Litestar]) -> None:
    data = csv_of((1, "x", "https://example.com/a.jpg"))
    response = client.post(
        "/v1/requests", files=[("file", ("a.csv", data)), ("file", ("b.csv", data))]
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "file"


def test_a_refused_callback_url_is_422(client: TestClient[Litestar]) -> None:
    data = csv_of((1, "x", "https://example.com/a.jpg"))
    response = client.post(
        "/v1/requests",
        files={"file": ("a.csv", data)},
        data={"callback_url": "ftp://example.com/hook"},
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "field": "callback_url",
            "value": "ftp://example.com/hook",
            "message": response.json()["errors"][0]["message"],
        }
    ]


def test_the_webhook_shows_in_the_status_document(
    client: TestClient[Litestar], origin: Origin
) -> None:
    url = origin.add("/a.jpg", encode(photo(50, 50), "JPEG"))
    hook = origin.add("/hook", b"ok")
    response = client.post(
        "/v1/requests",
        files={"file": ("a.csv", csv_of((1, "x", url)))},
        data={"callback_url": hook},
    )
    assert response.status_code == 202, response.text
    document = wait_final(client, response.json()["request_id"])
    assert document["webhook"]["url"] == hook
    assert set(document["webhook"]) == {"url", "status", "attempts"}


def test_unfinished_work_resumes_when_the_app_starts_again(
    settings: Settings, make_client: Callable[..., TestClient[Litestar]], origin: Origin
) -> None:
    one_at_a_time = settings.replace(download_concurrency=1)
    first = make_client(one_at_a_time)
    urls = [origin.add(f"/{n}.jpg", encode(photo(40, 40), "JPEG"), delay=0.3) for n in range(3)]
    response = first.post(
        "/v1/requests", files={"file": ("a.csv", csv_of((1, "x", ",".join(urls))))}
    )
    request_id = response.json()["request_id"]
    first.__exit__(None, None, None)  # stops after the running image; the rest stay pending

    second = make_client(one_at_a_time)
    document = wait_final(second, request_id)
    assert document["status"] == "completed" and document["failed_images"] == 0


def test_the_data_dir_default_serves_files_only_under_it(
    client: TestClient[Litestar], settings: Settings
) -> None:
    # The SQLite database sits beside the files root; no key reaches it.
    assert (Path(settings.data_dir) / "bulkresize.db").exists()
    assert client.get("/files/../bulkresize.db").status_code == 404
