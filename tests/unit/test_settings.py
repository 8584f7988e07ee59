from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkresize.errors import ConfigurationError
from bulkresize.models import ImageOptions
from bulkresize.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]


def test_defaults_match_the_design() -> None:
    settings = Settings.from_env({})
    assert settings.data_dir == Path("bulkresize-data")
    assert settings.resolved_storage_url == (Path("bulkresize-data").resolve() / "files").as_uri()
    assert settings.resolved_database_url == (
        f"sqlite:///{(Path('bulkresize-data').resolve() / 'bulkresize.db').as_posix()}"
    )
    assert settings.queue_url == "local://"
    assert settings.image_options == ImageOptions(quality=50, format="jpeg")
    assert settings.allow_private_urls is False
    assert settings.fetch_timeout == 30
    assert (settings.connect_timeout, settings.read_timeout, settings.max_redirects) == (5, 10, 5)
    assert settings.max_upload_bytes == 50 * 1024 * 1024
    assert settings.max_rows == 100_000
    assert settings.max_urls_per_row == 100
    assert settings.max_image_bytes == 25 * 1024 * 1024
    assert settings.max_image_pixels == 50_000_000
    assert settings.webhook_secret is None and settings.api_keys == ()


def test_environment_variables_are_read_and_converted(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "BULKRESIZE_DATA_DIR": str(tmp_path),
            "BULKRESIZE_STORAGE_URL": "memory://x",
            "BULKRESIZE_STORAGE_OPTIONS": '{"endpoint_url": "http://127.0.0.1:5000"}',
            "BULKRESIZE_QUALITY": "70",
            "BULKRESIZE_FORMAT": "WEBP",
            "BULKRESIZE_ALLOW_PRIVATE_URLS": "yes",
            "BULKRESIZE_API_KEYS": "a, b,,c",
            "BULKRESIZE_ALLOWED_HOSTS": "images.internal , 10.0.0.7,",
            "BULKRESIZE_FETCH_TIMEOUT": "2.5",
            "BULKRESIZE_MAX_ROWS": "1_000",
            "UNRELATED": "x",
        }
    )
    assert settings.data_dir == tmp_path
    assert settings.resolved_storage_url == "memory://x"
    assert settings.resolved_database_url.endswith(f"{tmp_path.as_posix()}/bulkresize.db")
    assert settings.storage_options == {"endpoint_url": "http://127.0.0.1:5000"}
    assert settings.image_options == ImageOptions(quality=70, format="webp")
    assert settings.allow_private_urls is True
    assert settings.api_keys == ("a", "b", "c")
    assert settings.allowed_hosts == ("images.internal", "10.0.0.7")
    assert settings.fetch_timeout == 2.5
    assert settings.max_rows == 1000


def test_overrides_win_over_the_environment() -> None:
    settings = Settings.from_env({"BULKRESIZE_QUALITY": "70"}, quality=20)
    assert settings.quality == 20
    assert settings.replace(quality=30).quality == 30


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BULKRESIZE_QUALITY", "high"),
        ("BULKRESIZE_QUALITY", "0"),
        ("BULKRESIZE_FORMAT", "gif"),
        ("BULKRESIZE_ALLOW_PRIVATE_URLS", "maybe"),
        ("BULKRESIZE_STORAGE_OPTIONS", "[1]"),
        ("BULKRESIZE_STORAGE_OPTIONS", "{bad"),
        ("BULKRESIZE_MAX_ROWS", "0"),
        ("BULKRESIZE_FETCH_TIMEOUT", "soon"),
    ],
)
def test_malformed_variables_are_configuration_errors(name: str, value: str) -> None:
    field = name.removeprefix("BULKRESIZE_").lower()
    with pytest.raises(ConfigurationError, match=f"(?i){field}"):
        Settings.from_env({name: value})


@given(st.integers(min_value=1, max_value=95))
def test_any_valid_quality_round_trips_through_the_environment(quality: int) -> None:
    assert Settings.from_env({"BULKRESIZE_QUALITY": str(quality)}).quality == quality


def test_every_variable_is_documented_and_every_documented_one_exists() -> None:
    """The configuration page and the Settings fields must name the same variables."""
    fields = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    page = (REPO / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`(BULKRESIZE_[A-Z0-9_]+)`", page))
    assert fields - documented == set(), "variables missing from docs/configuration.md"
    assert documented - fields == set(), "docs/configuration.md names unknown variables"
