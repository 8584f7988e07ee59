"""The default image engine, built on Pillow (DESIGN §3)."""

from __future__ import annotations

import itertools
import os
from io import BytesIO
from typing import Any, Final

from PIL import (
    ExifTags,
    Image,
    ImageChops,
    ImageCms,
    ImageFile,
    ImageMath,
    UnidentifiedImageError,
    features,
)

from bulkresize.engines.base import ImageEngine
from bulkresize.errors import ConfigurationError, DecodeError, ImageError, NotAnImage, TooManyPixels
from bulkresize.models import EncodedImage, ImageOptions

__all__ = ["PillowEngine"]

#: Output format → (Pillow format, file extension, MIME type).
_OUTPUTS: Final = {
    "jpeg": ("JPEG", "jpg", "image/jpeg"),
    "png": ("PNG", "png", "image/png"),
    "webp": ("WEBP", "webp", "image/webp"),
}

#: Input formats that ``format="keep"`` re-encodes as themselves (an MPO is a JPEG).
_KEPT: Final = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp"}

#: How each EXIF orientation is undone (the same table as ``ImageOps.exif_transpose``).
_TRANSPOSES: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

#: BMP info-header sizes, which make "BM" a signature rather than two letters of text.
_BMP_HEADER_SIZES: Final = frozenset({12, 40, 52, 56, 64, 108, 124})

#: Every colour of a 16-level RGB cube, to tell whether an ICC profile is sRGB in effect.
_PROBE: Final = bytes(itertools.chain.from_iterable(itertools.product(range(0, 256, 17), repeat=3)))

#: Pictures up to this many pixels are saved into a BytesIO: the GIL is held for well under a
#: millisecond, less than the memfd's five system calls cost.
_SMALL_PICTURE: Final = 256 * 1024

#: Decode in 16 MiB chunks: Pillow releases the GIL once per chunk (64 KiB by default).
_DECODER_MAXBLOCK: Final = 16 * 1024 * 1024


class PillowEngine(ImageEngine):
    """Re-encodes one image with Pillow, safely, following DESIGN §3.

    The type is sniffed from the bytes' signature: JPEG (and MPO), PNG (and APNG), GIF, WebP,
    AVIF (when Pillow has AVIF support), TIFF and BMP. Only the first frame of an animation or
    multi-page file is decoded. EXIF orientation is applied to the pixels, an embedded ICC
    profile (and CMYK) is converted to sRGB, transparency is flattened onto white, 16-bit
    samples are scaled to 8 bits (65535 becomes 255), and the output carries no metadata at all.
    Greyscale stays greyscale in JPEG and PNG output. A profile that already maps colours onto
    sRGB is detected on a small probe and skipped; a broken or mismatched one is ignored.

    Output formats: ``jpeg`` and ``webp`` use ``options.quality``; ``png`` is lossless and
    ignores it. ``keep`` re-encodes JPEG, PNG and WebP input in its own format; every other
    input (GIF, AVIF, TIFF, BMP) is encoded as JPEG.

    Limits are checked on the parsed header, before any pixel is decoded: more than
    ``max_image_pixels`` pixels, or more than ``max_frames`` frames (a frame-count bomb), raise
    ``TooManyPixels``. Pillow's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) is left
    as it is and applies too; it also maps to ``TooManyPixels``.

    The engine changes no Pillow or ``warnings`` global and keeps no mutable state, so one
    instance serves many threads. Pillow warns (``UserWarning``) about some malformed but
    decodable files, such as a corrupt EXIF block or MPO header; where warnings are turned into
    errors, such a file fails with ``DecodeError`` instead.

    Args:
        max_image_pixels: The most pixels (width x height) an image may have.
        max_frames: The most frames an animation or multi-page file may declare.

    Raises:
        ConfigurationError: A limit is not a whole number of at least 1.
    """

    def __init__(self, *, max_image_pixels: int = 50_000_000, max_frames: int = 10_000) -> None:
        for name, value in (("max_image_pixels", max_image_pixels), ("max_frames", max_frames)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"{name} must be a whole number of at least 1, not {value!r}"
                )
        self.max_image_pixels: Final = max_image_pixels
        self.max_frames: Final = max_frames
        self._avif: Final = "avif" in features.modules and bool(features.check_module("avif"))
        # Skip the checks that guard transcode_jpeg() when no subclass overrides it.
        self._transcodes: Final = type(self).transcode_jpeg is not PillowEngine.transcode_jpeg

    def process(self, data: bytes, options: ImageOptions) -> EncodedImage:
        """Decode ``data`` and re-encode it as ``options`` ask.

        Args:
            data: The image file, as downloaded.
            options: Output format, quality and bounding box.

        Returns:
            The encoded image and its format, extension, MIME type and size.

        Raises:
            NotAnImage: The bytes carry no signature of a supported image format.
            TooManyPixels: The header declares more pixels or frames than the limits allow.
            DecodeError: The image is truncated or corrupt, or (rarely) cannot be encoded in
                the output format; the message says which.
        """
        source = _sniff(data)
        if source is None or (source == "AVIF" and not self._avif):
            raise NotAnImage(
                f"the bytes are not an image of a supported format (they start with {data[:12]!r})"
            )
        try:
            with Image.open(BytesIO(data), formats=[source]) as im:
                self._check_limits(im)
                output = options.format
                if output == "keep":
                    output = _KEPT.get(im.format or "", "jpeg")
                if output == "jpeg" and self._transcodes and _needs_no_pixel_work(im, options):
                    transcoded = self.transcode_jpeg(data, options.quality)
                    if transcoded is not None:
                        return EncodedImage(
                            data=transcoded,
                            format="jpeg",
                            extension="jpg",
                            content_type="image/jpeg",
                            width=im.width,
                            height=im.height,
                        )
                picture = _decode(im, options)
                return _encode(picture, output, options.quality)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise TooManyPixels(f"the {source} image is too large to decode safely: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise DecodeError(
                f"could not decode the {source} image: its header is corrupt"
            ) from exc
        except Exception as exc:  # any input must end in an ImageError, whatever Pillow raises
            raise DecodeError(f"could not decode the {source} image: {_describe(exc)}") from exc

    def transcode_jpeg(self, data: bytes, quality: int) -> bytes | None:
        """Re-encode a JPEG at ``quality`` without decoding it to pixels, if the subclass can.

        A hook for engines that work in the DCT domain (``bulkresize-dct``). It is called only
        when the pixel path would change nothing but the quantisation: JPEG in and out, limits
        checked, EXIF orientation 1, greyscale or YCbCr, no ICC profile or one that is sRGB in
        effect, and no smaller bounding box. The result must carry no metadata and encode the
        same picture at the same size as the pixel path would.

        Args:
            data: The JPEG file, as downloaded.
            quality: The output quality, 1 to 95.

        Returns:
            The new JPEG file, or ``None`` to decode and encode the pixels instead (the default).
            Return ``None`` for any file the transcoder does not handle or finds damaged: the
            pixel path then gives the usual result or error.
        """
        return None

    def _check_limits(self, im: ImageFile.ImageFile) -> None:
        width, height = im.size
        if width * height > self.max_image_pixels:
            raise TooManyPixels(
                f"the image is {width}x{height} = {width * height:,} pixels, "
                f"more than the limit of {self.max_image_pixels:,}"
            )
        frames: int = getattr(im, "n_frames", 1)  # parses frame headers only, no pixels
        if frames > self.max_frames:
            raise TooManyPixels(
                f"the image has {frames:,} frames, more than the limit of {self.max_frames:,}"
            )


def _sniff(data: bytes) -> str | None:
    """The Pillow format that the bytes' signature names, or ``None``."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
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
        # An ISO-BMFF file is AVIF when "avif"/"avis" is its major or a compatible brand
        # (HEIC shares the container but is not supported).
        end = min(int.from_bytes(data[:4], "big"), len(data))
        brands = {data[8:12]} | {data[i : i + 4] for i in range(16, end - 3, 4)}
        if brands & {b"avif", b"avis"}:
            return "AVIF"
    return None


def _decode(im: ImageFile.ImageFile, options: ImageOptions) -> Image.Image:
    """Load the first frame and make it an upright, flattened L or RGB picture in sRGB."""
    im.decodermaxblock = _DECODER_MAXBLOCK
    if im.format in ("JPEG", "MPO"):
        # JPEG's EXIF sits in the header, so the final size is known before decoding and
        # draft() can let libjpeg scale down in the DCT domain, which is much cheaper.
        orientation = _orientation(im)
        box = _source_box(im.size, orientation, options)
        if box != im.size:
            im.draft(im.mode, box)
        im.load()
    else:
        im.load()  # before getexif(): a PNG's eXIf chunk may follow the pixel data
        orientation = _orientation(im)
        box = _source_box(im.size, orientation, options)
    picture = _to_srgb(_flatten(_to_8bit(im)), im.info.get("icc_profile"))
    if picture.size != box:
        picture = picture.resize(box, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if orientation in _TRANSPOSES:
        picture = picture.transpose(_TRANSPOSES[orientation])
    return picture


def _needs_no_pixel_work(im: ImageFile.ImageFile, options: ImageOptions) -> bool:
    """Whether the pixel path would only re-quantise this image (see transcode_jpeg)."""
    if im.format not in ("JPEG", "MPO") or im.mode not in ("L", "RGB"):
        return False
    if _orientation(im) != 1 or _source_box(im.size, 1, options) != im.size:
        return False
    icc_profile = im.info.get("icc_profile")
    if not (isinstance(icc_profile, bytes) and icc_profile):
        return True
    transform = _srgb_transform(im.mode, icc_profile)
    return transform is None or (im.mode == "RGB" and _is_identity(transform))


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation, 1 to 8; 1 when there is none or the EXIF block is unreadable."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a corrupt EXIF block must not cost the picture
        return 1
    return value if value in _TRANSPOSES else 1


def _source_box(size: tuple[int, int], orientation: int, options: ImageOptions) -> tuple[int, int]:
    """The size to scale to before orientation is applied, so the upright result fits the box."""
    width, height = size
    transposed = orientation in (5, 6, 7, 8)  # these swap width and height
    if transposed:
        width, height = height, width
    scale = min(1.0, (options.max_width or width) / width, (options.max_height or height) / height)
    fitted = (max(1, round(width * scale)), max(1, round(height * scale)))
    return (fitted[1], fitted[0]) if transposed else fitted


def _to_8bit(im: Image.Image) -> Image.Image:
    """Bring any mode to L, LA, RGB, RGBA or CMYK, turning tRNS colour keys into alpha."""
    mode = im.mode
    if mode.startswith("I"):  # I, I;16, I;16B, I;16L, I;16N
        return _grey16_to_8bit(im)
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK") and "transparency" not in im.info:
        return im
    if mode in ("1", "L", "LA", "La", "F"):
        return im.convert("LA" if im.has_transparency_data else "L")
    return im.convert("RGBA" if im.has_transparency_data else "RGB")


def _grey16_to_8bit(im: Image.Image) -> Image.Image:
    """Scale 16-bit grey so 65535 becomes 255 (a plain convert would clip at 255)."""
    wide = im if im.mode == "I" else im.convert("I")
    grey = wide.point(lambda value: value / 257 + 0.5).convert("L")
    key = im.info.get("transparency")
    if not isinstance(key, int):
        return grey
    # Compare at full depth: several 16-bit values share each 8-bit one.
    opaque: Image.Image = ImageMath.lambda_eval(lambda args: args["wide"] != key, wide=wide)
    return Image.merge("LA", (grey, opaque.convert("L").point(lambda value: value * 255)))


def _flatten(im: Image.Image) -> Image.Image:
    """Composite an image with alpha onto white and drop the alpha."""
    if im.mode not in ("LA", "RGBA"):
        return im
    white = Image.new(im.mode, im.size, (255,) * len(im.mode))
    return Image.alpha_composite(white, im).convert(im.mode[:-1])


def _to_srgb(im: Image.Image, icc_profile: Any) -> Image.Image:
    """Convert L, RGB or CMYK to sRGB with its ICC profile; greyscale stays L."""
    if isinstance(icc_profile, bytes) and icc_profile:
        converted = _apply_profile(im, icc_profile)
        if converted is not None:
            im = converted
    return im if im.mode in ("L", "RGB") else im.convert("RGB")


def _apply_profile(im: Image.Image, icc_profile: bytes) -> Image.Image | None:
    """The pixels in sRGB, or ``None`` if the profile is broken, misfits the mode, or is sRGB."""
    transform = _srgb_transform(im.mode, icc_profile)
    if transform is None or (im.mode == "RGB" and _is_identity(transform)):
        return None  # most profiles on the web are sRGB; skipping them saves a full pass
    try:
        converted = transform.apply(im)
    except Exception:  # a profile that fails on these pixels: fall back to plain conversion
        return None
    return converted.convert("L") if im.mode == "L" else converted


def _srgb_transform(mode: str, icc_profile: bytes) -> ImageCms.ImageCmsTransform | None:
    """A transform from the profile to sRGB, or ``None`` if the profile is broken or misfits."""
    try:
        source = ImageCms.ImageCmsProfile(BytesIO(icc_profile))
        return ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), mode, "RGB")
    except Exception:  # a broken or mismatched profile: plain conversion instead
        return None


def _is_identity(transform: ImageCms.ImageCmsTransform) -> bool:
    """Whether an RGB transform moves no colour of a 16-level cube by more than 1."""
    probe = Image.frombytes("RGB", (len(_PROBE) // 3, 1), _PROBE)
    try:
        difference = ImageChops.difference(transform.apply(probe), probe)
    except Exception:  # the caller's own apply() then fails the same way and is handled
        return False
    return difference.point(lambda value: 255 if value > 1 else 0).getbbox() is None


def _encode(picture: Image.Image, output: str, quality: int) -> EncodedImage:
    """Encode an L or RGB picture with no metadata."""
    pillow_format, extension, content_type = _OUTPUTS[output]
    params: dict[str, Any] = {}
    if output == "jpeg":
        params = {"quality": quality, "optimize": False, "progressive": False}
    elif output == "webp":
        params = {"quality": quality}
    picture.info = {}  # JPEG and PNG savers copy comments and ICC profiles from info
    try:
        data = _save(picture, pillow_format, params)
    except Exception as exc:  # e.g. wider than the format allows (WebP: 16383 pixels)
        raise DecodeError(
            f"could not encode the {picture.width}x{picture.height} image as {pillow_format}: "
            f"{_describe(exc)}"
        ) from exc
    return EncodedImage(
        data=data,
        format=output,
        extension=extension,
        content_type=content_type,
        width=picture.width,
        height=picture.height,
    )


def _save(picture: Image.Image, pillow_format: str, params: dict[str, Any]) -> bytes:
    """Save into an in-memory file with a real descriptor, so Pillow releases the GIL."""
    small = picture.width * picture.height <= _SMALL_PICTURE
    if small or not hasattr(os, "memfd_create"):  # not Linux: BytesIO works, holding the GIL
        buffer = BytesIO()
        picture.save(buffer, format=pillow_format, **params)
        return buffer.getvalue()
    fd = os.memfd_create("bulkresize", os.MFD_CLOEXEC)
    try:
        file = open(fd, "w+b")  # noqa: SIM115  # closed by the with below
    except BaseException:
        os.close(fd)
        raise
    with file:
        picture.save(file, format=pillow_format, **params)
        file.seek(0)
        return file.read()


def _describe(exc: BaseException) -> str:
    """An exception as readable text, even when its message is empty."""
    return str(exc).strip() or type(exc).__name__
