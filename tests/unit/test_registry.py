from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

from bulkresize.engines import ImageEngine
from bulkresize.engines.pillow import PillowEngine
from bulkresize.errors import BackendNotFound
from bulkresize.registry import available_backends, create_backend, load_backend, scheme_of
from bulkresize.storage import Storage
from bulkresize.storage.fsspec import FsspecStorage
from bulkresize.validation import Validator


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("s3://bucket/prefix", "s3"),
        ("FILE:///x", "file"),
        ("pillow", "pillow"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
        ("local://?workers=2", "local"),
    ],
)
def test_scheme_of(url: str, scheme: str) -> None:
    assert scheme_of(url) == scheme


def test_names_and_urls_find_the_builtins(tmp_path: Path) -> None:
    assert load_backend("storage", tmp_path.as_uri()) is FsspecStorage
    assert load_backend("engine", "pillow", ImageEngine) is PillowEngine
    assert isinstance(create_backend("engine", "pillow", ImageEngine), PillowEngine)


def test_an_unknown_scheme_names_what_is_available_with_install_hints() -> None:
    with pytest.raises(BackendNotFound) as raised:
        load_backend("storage", "gcs://bucket/x")
    message = str(raised.value)
    assert message.startswith("no storage backend for 'gcs://'; available: ")
    assert "file" in message and "memory" in message
    assert "s3 (pip install 'bulkresize[s3]')" in message


def test_a_missing_optional_dependency_gives_the_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "s3fs" else real(name, *a)
    )
    with pytest.raises(BackendNotFound, match=r"needs s3fs.*pip install 'bulkresize\[s3\]'"):
        load_backend("storage", "s3://bucket")
    s3 = [b for b in available_backends() if (b.port, b.scheme) == ("storage", "s3")]
    assert s3[0].error == "needs s3fs (pip install 'bulkresize[s3]')"


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "shop_rules.py").write_text(
        textwrap.dedent("""
        from bulkresize.validation.pandera import PanderaValidator

        class ShopValidator(PanderaValidator):
            marker = "shop"

        class NotAValidator:
            pass
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "shop_rules"
    sys.modules.pop("shop_rules", None)


def test_a_dotted_path_loads_a_class_even_from_a_top_level_module(plugin_module: str) -> None:
    cls = load_backend("validator", f"{plugin_module}:ShopValidator", Validator)
    assert cls.marker == "shop"
    built = create_backend("validator", f"{plugin_module}:ShopValidator", Validator, max_rows=5)
    assert built.max_rows == 5


def test_a_dotted_path_must_name_a_subclass_of_the_port(plugin_module: str) -> None:
    with pytest.raises(BackendNotFound, match="not a subclass of Validator"):
        load_backend("validator", f"{plugin_module}:NotAValidator", Validator)
    with pytest.raises(BackendNotFound, match="cannot load"):
        load_backend("validator", f"{plugin_module}:Missing", Validator)


def test_backends_lists_every_port_with_its_package() -> None:
    found = {(b.port, b.scheme): b for b in available_backends()}
    for key in [
        ("storage", "file"),
        ("storage", "memory"),
        ("storage", "s3"),
        ("queue", "local"),
        ("repository", "sqlite"),
        ("repository", "postgresql"),
        ("validator", "pandera"),
        ("engine", "pillow"),
    ]:
        assert key in found, key
        assert found[key].distribution.startswith("bulkresize ")
    assert found["storage", "file"].error is None


def test_storage_from_the_registry_is_a_storage(tmp_path: Path) -> None:
    assert isinstance(create_backend("storage", tmp_path.as_uri(), Storage), FsspecStorage)


def test_a_backend_without_from_url_must_be_injected() -> None:
    from bulkresize.errors import ConfigurationError

    class InjectedOnly(Storage):
        def put(self, key: str, data: bytes, *, content_type: str) -> None: ...
        def get(self, key: str) -> bytes:
            return b""

        def exists(self, key: str) -> bool:
            return False

        def delete(self, key: str) -> None: ...
        def url(self, key: str) -> str:
            return key

    with pytest.raises(ConfigurationError, match="cannot be built from a URL"):
        InjectedOnly.from_url("x://y")
