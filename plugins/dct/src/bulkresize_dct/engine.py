"""The DCT-domain engine: the Pillow engine, with JPEG → JPEG done on coefficients."""

from __future__ import annotations

from bulkresize.engines.pillow import PillowEngine
from bulkresize_dct._transcode import requantize

__all__ = ["DctEngine"]


class DctEngine(PillowEngine):
    """The Pillow engine, except that a JPEG needing no pixel work is requantised.

    When the pixel path would only change the quantisation (JPEG in and out, EXIF orientation
    1, no colour profile other than sRGB, no smaller bounding box), the file's quantised DCT
    coefficients are read (Huffman decoding only), rescaled from the file's tables to the
    standard tables at the output quality, and written with the standard Huffman tables: the
    inverse DCT, upsampling, colour conversion, downsampling and forward DCT are all skipped.
    This applies to 8-bit greyscale and 4:2:0 YCbCr JPEGs, baseline or progressive, the usual
    camera and web layouts. Everything else, and any file libjpeg reports as damaged, takes the
    Pillow engine's path, with its results and its errors.

    The output has the same quantisation tables, size and colour as the pixel path's, carries
    no metadata, is as close to the source (SSIM within 0.003), and is up to 2% larger. It is
    not the same file: near a rounding boundary the pixel path's rounding of its decoded samples
    decides a coefficient, and this path rounds the exact value (see the README). libjpeg runs
    without the GIL.

    Args:
        max_image_pixels: The most pixels (width x height) an image may have.
        max_frames: The most frames an animation or multi-page file may declare.

    Raises:
        ConfigurationError: A limit is not a whole number of at least 1.
    """

    def transcode_jpeg(self, data: bytes, quality: int) -> bytes | None:
        """Requantise ``data`` to the standard tables at ``quality``, or ``None`` if unsuitable.

        Args:
            data: The JPEG file, as downloaded.
            quality: The output quality, 1 to 95.

        Returns:
            The new JPEG file, or ``None`` when the file is not 8-bit greyscale or 4:2:0 YCbCr,
            or is damaged (the Pillow path then decides).
        """
        output, _reason = requantize(data, quality)
        return output
