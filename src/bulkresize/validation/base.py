"""The validator port: turns CSV bytes into a :class:`~bulkresize.models.Catalogue`."""

from __future__ import annotations

import abc
from typing import Any, Self

from bulkresize.models import Catalogue

__all__ = ["Validator"]


class Validator(abc.ABC):
    """Parses and validates an input CSV (DESIGN §1), reporting every problem at once."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build the validator; ``url`` is its registry name (``pandera``) or dotted path.

        Options are the limits from :class:`~bulkresize.settings.Settings`
        (``max_rows``, ``max_urls_per_row``, ``max_upload_bytes``).
        """
        return cls(**options)

    @abc.abstractmethod
    def validate(self, data: bytes, *, allow_local_files: bool = False) -> Catalogue:
        """Parse and check a whole CSV.

        Args:
            data: The raw file, UTF-8 with or without a BOM.
            allow_local_files: Accept ``file://`` URLs and relative paths as image sources
                (the CLI and the library do; the HTTP API does not).

        Returns:
            The header, the rows and their image URLs.

        Raises:
            ValidationFailed: With every problem found, each ``{row, column, value, message}``.
                No other exception escapes, whatever the bytes.
        """

    def close(self) -> None:  # noqa: B027  # lifecycle hooks are no-ops by default
        """Release resources."""
