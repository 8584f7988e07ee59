"""Settings: one frozen dataclass, read from ``BULKRESIZE_*`` environment variables.

Every variable is documented in ``docs/configuration.md``; a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bulkresize.errors import ConfigurationError, InvalidOption
from bulkresize.models import ImageOptions

__all__ = ["ENV_PREFIX", "Settings", "parse_rate_limit"]

ENV_PREFIX = "BULKRESIZE_"


@dataclass(frozen=True, slots=True)
class Settings:
    """How a bulkresize deployment is wired and limited.

    Build it with ``Settings.from_env()`` or directly; override fields with
    ``dataclasses.replace(settings, ...)``. URLs left at ``None`` are derived from ``data_dir``.

    Attributes:
        data_dir: Where the embedded defaults keep their files.
        storage_url: Any fsspec URL for stored objects; default ``file://<data_dir>/files``.
        storage_options: Extra keyword arguments for the storage backend (fsspec options).
        public_url: Base URL for output links; default: the storage's own ``url()``.
        database_url: A SQLAlchemy URL; default ``sqlite:///<data_dir>/bulkresize.db``.
        queue_url: ``local://`` (threads in this process) or a registered queue's URL.
        validator: The CSV validator's name (``pandera``) or ``pkg.mod:Class``.
        engine: The image engine's name (``pillow``) or ``pkg.mod:Class``.
        quality: Default encoder quality, 1 to 95.
        format: Default output format: ``jpeg``, ``webp``, ``png`` or ``keep``.
        max_width: Default box width to fit inside; ``None`` keeps the size.
        max_height: Default box height to fit inside; ``None`` keeps the size.
        webhook_secret: Standard Webhooks secret, ``whsec_…``.
        webhook_timeout: Seconds for one webhook delivery attempt.
        webhook_max_attempts: Delivery attempts before a webhook is marked failed.
        webhook_backoff: Seconds before the first webhook retry; doubled each time, with jitter.
        webhook_backoff_max: The longest wait between two webhook attempts.
        api_keys: API keys accepted by the HTTP service; empty means no authentication.
        rate_limit: Requests allowed per API key (per client address when keys are off) on the
            API routes, as ``N/unit`` with unit ``second``, ``minute``, ``hour`` or ``day``;
            ``None``: no limit.
        allow_private_urls: Lift the SSRF guard (local development and tests only).
        allowed_hosts: Host names (or IP literals) that image and webhook URLs may reach even
            when they resolve to a private address, e.g. an internal image server.
        connect_timeout: Seconds to connect to an origin.
        read_timeout: Seconds allowed between two reads of a download.
        fetch_timeout: Seconds for a whole download.
        max_redirects: Redirects followed per download, each checked again.
        fetch_retries: Extra attempts after a transient download failure.
        retry_backoff: Seconds before the first retry; doubled for each further one.
        max_upload_bytes: Largest CSV accepted.
        max_rows: Most data rows in a CSV.
        max_urls_per_row: Most image URLs in one row.
        max_image_bytes: Largest image downloaded, counted while streaming.
        max_image_pixels: Most pixels in an image, checked before decoding.
        download_concurrency: Downloads in flight at once in one process.
        encode_workers: Threads that decode and encode; default: the number of CPUs.
        processes: With the embedded queue, child processes that download, re-encode and
            store the images (0: the process itself does, on threads); default: one per CPU
            when there are several and the pipeline built its backends from these settings.
        image_timeout: Seconds one image may take to decode and encode before it fails with
            ``processing_timeout``.
        neutralize_formulas: Prefix output cells that a spreadsheet would run as formulas.
        sweep_interval: Seconds between two sweeps for lost jobs in a long-running process.
    """

    data_dir: Path = field(default_factory=lambda: Path("bulkresize-data"))
    storage_url: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    public_url: str | None = None
    database_url: str | None = None
    queue_url: str = "local://"
    validator: str = "pandera"
    engine: str = "pillow"
    quality: int = 50
    format: str = "jpeg"
    max_width: int | None = None
    max_height: int | None = None
    webhook_secret: str | None = None
    webhook_timeout: float = 10.0
    webhook_max_attempts: int = 8
    webhook_backoff: float = 2.0
    webhook_backoff_max: float = 3600.0
    api_keys: tuple[str, ...] = ()
    rate_limit: str | None = None
    allow_private_urls: bool = False
    allowed_hosts: tuple[str, ...] = ()
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    fetch_timeout: float = 30.0
    max_redirects: int = 5
    fetch_retries: int = 2
    retry_backoff: float = 0.5
    max_upload_bytes: int = 50 * 1024 * 1024
    max_rows: int = 100_000
    max_urls_per_row: int = 100
    max_image_bytes: int = 25 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    download_concurrency: int = 16
    encode_workers: int | None = None
    processes: int | None = None
    image_timeout: float = 60.0
    neutralize_formulas: bool = True
    sweep_interval: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))  # accept str paths too
        try:
            self.image_options  # noqa: B018  # fail early on bad defaults
        except InvalidOption as exc:
            raise ConfigurationError(str(exc)) from None
        for name in (
            "max_upload_bytes",
            "max_rows",
            "max_urls_per_row",
            "max_image_bytes",
            "max_image_pixels",
            "download_concurrency",
        ):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1")
        if self.encode_workers is not None and self.encode_workers < 1:
            raise ConfigurationError("encode_workers must be at least 1")
        if self.processes is not None and self.processes < 0:
            raise ConfigurationError("processes must be 0 or more")
        if self.image_timeout <= 0:
            raise ConfigurationError("image_timeout must be more than 0")
        if self.rate_limit is not None:
            parse_rate_limit(self.rate_limit)

    @property
    def image_options(self) -> ImageOptions:
        """The deployment's default image options."""
        return ImageOptions(
            quality=self.quality,
            format=self.format,
            max_width=self.max_width,
            max_height=self.max_height,
        )

    @property
    def resolved_storage_url(self) -> str:
        """``storage_url``, or the default under ``data_dir``."""
        if self.storage_url:
            return self.storage_url
        return (self.data_dir.resolve() / "files").as_uri()

    @property
    def resolved_database_url(self) -> str:
        """``database_url``, or the default SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir.resolve() / 'bulkresize.db').as_posix()}"

    @property
    def resolved_encode_workers(self) -> int:
        """``encode_workers``, or the number of CPUs this process may use."""
        if self.encode_workers:
            return self.encode_workers
        return available_cpus()

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``BULKRESIZE_*`` variables, then apply ``overrides``.

        Args:
            environ: The environment to read; default ``os.environ``.
            **overrides: Fields that win over the environment.

        Raises:
            ConfigurationError: A variable is malformed.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            name = ENV_PREFIX + spec.name.upper()
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            values[spec.name] = _convert(name, spec.name, raw.strip())
        values.update(overrides)
        return cls(**values)


def available_cpus() -> int:
    """The number of CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_RATE_UNITS = ("second", "minute", "hour", "day")


def parse_rate_limit(text: str) -> tuple[str, int]:
    """``"120/minute"`` → ``("minute", 120)``; plural units and spaces are accepted.

    Raises:
        ConfigurationError: The text is not ``N/unit`` with N at least 1.
    """
    count, _, unit = text.partition("/")
    unit = unit.strip().lower().removesuffix("s")
    try:
        number = int(count.strip())
    except ValueError:
        number = 0
    if number < 1 or unit not in _RATE_UNITS:
        raise ConfigurationError(
            f"rate_limit must look like 120/minute (a count, then second, minute, hour or day),"
            f" not {text!r}"
        )
    return unit, number


_INTS = {
    "quality",
    "max_width",
    "max_height",
    "max_redirects",
    "fetch_retries",
    "max_upload_bytes",
    "max_rows",
    "max_urls_per_row",
    "max_image_bytes",
    "max_image_pixels",
    "download_concurrency",
    "encode_workers",
    "processes",
    "webhook_max_attempts",
}
_FLOATS = {
    "connect_timeout",
    "read_timeout",
    "fetch_timeout",
    "retry_backoff",
    "webhook_timeout",
    "webhook_backoff",
    "webhook_backoff_max",
    "sweep_interval",
    "image_timeout",
}
_BOOLS = {"allow_private_urls", "neutralize_formulas"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(variable: str, name: str, raw: str) -> Any:
    if name == "data_dir":
        return Path(raw).expanduser()
    if name == "storage_options":
        try:
            options = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{variable} is not valid JSON: {exc.msg}") from None
        if not isinstance(options, dict):
            raise ConfigurationError(f"{variable} must be a JSON object")
        return options
    if name in ("api_keys", "allowed_hosts"):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    if name == "format":
        return raw.lower()
    if name in _BOOLS:
        lowered = raw.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigurationError(f"{variable} must be true or false, not {raw!r}")
    if name in _INTS:
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise ConfigurationError(f"{variable} must be a whole number, not {raw!r}") from None
    if name in _FLOATS:
        try:
            return float(raw)
        except ValueError:
            raise ConfigurationError(f"{variable} must be a number, not {raw!r}") from None
    return raw
