"""bulkresize: bulk image compression from a CSV of product image URLs."""

from bulkresize.__about__ import __version__

__all__ = ["__version__"]
