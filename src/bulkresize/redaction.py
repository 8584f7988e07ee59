"""Keeping credentials out of messages: for backends whose URLs carry passwords."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["redact_url", "scrub"]


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``; a URL too malformed to read is hidden.

    A password that holds ``@`` is found whole (the user info ends at the last ``@``).
    """
    try:
        password = urlsplit(url).password
    except ValueError:
        return "<malformed URL>"
    return scrub(url, password)


def scrub(text: str, password: str | None) -> str:
    """``text`` with every occurrence of ``password`` replaced by ``***``."""
    return text.replace(password, "***") if password else text
