"""The image engine port: bytes and options in, re-encoded bytes out."""

from __future__ import annotations

import abc
from typing import Any, Self

from bulkresize.models import EncodedImage, ImageOptions

__all__ = ["ImageEngine"]


class ImageEngine(abc.ABC):
    """Decodes one image and re-encodes it (DESIGN §3).

    An engine sniffs the type from the bytes, checks the pixel count before decoding, applies
    EXIF orientation, converts to sRGB, flattens transparency onto white, keeps the first frame
    of an animation, strips all metadata and fits the result inside ``max_width`` ×
    ``max_height`` without upscaling. It is called from several threads at once.
    """

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build the engine; ``url`` is its registry name (``pillow``) or dotted path.

        Options: ``max_image_pixels``.
        """
        return cls(**options)

    @abc.abstractmethod
    def process(self, data: bytes, options: ImageOptions) -> EncodedImage:
        """Re-encode one image.

        Raises:
            NotAnImage: The bytes are not an image of a supported format.
            TooManyPixels: The image is larger than the pixel limit (checked before decoding).
            DecodeError: The image is truncated or corrupt.
        """

    def close(self) -> None:  # noqa: B027  # lifecycle hooks are no-ops by default
        """Release resources."""
