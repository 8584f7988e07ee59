"""An image engine built on libvips (through pyvips), for very large images."""

from __future__ import annotations

import itertools
import os
from typing import Any, Final, Self

import pyvips  # type: ignore[import-untyped, unused-ignore]  # pyvips has no py.typed marker

from bulkresize.engines.base import ImageEngine
from bulkresize.engines.pillow import PillowEngine
from bulkresize.errors import ConfigurationError, DecodeError, ImageError, NotAnImage, TooManyPixels
from bulkresize.models import EncodedImage, ImageOptions
from bulkresize_vips.headers import PngFacts, declared_size, scan_png, sniff, xmp_orientation

__all__ = ["VipsEngine"]

#: Output format → (file extension, MIME type).
_OUTPUTS: Final = {
    "jpeg": ("jpg", "image/jpeg"),
    "png": ("png", "image/png"),
    "webp": ("webp", "image/webp"),
}

#: Input formats that ``format="keep"`` re-encodes as themselves (an MPO is a JPEG).
_KEPT: Final = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}

#: The libvips loaders that may read each sniffed format; any other is refused.
_LOADERS: Final = {
    "JPEG": frozenset({"jpegload_buffer", "uhdrload_buffer"}),
    "PNG": frozenset({"pngload_buffer"}),
    "GIF": frozenset({"gifload_buffer"}),
    "WEBP": frozenset({"webpload_buffer"}),
    "TIFF": frozenset({"tiffload_buffer"}),
    "AVIF": frozenset({"heifload_buffer"}),
}

#: Loader options: fail on truncated or corrupt data instead of filling the rest with grey.
#: They go in ``option_string`` because thumbnail_buffer does not pass its own ``fail_on`` on.
_FAIL_ON: Final = "error"
_LOAD_OPTIONS: Final = f"fail_on={_FAIL_ON}"

#: ``keep=VIPS_FOREIGN_KEEP_NONE``: write no EXIF, XMP, IPTC, ICC profile or comment.
_KEEP_NONE: Final = 0

#: Baseline JPEG exactly as Pillow (libjpeg's ``jpeg_set_quality``) writes it: standard tables,
#: no Huffman optimisation, no progressive scans, no mozjpeg extras, and always 4:2:0, which
#: libvips would otherwise turn off from Q 90 up.
_JPEG_OPTIONS: Final = {
    "optimize_coding": False,
    "interlace": False,
    "trellis_quant": False,
    "overshoot_deringing": False,
    "optimize_scans": False,
    "quant_table": 0,
    "subsample_mode": "on",
    "keep": _KEEP_NONE,
}

#: WebP's largest width and height.
_WEBP_MAX_SIDE: Final = 16383

#: Every colour of a 16-level RGB cube, to tell whether an ICC profile is sRGB in effect.
_PROBE: Final = bytes(itertools.chain.from_iterable(itertools.product(range(0, 256, 17), repeat=3)))

#: Every grey level, to tell whether a greyscale ICC profile can be applied at all.
_GREY_PROBE: Final = bytes(range(256))

_ICC_FIELD: Final = "icc-profile-data"


class VipsEngine(ImageEngine):
    """Re-encodes one image with libvips, following DESIGN §3 as the Pillow engine does.

    libvips decodes on demand and streams the pixels through the pipeline, so a large image is
    never held whole in memory unless it has to be rotated. An image that will be scaled down
    is decoded at a reduced size where its format allows: a JPEG by libjpeg's DCT scaling, at
    the factor Pillow's ``draft()`` picks; WebP, HEIF and pyramidal TIFF through
    ``thumbnail_buffer``.

    The behaviour is the Pillow engine's: the type is sniffed from the bytes (JPEG, PNG, GIF,
    WebP, TIFF, AVIF when libvips can read it, and BMP, which libvips cannot read and which is
    handed to a ``PillowEngine`` with the same limits); the pixel and frame limits are checked on
    the parsed header before any pixel is decoded; only the first frame is kept; EXIF (or XMP)
    orientation is applied; an embedded ICC profile is applied (perceptual intent) unless it
    maps colours onto sRGB already, and CMYK without a profile is converted with Pillow's
    formula; transparency is flattened onto white; 16-bit samples become 8-bit; greyscale stays
    greyscale; nothing of the input's metadata is written. JPEG output uses the same
    quantisation tables, chroma subsampling and Huffman tables as Pillow at the same quality.
    Truncated or corrupt data fails with ``DecodeError``.

    libvips is configured when the engine is built, not when this module is imported: its
    operation cache is turned off (it would keep recent input buffers alive) and each pipeline
    runs ``concurrency`` worker threads. Both settings are process-wide. The engine keeps no
    mutable state, so one instance serves many threads.

    Args:
        max_image_pixels: The most pixels (width x height) an image may have.
        max_frames: The most frames an animation or multi-page file may declare.
        concurrency: Worker threads per libvips pipeline. ``None`` keeps ``VIPS_CONCURRENCY``
            when it is set and uses 1 otherwise, since the service already runs many images
            at once, one per thread.

    Raises:
        ConfigurationError: A limit is not a whole number of at least 1, or the libvips that
            pyvips found is older than 8.15.
    """

    def __init__(
        self,
        *,
        max_image_pixels: int = 50_000_000,
        max_frames: int = 10_000,
        concurrency: int | None = None,
    ) -> None:
        for name, value in (
            ("max_image_pixels", max_image_pixels),
            ("max_frames", max_frames),
            ("concurrency", 1 if concurrency is None else concurrency),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"{name} must be a whole number of at least 1, not {value!r}"
                )
        if not pyvips.at_least_libvips(8, 15):  # "keep" and fail_on in option strings
            raise ConfigurationError(
                "bulkresize-vips needs libvips 8.15 or later; pyvips found "
                f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)} "
                "(pip install 'pyvips[binary]' brings a recent one)"
            )
        self.max_image_pixels: Final = max_image_pixels
        self.max_frames: Final = max_frames
        self._avif: Final = pyvips.type_find("VipsOperation", "heifload_buffer") != 0
        # libvips cannot read BMP without ImageMagick; Pillow can, with the same limits.
        self._bmp: Final = PillowEngine(max_image_pixels=max_image_pixels, max_frames=max_frames)
        pyvips.cache_set_max(0)
        pyvips.cache_set_max_mem(0)
        pyvips.cache_set_max_files(0)
        if concurrency is not None or not os.environ.get("VIPS_CONCURRENCY"):
            pyvips.concurrency_set(concurrency or 1)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build the engine; ``url`` is its registry name (``vips``) or dotted path.

        Options: ``max_image_pixels``, ``max_frames``, ``concurrency``.
        """
        return cls(**options)

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
        source = sniff(data)
        if source is None or (source == "AVIF" and not self._avif):
            raise NotAnImage(
                f"the bytes are not an image of a supported format (they start with {data[:12]!r})"
            )
        if source == "BMP":
            return self._bmp.process(data, options)
        try:
            return self._process(source, data, options)
        except ImageError:
            raise
        except pyvips.Error as exc:
            raise DecodeError(f"could not decode the {source} image: {_vips_reason(exc)}") from exc
        except Exception as exc:  # any input must end in an ImageError, whatever libvips raises
            raise DecodeError(f"could not decode the {source} image: {_describe(exc)}") from exc

    def _process(self, source: str, data: bytes, options: ImageOptions) -> EncodedImage:
        png = scan_png(data) if source == "PNG" else None
        declared = declared_size(source, data)
        if declared is not None:
            self._check_pixels(*declared)  # libvips refuses some bombs as "corrupt"
        try:
            header = pyvips.Image.new_from_buffer(data, "", access="sequential")
        except pyvips.Error as exc:
            raise DecodeError(
                f"could not decode the {source} image: its header is corrupt ({_vips_reason(exc)})"
            ) from exc
        loader = _string_field(header, "vips-loader")
        if loader not in _LOADERS[source]:
            raise DecodeError(f"could not decode the {source} image: libvips reads it as {loader}")
        self._check_limits(header, png)
        orientation = _orientation(header, png)
        box = _source_box((header.width, header.height), orientation, options)
        colour = _colour_plan(header)
        profile = {"output_profile": "srgb", "intent": "perceptual"} if colour == "icc" else {}
        fit = {
            "height": box[1],
            "size": "force",  # box is already the fitted size, rounded as Pillow rounds it
            "no_rotate": True,  # orientation is applied below, from EXIF or XMP
            **profile,
        }
        if source == "JPEG" or colour == "cmyk":
            picture = _load(source, data, header, box)
            if colour == "cmyk":
                picture = _cmyk_to_rgb(picture)
            picture = picture.thumbnail_image(box[0], **fit)
        else:
            # libvips shrinks on load where the format allows (WebP, HEIF, TIFF pyramids).
            picture = pyvips.Image.thumbnail_buffer(
                data, box[0], option_string=_LOAD_OPTIONS, fail_on=_FAIL_ON, **fit
            )
        picture = _normalise(picture, grey=_is_grey(header))
        if orientation != 1:
            picture = _orient(picture, orientation)
        output = options.format
        if output == "keep":
            output = _KEPT.get(source, "jpeg")
        return _encode(picture, output, options.quality)

    def _check_pixels(self, width: int, height: int) -> None:
        if width * height > self.max_image_pixels:
            raise TooManyPixels(
                f"the image is {width}x{height} = {width * height:,} pixels, "
                f"more than the limit of {self.max_image_pixels:,}"
            )

    def _check_limits(self, header: Any, png: PngFacts | None) -> None:
        self._check_pixels(header.width, header.height)
        frames = png.frames if png is not None else _int_field(header, "n-pages", 1)
        if frames > self.max_frames:
            raise TooManyPixels(
                f"the image has {frames:,} frames, more than the limit of {self.max_frames:,}"
            )


def _string_field(image: Any, name: str) -> str:
    return str(image.get(name)) if image.get_typeof(name) else ""


def _int_field(image: Any, name: str, default: int) -> int:
    return int(image.get(name)) if image.get_typeof(name) else default


def _is_grey(header: Any) -> bool:
    """Whether the source is greyscale (with or without alpha), so the output stays grey."""
    return header.bands in (1, 2)


def _orientation(header: Any, png: PngFacts | None) -> int:
    """The EXIF orientation, 1 to 8, found where Pillow finds it; 1 when there is none."""
    if png is not None:
        found = png.orientation  # libvips reads neither ImageMagick's EXIF text nor XMP here
    elif header.get_typeof("orientation"):
        found = int(header.get("orientation"))
    elif header.get_typeof("xmp-data"):
        found = xmp_orientation(bytes(header.get("xmp-data")))
    else:
        found = None
    return found if found is not None and 2 <= found <= 8 else 1


def _source_box(size: tuple[int, int], orientation: int, options: ImageOptions) -> tuple[int, int]:
    """The size to scale to before orientation is applied, so the upright result fits the box."""
    width, height = size
    transposed = orientation in (5, 6, 7, 8)  # these swap width and height
    if transposed:
        width, height = height, width
    scale = min(1.0, (options.max_width or width) / width, (options.max_height or height) / height)
    fitted = (max(1, round(width * scale)), max(1, round(height * scale)))
    return (fitted[1], fitted[0]) if transposed else fitted


def _colour_plan(header: Any) -> str:
    """``icc`` to apply the embedded profile, ``cmyk`` for Pillow's plain CMYK formula, or ``""``.

    A profile is tried on a small probe first: one that fails, or (for RGB) that moves no colour
    by more than 1, is skipped, as the Pillow engine skips it. Without the probe libvips would
    quietly substitute its own CMYK profile for a missing one, which renders colours very
    differently from Pillow's formula.
    """
    cmyk = header.interpretation == "cmyk"
    if not header.get_typeof(_ICC_FIELD):
        return "cmyk" if cmyk else ""
    profile = bytes(header.get(_ICC_FIELD))
    if cmyk:
        probe = pyvips.Image.new_from_memory(bytes(range(0, 256, 17)) * 4, 4, 4, 4, "uchar")
        probe = probe.copy(interpretation="cmyk")
    elif _is_grey(header):
        probe = pyvips.Image.new_from_memory(_GREY_PROBE, len(_GREY_PROBE), 1, 1, "uchar")
        probe = probe.copy(interpretation="b-w")
    else:
        probe = pyvips.Image.new_from_memory(_PROBE, len(_PROBE) // 3, 1, 3, "uchar")
        probe = probe.copy(interpretation="srgb")
    probe.set_type(pyvips.GValue.blob_type, _ICC_FIELD, profile)
    try:
        converted = probe.icc_transform("srgb", embedded=True, intent="perceptual")
        if probe.bands == 3 and (converted - probe).abs().max() <= 1:
            return ""  # most profiles on the web are sRGB; skipping them saves a full pass
        converted.avg()  # run the transform, so a broken profile fails here and not later
    except pyvips.Error:
        return "cmyk" if cmyk else ""  # a broken or mismatched profile is ignored
    return "icc"


def _load(source: str, data: bytes, header: Any, box: tuple[int, int]) -> Any:
    """Open the image for sequential reading; a JPEG at the reduced size Pillow would pick."""
    if source != "JPEG":
        return pyvips.Image.new_from_buffer(data, "", access="sequential", fail_on=_FAIL_ON)
    # Pillow's draft(): the largest DCT scaling (1/8 to 1) that leaves at least the box.
    # thumbnail_buffer would stop one step earlier, which costs ~1.7x the time on 24 MP.
    scale = min(header.width // box[0], header.height // box[1])
    shrink = next(factor for factor in (8, 4, 2, 1) if scale >= factor)
    image = pyvips.Image.jpegload_buffer(data, shrink=shrink, access="sequential", fail_on=_FAIL_ON)
    # libvips drops the last partial block, libjpeg (and so Pillow) keeps it; without it the
    # scale to the box would differ by up to a pixel's worth, shifting every edge a little.
    width, height = -(-header.width // shrink), -(-header.height // shrink)
    if (image.width, image.height) != (width, height):
        image = image.embed(0, 0, width, height, extend="copy")
    return image


def _cmyk_to_rgb(image: Any) -> Any:
    """CMYK without a usable profile, converted to RGB with Pillow's formula."""
    if image.format != "uchar":
        image = (image >> 8).cast("uchar") if image.format == "ushort" else image.cast("uchar")
    cyan, magenta, yellow, black = image[0], image[1], image[2], image[3]
    white = 255 - black
    # Pillow: channel = (255 - K) - C x (255 - K) / 255, rounded.
    rgb = [white - (ink * white / 255).rint() for ink in (cyan, magenta, yellow)]
    picture = rgb[0].bandjoin(rgb[1:])
    if image.bands > 4:
        picture = picture.bandjoin(image[4])  # alpha, flattened later
    return picture.cast("uchar").copy(interpretation="srgb")


def _normalise(picture: Any, *, grey: bool) -> Any:
    """Flatten alpha onto white, and make the result 8-bit sRGB, or 8-bit grey for grey input."""
    if picture.hasalpha():
        picture = picture.flatten(background=[255.0] * (picture.bands - 1))
    if grey and picture.bands >= 3:
        picture = picture.colourspace("b-w")  # an ICC transform of grey gives sRGB
    if picture.format != "uchar":
        picture = picture.cast("uchar")
    return picture


def _orient(picture: Any, orientation: int) -> Any:
    """Apply an EXIF orientation (2 to 8) to the pixels."""
    # A rotation reads the image out of order, which a sequential load cannot serve.
    upright = picture.copy_memory().copy()
    upright.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    return upright.autorot()


def _encode(picture: Any, output: str, quality: int) -> EncodedImage:
    """Encode an 8-bit grey or sRGB picture with no metadata."""
    extension, content_type = _OUTPUTS[output]
    width, height = picture.width, picture.height
    if output == "jpeg":
        data = picture.jpegsave_buffer(Q=quality, **_JPEG_OPTIONS)
    elif output == "webp":
        if max(width, height) > _WEBP_MAX_SIDE:
            raise DecodeError(
                f"could not encode the {width}x{height} image as WEBP: "
                f"WebP images are at most {_WEBP_MAX_SIDE} pixels wide and high"
            )
        data = picture.webpsave_buffer(Q=quality, effort=4, keep=_KEEP_NONE)
    else:
        data = picture.pngsave_buffer(compression=6, interlace=False, keep=_KEEP_NONE)
    return EncodedImage(
        data=bytes(data),
        format=output,
        extension=extension,
        content_type=content_type,
        width=width,
        height=height,
    )


def _vips_reason(exc: Any) -> str:
    """The libvips error detail as one line, each distinct message once."""
    lines = [line.strip() for line in str(exc.detail or "").splitlines()]
    reasons = list(dict.fromkeys(line for line in lines if line))
    text = "; ".join(reasons) or str(exc.message).strip() or "libvips error"
    return text if len(text) <= 300 else text[:297] + "..."


def _describe(exc: BaseException) -> str:
    """An exception as readable text, even when its message is empty."""
    return str(exc).strip() or type(exc).__name__
