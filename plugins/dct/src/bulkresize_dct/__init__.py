"""bulkresize-dct: JPEG to JPEG without pixels, by requantising the DCT coefficients.

Select it with ``BULKRESIZE_ENGINE=dct``; see the README for when it applies and what differs.
"""

from bulkresize_dct.engine import DctEngine

__all__ = ["DctEngine"]
