"""URL scheme → backend class, for every port.

Three sources, in this order: a dotted path ``pkg.mod:Class`` (used as it is), entry points in
the groups ``bulkresize.storage``, ``bulkresize.queue``, ``bulkresize.repository``,
``bulkresize.validator`` and ``bulkresize.engine`` (the entry-point name is the scheme), and a
built-in table that carries install hints. Entry points are read on first lookup, never at
import, and nothing is imported until a backend is asked for.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast, overload

from bulkresize.errors import BackendNotFound, ConfigurationError

__all__ = [
    "PORTS",
    "BackendInfo",
    "Port",
    "available_backends",
    "create_backend",
    "load_backend",
    "scheme_of",
]

Port = Literal["storage", "queue", "repository", "validator", "engine"]
PORTS: tuple[Port, ...] = ("storage", "queue", "repository", "validator", "engine")


@dataclass(frozen=True, slots=True)
class _Builtin:
    target: str
    extra: str | None = None  # the extra that installs what the backend needs
    requires: tuple[str, ...] = ()  # modules imported lazily, only when the backend is built


# Built-ins: targets are imported only when asked for, so a missing optional dependency
# costs nothing until its scheme is used.
_BUILTINS: dict[str, dict[str, _Builtin]] = {
    "storage": {
        "file": _Builtin("bulkresize.storage.fsspec:FsspecStorage"),
        "memory": _Builtin("bulkresize.storage.fsspec:FsspecStorage"),
        "s3": _Builtin("bulkresize.storage.fsspec:FsspecStorage", "s3", ("s3fs",)),
        "s3a": _Builtin("bulkresize.storage.fsspec:FsspecStorage", "s3", ("s3fs",)),
    },
    "queue": {
        "local": _Builtin("bulkresize.queues.local:LocalQueue"),
        "redis": _Builtin("bulkresize.queues.rq:RQQueue", "redis", ("rq", "redis")),
        "rediss": _Builtin("bulkresize.queues.rq:RQQueue", "redis", ("rq", "redis")),
    },
    "repository": {
        "sqlite": _Builtin("bulkresize.repositories.sql:SQLRepository"),
        "postgresql": _Builtin(
            "bulkresize.repositories.sql:SQLRepository", "postgres", ("psycopg",)
        ),
        "postgresql+psycopg": _Builtin(
            "bulkresize.repositories.sql:SQLRepository", "postgres", ("psycopg",)
        ),
    },
    "validator": {
        "pandera": _Builtin("bulkresize.validation.pandera:PanderaValidator"),
    },
    "engine": {
        "pillow": _Builtin("bulkresize.engines.pillow:PillowEngine"),
    },
}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """One backend that the registry can build.

    Attributes:
        port: ``storage``, ``queue``, ``repository``, ``validator`` or ``engine``.
        scheme: The URL scheme (or name) that selects it.
        target: ``module:Class``.
        distribution: The installed package that provides it, with its version.
        source: ``builtin`` or ``entry point``.
        error: Why it cannot be loaded, when it cannot (e.g. a missing dependency).
    """

    port: str
    scheme: str
    target: str
    distribution: str
    source: str
    error: str | None = None


def scheme_of(url: str) -> str:
    """The scheme of a backend URL or name: ``s3://b/p`` → ``s3``, ``pillow`` → ``pillow``."""
    text = url.strip()
    return (text.split("://", 1)[0] if "://" in text else text).lower()


def _entry_points(port: str) -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=f"bulkresize.{port}"))


def _import_target(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def _install_hint(builtin: _Builtin) -> str:
    return f" (pip install 'bulkresize[{builtin.extra}]')" if builtin.extra else ""


def _describe_available(port: str) -> str:
    names: dict[str, str] = {}
    for scheme, builtin in _BUILTINS[port].items():
        names[scheme] = scheme + _install_hint(builtin)
    for entry_point in _entry_points(port):
        names.setdefault(entry_point.name, entry_point.name)
    return ", ".join(names[name] for name in sorted(names))


@overload
def load_backend(port: Port, url: str, base: type[T]) -> type[T]: ...
@overload
def load_backend(port: Port, url: str, base: None = None) -> type[Any]: ...
def load_backend(port: Port, url: str, base: type[Any] | None = None) -> type[Any]:
    """Find the class that handles ``url`` for ``port``.

    Args:
        port: Which port.
        url: A backend URL (``s3://bucket``), a name (``pillow``) or ``pkg.mod:Class``.
        base: When given, the class must be a subclass of it.

    Raises:
        BackendNotFound: No backend handles the scheme, or its package is missing or broken.
    """
    if port not in _BUILTINS:
        raise ConfigurationError(f"unknown port {port!r}; ports: {', '.join(PORTS)}")
    text = url.strip()
    cls = _load_dotted(port, text) if _is_dotted_path(text) else _load_scheme(port, scheme_of(text))
    if base is not None and not (isinstance(cls, type) and issubclass(cls, base)):
        raise BackendNotFound(f"{port} backend {text!r} is not a subclass of {base.__name__}")
    return cast(type[Any], cls)


def _is_dotted_path(text: str) -> bool:
    """``pkg.mod:Class`` or ``mod:Class``: a module, a colon and an attribute path (no ``//``)."""
    if "://" in text:
        return False
    module, sep, attribute = text.partition(":")
    names = [*module.split("."), *attribute.split(".")]
    return bool(sep) and all(name.isidentifier() for name in names)


def _load_dotted(port: str, text: str) -> Any:
    try:
        return _import_target(text)
    except (ImportError, AttributeError) as exc:
        raise BackendNotFound(f"cannot load {port} backend {text!r}: {exc}") from exc


def _load_scheme(port: str, scheme: str) -> Any:
    for entry_point in _entry_points(port):
        if entry_point.name.lower() == scheme:
            try:
                return entry_point.load()
            except Exception as exc:  # a broken plug-in is reported, not swallowed
                dist = _distribution_of(entry_point)
                raise BackendNotFound(
                    f"the {port} plug-in {scheme!r} from {dist} failed to import: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
    builtin = _BUILTINS[port].get(scheme)
    if builtin is None:
        raise BackendNotFound(
            f"no {port} backend for {_shown(scheme)}; available: {_describe_available(port)}"
        )
    missing = _missing_requirement(builtin)
    if missing is not None:
        raise BackendNotFound(
            f"the {port} backend for '{scheme}://' needs {missing}, which is not installed"
            f"{_install_hint(builtin)}"
        )
    return _import_target(builtin.target)


def _shown(scheme: str) -> str:
    # A scheme reads as a URL prefix; a name that is neither scheme nor path reads as itself.
    return f"'{scheme}://'" if scheme.replace("+", "").replace("-", "").isalnum() else repr(scheme)


def _missing_requirement(builtin: _Builtin) -> str | None:
    for module in builtin.requires:
        if importlib.util.find_spec(module) is None:
            return module
    return None


def create_backend(port: Port, url: str, base: type[T], **options: Any) -> T:
    """Build the backend for ``url`` with ``cls.from_url(url, **options)``.

    Raises:
        BackendNotFound: As :func:`load_backend`.
    """
    cls: Any = load_backend(port, url, base)
    return cast(T, cls.from_url(url, **options))


def _distribution_of(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    if dist is None:
        return "an unknown package"
    return f"{dist.metadata['Name']} {dist.version}"


def available_backends() -> Iterator[BackendInfo]:
    """Every backend that the registry knows, built-in and from entry points, per port.

    Each one is imported to tell whether it loads; failures are reported in ``error``.
    """
    own = importlib.metadata.distribution("bulkresize")
    own_name = f"{own.metadata['Name']} {own.version}"
    for port in PORTS:
        seen: set[str] = set()
        for entry_point in sorted(_entry_points(port), key=lambda ep: ep.name):
            seen.add(entry_point.name)
            error = None
            try:
                entry_point.load()
            except Exception as exc:  # report, do not hide, a broken plug-in
                error = f"{type(exc).__name__}: {exc}"
            yield BackendInfo(
                port,
                entry_point.name,
                entry_point.value,
                _distribution_of(entry_point),
                "entry point",
                error,
            )
        for scheme, builtin in _BUILTINS[port].items():
            if scheme in seen:
                continue
            missing = _missing_requirement(builtin)
            error = f"needs {missing}{_install_hint(builtin)}" if missing else None
            yield BackendInfo(port, scheme, builtin.target, own_name, "builtin", error)
