"""What the engine reads from an image's bytes itself, before libvips sees them.

The type is sniffed here, and a PNG's chunks are walked here, so that both engines refuse and
orient the same files: libvips reads neither a PNG's ``Raw profile type exif`` text nor its
XMP, and it quietly skips a text chunk that inflates into a decompression bomb.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from typing import Final

__all__ = [
    "PngFacts",
    "declared_size",
    "exif_orientation",
    "scan_png",
    "sniff",
    "xmp_orientation",
]

#: BMP info-header sizes, which make "BM" a signature rather than two letters of text.
_BMP_HEADER_SIZES: Final = frozenset({12, 40, 52, 56, 64, 108, 124})

#: The most a compressed PNG text chunk may inflate to (Pillow's ``MAX_TEXT_CHUNK``).
MAX_TEXT_CHUNK: Final = 1024 * 1024

#: The most text all of a PNG's text chunks may hold together (Pillow's ``MAX_TEXT_MEMORY``).
MAX_TEXT_MEMORY: Final = 64 * MAX_TEXT_CHUNK

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_XMP_KEY: Final = b"XML:com.adobe.xmp"
_RAW_EXIF_KEY: Final = b"Raw profile type exif"
_ORIENTATION_TAG: Final = 0x0112
_XMP_ORIENTATION: Final = re.compile(rb'tiff:Orientation(="|>)([0-9])')


def sniff(data: bytes) -> str | None:
    """The format that the bytes' signature names (as Pillow spells it), or ``None``.

    The same signatures as the Pillow engine: JPEG (and MPO), PNG (and APNG), GIF, WebP, TIFF,
    BMP, and AVIF (an ISO-BMFF file with an ``avif`` or ``avis`` brand; HEIC is not AVIF).
    """
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if data.startswith(b"BM") and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if data[4:8] == b"ftyp":
        end = min(int.from_bytes(data[:4], "big"), len(data))
        brands = {data[8:12]} | {data[i : i + 4] for i in range(16, end - 3, 4)}
        if brands & {b"avif", b"avis"}:
            return "AVIF"
    return None


def declared_size(source: str, data: bytes) -> tuple[int, int] | None:
    """The width and height a PNG's IHDR or a GIF's first frame declares, if readable.

    libvips refuses some absurd headers outright (a 4-gigapixel GIF has "no frames"), so the
    pixel limit is checked on these raw numbers too, and such a bomb is reported as one.
    """
    if source == "PNG" and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if source == "GIF" and len(data) >= 13:
        return _gif_canvas(data)
    return None


def _gif_canvas(data: bytes) -> tuple[int, int] | None:
    """The GIF's canvas as Pillow sizes it: the screen, grown to hold the first frame."""
    width, height = struct.unpack("<HH", data[6:10])
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global palette
    while pos < len(data) and data[pos] != 0x3B:  # up to the trailer
        if data[pos] == 0x21:  # an extension: its label, then sub-blocks up to an empty one
            pos += 2
            while pos < len(data) and data[pos]:
                pos += data[pos] + 1
            pos += 1
        elif data[pos] == 0x2C:  # the first image descriptor
            if pos + 9 > len(data):
                break
            left, top, frame_width, frame_height = struct.unpack("<HHHH", data[pos + 1 : pos + 9])
            return max(width, left + frame_width), max(height, top + frame_height)
        else:
            pos += 1  # Pillow skips a stray byte between blocks too
    return None  # no frame at all: a corrupt file, which libvips reports as one


@dataclass(frozen=True, slots=True)
class PngFacts:
    """What a PNG's chunks say, besides its pixels.

    Attributes:
        frames: The frames an APNG declares in its ``acTL`` chunk; 1 for a still PNG.
        exif: The ``eXIf`` chunk, if any.
        raw_exif: The hex text of a ``Raw profile type exif`` text chunk (ImageMagick), if any.
        xmp: The XMP packet, if any.
    """

    frames: int = 1
    exif: bytes | None = None
    raw_exif: str | None = None
    xmp: bytes | None = None

    @property
    def orientation(self) -> int | None:
        """The EXIF orientation tag, read as Pillow reads it: EXIF first, then XMP."""
        exif = self.exif
        if exif is None and self.raw_exif is not None:
            try:
                exif = bytes.fromhex("".join(self.raw_exif.split("\n")[3:]))
            except ValueError:
                exif = None
        found = exif_orientation(exif) if exif else None
        if found is None and self.xmp is not None:
            found = xmp_orientation(self.xmp)
        return found


def scan_png(data: bytes) -> PngFacts:
    """Walk a PNG's chunks, refusing what Pillow refuses in them.

    Args:
        data: The whole file.

    Returns:
        The frame count, EXIF and XMP found in the chunks.

    Raises:
        ValueError: A chunk before the image data has a bad checksum, a text chunk inflates
            beyond 1 MiB or uses an unknown compression method, the text chunks hold more than
            64 MiB in all, or the ``acTL`` chunk is truncated. The message says which.
    """
    pos = len(_PNG_SIGNATURE)
    in_header = True  # until the first IDAT: Pillow verifies these chunks' checksums
    text_memory = 0
    frames: int | None = 1
    actl_seen = False
    exif = raw_exif = None
    xmp: bytes | None = None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        start, end = pos + 8, pos + 8 + length
        if end + 4 > len(data):
            break  # truncated: libvips reports it when it decodes
        pos = end + 4
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            in_header = False
            continue
        if kind == b"fdAT":
            continue  # APNG frame data: never needed, and it can be most of the file
        body = data[start:end]
        if in_header and zlib.crc32(kind + body) != int.from_bytes(data[end : end + 4], "big"):
            raise ValueError(f"broken PNG file (bad header checksum in {kind!r})")
        if kind == b"acTL" and in_header:
            if length < 8:
                raise ValueError("APNG contains truncated acTL chunk")
            declared = int.from_bytes(body[:4], "big")
            # Like Pillow: a second acTL, or a count of 0 or over 2**31, means "not animated".
            frames = None if actl_seen or declared == 0 or declared > 0x80000000 else declared
            actl_seen = True
        elif kind == b"eXIf":
            exif = b"Exif\x00\x00" + body
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            text = _text_chunk(kind, body)
            if text is None:
                continue
            key, value = text
            text_memory += len(value)
            if text_memory > MAX_TEXT_MEMORY:
                raise ValueError(f"too much memory used in text chunks: over {MAX_TEXT_MEMORY}")
            if key == _RAW_EXIF_KEY:
                raw_exif = value.decode("latin-1")
            elif key == _XMP_KEY:
                xmp = value
    return PngFacts(frames=frames or 1, exif=exif, raw_exif=raw_exif, xmp=xmp)


def _text_chunk(kind: bytes, body: bytes) -> tuple[bytes, bytes] | None:
    """A text chunk's key and (inflated) value; ``None`` when Pillow would skip it."""
    key, _, value = body.partition(b"\x00")
    if kind == b"tEXt":
        return (key, value) if key else None
    if kind == b"zTXt":
        method = value[0] if value else 0
        if method != 0:
            raise ValueError(f"unknown compression method {method} in zTXt chunk")
        try:
            value = _inflate(value[1:])
        except zlib.error:
            value = b""
        return (key, value) if key else None
    # iTXt: key, compression flag and method, language tag, translated key, text.
    if len(value) < 2:
        return None
    compressed, method, rest = value[0], value[1], value[2:]
    parts = rest.split(b"\x00", 2)
    if len(parts) < 3:
        return None
    text = parts[2]
    if compressed:
        if method != 0:
            return None
        try:
            text = _inflate(text)
        except zlib.error:
            return None
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return key, text


def _inflate(compressed: bytes) -> bytes:
    """Inflate at most ``MAX_TEXT_CHUNK`` bytes; more is a decompression bomb."""
    inflater = zlib.decompressobj()
    plain = inflater.decompress(compressed, MAX_TEXT_CHUNK)
    if inflater.unconsumed_tail:
        raise ValueError(f"a compressed text chunk inflates beyond {MAX_TEXT_CHUNK} bytes")
    return plain


def exif_orientation(exif: bytes) -> int | None:
    r"""The Orientation tag of IFD0 in an EXIF block, or ``None`` when it has none.

    Args:
        exif: A TIFF structure, optionally behind one or two ``Exif\\0\\0`` prefixes.
    """
    data = re.sub(rb"^(Exif\x00\x00){1,2}", b"", exif)
    if data[:4] == b"II*\x00":
        order = "<"
    elif data[:4] == b"MM\x00*":
        order = ">"
    else:
        return None
    try:
        (offset,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[offset : offset + 2])
        for index in range(count):
            at = offset + 2 + 12 * index
            tag, kind, _ = struct.unpack(order + "HHI", data[at : at + 8])
            if tag != _ORIENTATION_TAG:
                continue
            if kind == 3:  # SHORT, as the standard says
                return int(struct.unpack(order + "H", data[at + 8 : at + 10])[0])
            if kind == 4:  # LONG, as some writers do
                return int(struct.unpack(order + "I", data[at + 8 : at + 12])[0])
            if kind == 1:  # BYTE
                return int(data[at + 8])
            return None
    except (struct.error, IndexError):
        return None  # a corrupt EXIF block must not cost the picture
    return None


def xmp_orientation(xmp: bytes) -> int | None:
    """The ``tiff:Orientation`` of an XMP packet, or ``None`` (Pillow's fallback to EXIF)."""
    match = _XMP_ORIENTATION.search(xmp)
    return int(match[2]) if match else None
