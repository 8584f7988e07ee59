"""Repository backends. The port is :class:`Repository`; ``sql`` covers SQLite and PostgreSQL."""

from bulkresize.repositories.base import Repository, WebhookOutbox

__all__ = ["Repository", "WebhookOutbox"]
