"""bulkresize-vips: a bulkresize image engine built on libvips, for very large images.

Select it with ``BULKRESIZE_ENGINE=vips``; see the README for what differs from Pillow.
"""

from bulkresize_vips.engine import VipsEngine

__all__ = ["VipsEngine"]
