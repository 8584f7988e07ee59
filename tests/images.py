"""Images made on the fly for tests, and checks on outputs."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageStat


def photo(width: int = 320, height: int = 240, *, seed: int = 1) -> Image.Image:
    """A photo-like RGB image: gradients and shapes, so JPEG has detail to quantise."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        draw.line([(0, y), (width, y)], fill=(255 * y // height, (40 * seed) % 256, 200))
    for n in range(12):
        x, y = (37 * n * seed) % width, (53 * n + seed) % height
        draw.ellipse(
            [x, y, x + width // 6, y + height // 6],
            fill=((70 * n) % 256, (30 * n) % 256, (90 * n) % 256),
        )
    return image


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def jpeg_with_orientation(orientation: int, width: int = 300, height: int = 200) -> bytes:
    """A JPEG whose stored pixels are width×height, with an EXIF orientation and GPS data."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCam"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (12.0, 34.0, 56.0)
    return encode(photo(width, height), "JPEG", quality=95, exif=exif)


def transparent_png(size: int = 120) -> bytes:
    """An RGBA PNG: left half fully transparent, right half opaque red."""
    image = Image.new("RGBA", (size, size), (0, 0, 255, 0))
    ImageDraw.Draw(image).rectangle([size // 2, 0, size, size], fill=(255, 0, 0, 255))
    return encode(image, "PNG")


def quality_50_tables() -> dict[int, list[int]]:
    """The quantisation tables Pillow writes at quality 50."""
    return Image.open(io.BytesIO(encode(photo(64, 64), "JPEG", quality=50))).quantization


def mean_colour(image: Image.Image, box: tuple[int, int, int, int]) -> tuple[float, ...]:
    return tuple(ImageStat.Stat(image.convert("RGB").crop(box)).mean)
