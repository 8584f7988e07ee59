"""The HTTP service: :func:`create_app` and the :class:`BulkResizePlugin` it is built from.

Importing this module imports Litestar (``pip install 'bulkresize[server]'``); importing
:mod:`bulkresize` does not.
"""

from __future__ import annotations

from bulkresize.web.app import create_app
from bulkresize.web.plugin import BulkResizePlugin

__all__ = ["BulkResizePlugin", "create_app"]
