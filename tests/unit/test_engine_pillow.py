"""The Pillow engine: every corpus file, orientation, colour, alpha, metadata, limits, threads."""

from __future__ import annotations

import contextlib
import csv
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import (
    Image,
    ImageChops,
    ImageCms,
    ImageFilter,
    ImageOps,
    ImageSequence,
    ImageStat,
    JpegImagePlugin,
    PngImagePlugin,
)

from bulkresize.engines.base import ImageEngine
from bulkresize.engines.pillow import PillowEngine
from bulkresize.errors import ConfigurationError, DecodeError, ImageError, NotAnImage, TooManyPixels
from bulkresize.models import EncodedImage, ImageOptions

CORPUS = Path(
    os.environ.get(
        "BULKRESIZE_TEST_CORPUS",
        Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "real-world",
    )
)
CORPUS_FILES = (
    sorted(p.name for p in CORPUS.iterdir() if p.name != "MANIFEST.csv") if CORPUS.is_dir() else []
)

#: What each corpus file that must fail fails with. Every other file must give an image.
EXPECTED_ERRORS = {
    "broken.png": "decode_error",  # a PNG signature followed by garbage
    "decompression_bomb.gif": "too_many_pixels",  # a 65535-wide frame in a 32x32 canvas
    "png_decompression_dos.png": "decode_error",  # a zTXt chunk that inflates hugely
    "truncated_image.png": "decode_error",
    "truncated_jpeg.jpg": "decode_error",
    "ultrahdr.jpg": "decode_error",  # a real JPEG, cut short
}
CODES = {"not_an_image", "too_many_pixels", "decode_error"}

#: Where the marked top-left corner of a stored image is seen once each orientation is applied.
ORIENTED_CORNER = {
    1: "top-left",
    2: "top-right",
    3: "bottom-right",
    4: "bottom-left",
    5: "top-left",
    6: "top-right",
    7: "bottom-right",
    8: "bottom-left",
}
RED, BLUE = (230, 30, 30), (40, 80, 200)


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> PillowEngine:
    return PillowEngine()


def process(data: bytes, engine: ImageEngine | None = None, **options: Any) -> EncodedImage:
    return (engine or PillowEngine()).process(data, ImageOptions(**options))


def reopen(result: EncodedImage) -> Image.Image:
    """The output decoded, after Pillow's own integrity check."""
    with Image.open(BytesIO(result.data)) as check:
        check.verify()
    im = Image.open(BytesIO(result.data))
    im.load()
    assert im.format == result.format.upper()
    assert im.size == (result.width, result.height)
    return im


def output(data: bytes, engine: ImageEngine | None = None, **options: Any) -> Image.Image:
    return reopen(process(data, engine, **options))


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def mad(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per sample, over all channels."""
    assert a.size == b.size
    if a.mode != b.mode:
        a, b = a.convert("RGB"), b.convert("RGB")
    means = ImageStat.Stat(ImageChops.difference(a, b)).mean
    return sum(means) / len(means)


def flattened(im: Image.Image) -> Image.Image:
    """Pillow's own rendering of the current frame, composited onto white."""
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", im.size, "white"), rgba).convert("RGB")


def corpus_image(corpus_dir: Path, name: str) -> Image.Image:
    with Image.open(corpus_dir / name) as im:
        im.load()
        return im


def photo(size: tuple[int, int] = (256, 192)) -> Image.Image:
    """A photo-like image: smooth gradients plus noise, so JPEG has real work to do."""
    noise = Image.effect_noise(size, 40)
    gradient = Image.linear_gradient("L").resize(size)
    radial = Image.radial_gradient("L").resize(size)
    return Image.merge("RGB", (gradient, radial, ImageChops.add(noise, gradient, scale=2)))


def marked(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """A blue image whose top-left 10x10 corner is red."""
    im = Image.new("RGB", size, BLUE)
    im.paste(RED, (0, 0, 10, 10))
    return im


def corner_colour(im: Image.Image, corner: str) -> tuple[int, ...]:
    x = 4 if corner.endswith("left") else im.width - 5
    y = 4 if corner.startswith("top") else im.height - 5
    pixel = im.convert("RGB").getpixel((x, y))
    assert isinstance(pixel, tuple)
    return pixel


def grey(im: Image.Image, xy: tuple[int, int]) -> int:
    value = im.getpixel(xy)
    assert isinstance(value, (int, float))
    return int(value)


def close_to(pixel: tuple[int, ...], colour: tuple[int, ...], tolerance: int = 20) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares its size but whose pixel data is garbage: decoding it must fail."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"not zlib data at all")
        + png_chunk(b"IEND", b"")
    )


def png_chunks(data: bytes) -> list[bytes]:
    kinds, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kinds.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    return kinds


def riff_chunks(data: bytes) -> list[bytes]:
    kinds, offset = [], 12
    while offset < len(data):
        kinds.append(data[offset : offset + 4])
        (length,) = struct.unpack("<I", data[offset + 4 : offset + 8])
        offset += 8 + length + (length & 1)
    return kinds


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")


def assert_no_metadata(result: EncodedImage) -> None:
    """No EXIF, GPS, XMP, IPTC, ICC or comment survives, whatever the format."""
    data = result.data
    for marker in (b"Exif\x00\x00", b"ICC_PROFILE", b"http://ns.adobe.com/xap", b"Photoshop 3.0"):
        assert marker not in data
    im = reopen(result)
    assert not im.getexif()
    for key in ("exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "comment", "photoshop", "dpi"):
        assert key not in im.info
    if isinstance(im, JpegImagePlugin.JpegImageFile):
        assert [marker for marker, _ in im.applist] == ["APP0"]  # the JFIF header only
    elif result.format == "png":
        assert set(png_chunks(data)) <= {b"IHDR", b"IDAT", b"IEND"}
    else:
        assert not set(riff_chunks(data)) & {b"EXIF", b"XMP ", b"ICCP"}


# --- every corpus file ------------------------------------------------------------------------


def test_the_corpus_is_exactly_what_the_manifest_lists(corpus_dir: Path) -> None:
    with (corpus_dir / "MANIFEST.csv").open(newline="", encoding="utf-8") as manifest:
        rows = list(csv.reader(manifest))[1:]
    verdicts = {row[0]: row[-1] for row in rows}
    on_disk = {p.name for p in corpus_dir.iterdir() if p.name != "MANIFEST.csv"}
    assert set(verdicts) == on_disk == set(CORPUS_FILES)
    must_fail = {name for name, verdict in verdicts.items() if verdict != "decodes"}
    assert must_fail == set(EXPECTED_ERRORS)
    assert "DecompressionBombError" in verdicts["decompression_bomb.gif"]


# Pillow warns (UserWarning) about files it decodes anyway, e.g. a malformed MPO header.
@pytest.mark.filterwarnings("ignore::UserWarning:PIL")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", CORPUS_FILES)
def test_every_corpus_file_gives_a_clean_jpeg_or_its_error_code(
    corpus_dir: Path, engine: PillowEngine, name: str
) -> None:
    data = (corpus_dir / name).read_bytes()
    started = time.perf_counter()
    if name in EXPECTED_ERRORS:
        with pytest.raises(ImageError) as failure:
            engine.process(data, ImageOptions())
        assert failure.value.code == EXPECTED_ERRORS[name]
        assert "<" not in str(failure.value)  # readable, no object reprs
    else:
        result = engine.process(data, ImageOptions())
        assert (result.format, result.extension, result.content_type) == (
            "jpeg",
            "jpg",
            "image/jpeg",
        )
        assert reopen(result).mode in ("L", "RGB")
        assert_no_metadata(result)
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize(
    ("name", "code", "words"),
    [
        ("broken.png", "decode_error", "PNG"),
        ("truncated_image.png", "decode_error", "truncated"),
        ("truncated_jpeg.jpg", "decode_error", "truncated"),
        ("ultrahdr.jpg", "decode_error", "truncated"),
        ("png_decompression_dos.png", "decode_error", "too large"),
        ("decompression_bomb.gif", "too_many_pixels", "4364696535 pixels"),
    ],
)
def test_failing_corpus_files_say_what_went_wrong(
    corpus_dir: Path, name: str, code: str, words: str
) -> None:
    with pytest.raises(ImageError, match=words) as failure:
        process((corpus_dir / name).read_bytes())
    assert failure.value.code == code


def test_a_malformed_mpo_header_is_a_warning_and_the_jpeg_still_decodes(corpus_dir: Path) -> None:
    with pytest.warns(UserWarning, match="malformed MPO"):
        im = output((corpus_dir / "sugarshack_bad_mpo_header.jpg").read_bytes())
    assert im.size == (640, 480)


# --- orientation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [*(f"hopper_orientation_{n}.jpg" for n in range(2, 9)), "hopper_orientation_6.webp"]
)
def test_hopper_orientations_come_out_upright(corpus_dir: Path, name: str) -> None:
    upright = corpus_image(corpus_dir, "hopper.jpg").convert("RGB")
    stored = corpus_image(corpus_dir, name).convert("RGB")
    result = output((corpus_dir / name).read_bytes(), format="png")
    assert mad(result, upright) < 8
    assert mad(stored, upright) > 30  # the stored pixels really are turned


@pytest.mark.parametrize("name", ["exif_imagemagick_orientation.png", "empty_gps_ifd.jpg"])
def test_orientation_matches_pillows_exif_transpose(corpus_dir: Path, name: str) -> None:
    with Image.open(corpus_dir / name) as im:
        expected = ImageOps.exif_transpose(im).convert("RGB")
        assert im.getexif()[0x0112] in (3, 6)
    result = output((corpus_dir / name).read_bytes(), format="png")
    assert result.size == expected.size
    assert mad(result, expected) < 0.5


def test_a_2x1_image_with_orientation_8_becomes_1x2(corpus_dir: Path) -> None:
    result = process((corpus_dir / "orientation_rectangle.jpg").read_bytes())
    assert (result.width, result.height) == (1, 2)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_to_the_pixels(fmt: str, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(marked(), fmt, exif=exif, quality=95)
    result = output(data, format="png")
    assert result.size == ((40, 20) if orientation < 5 else (20, 40))
    for corner in ("top-left", "top-right", "bottom-left", "bottom-right"):
        expected = RED if corner == ORIENTED_CORNER[orientation] else BLUE
        assert close_to(corner_colour(result, corner), expected), (corner, orientation)


# --- metadata -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
@pytest.mark.parametrize(
    "name", ["exif_gps.jpg", "iptc.jpg", "photoshop-200dpi.jpg", "flower2.jpg", "hopper.jpg"]
)
def test_metadata_is_stripped(corpus_dir: Path, name: str, fmt: str) -> None:
    data = (corpus_dir / name).read_bytes()
    assert any(m in data for m in (b"Exif\x00\x00", b"Photoshop 3.0", b"\xff\xfe"))
    assert_no_metadata(process(data, format=fmt))


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "keep"])
def test_metadata_of_a_png_is_stripped(fmt: str) -> None:
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    exif.get_ifd(0x8825)[2] = (52.0, 31.0, 0.0)  # a GPS latitude
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "secret")
    text.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(photo((32, 32)), "PNG", exif=exif, pnginfo=text, icc_profile=srgb)
    assert_no_metadata(process(data, format=fmt))


# --- transparency -------------------------------------------------------------------------------


def transparent_pixels(im: Image.Image) -> list[tuple[int, int]]:
    """Where the source is fully transparent, worked out independently of the engine."""
    key = im.info.get("transparency")
    if im.mode in ("1", "L", "I;16", "I", "RGB") and key is not None:
        return [
            (x, y) for y in range(im.height) for x in range(im.width) if im.getpixel((x, y)) == key
        ]
    alpha = im.convert("RGBA").getchannel("A")
    return [
        (x, y) for y in range(im.height) for x in range(im.width) if alpha.getpixel((x, y)) == 0
    ]


@pytest.mark.parametrize(("fmt", "at_least"), [("png", 255), ("webp", 240), ("jpeg", 235)])
@pytest.mark.parametrize(
    "name",
    [
        "transparent.png",
        "transparent.gif",
        "transparent.webp",
        "pil123rgba.png",
        "p_trns_single.png",
        "rgb_trns.png",
        "l_trns.png",
        "i_trns.png",
        "uncompressed_la.png",
        "1_trns.png",
        "avif_transparency.avif",
    ],
)
def test_transparent_areas_become_white(
    corpus_dir: Path, name: str, fmt: str, at_least: int
) -> None:
    clear = transparent_pixels(corpus_image(corpus_dir, name))
    assert clear
    result = output((corpus_dir / name).read_bytes(), format=fmt).convert("L")
    mask = Image.new("L", result.size)
    for xy in clear:
        mask.putpixel(xy, 255)
    assert ImageStat.Stat(result, mask).mean[0] >= at_least


@pytest.mark.parametrize(("fmt", "tolerance"), [("png", 0), ("webp", 12), ("jpeg", 12)])
def test_rgba_is_composited_onto_white(fmt: str, tolerance: int) -> None:
    im = Image.new("RGBA", (48, 48), (0, 0, 0, 0))  # transparent black: white if flattened
    im.paste((200, 30, 60, 255), (24, 0, 48, 48))  # opaque colour on the right
    im.paste((0, 0, 0, 128), (0, 40, 8, 48))  # half-transparent black in a corner
    result = output(encode(im, "PNG"), format=fmt).convert("RGB")
    assert close_to(corner_colour(result, "top-left"), (255, 255, 255), tolerance)
    assert close_to(corner_colour(result, "top-right"), (200, 30, 60), tolerance)
    assert close_to(corner_colour(result, "bottom-left"), (127, 127, 127), tolerance + 1)


@pytest.mark.parametrize(
    ("mode", "key", "opaque"),
    [("L", 60, 61), ("RGB", (10, 200, 30), (10, 200, 31)), ("I;16", 30000, 30001)],
)
def test_a_trns_colour_key_is_matched_exactly_and_flattened(
    mode: str, key: Any, opaque: Any
) -> None:
    im = Image.new(mode, (16, 16), opaque)
    im.paste(Image.new(mode, (8, 16), key))  # paste(int) on I;16 fills bytes, not samples
    result = output(encode(im, "PNG", transparency=key), format="png").convert("RGB")
    assert result.getpixel((2, 2)) == (255, 255, 255)
    right = result.getpixel((12, 2))
    assert right != (255, 255, 255)
    # 30000 and 30001 are both 117 at 8 bits: the key must be compared at full depth.
    assert right == {"L": (61,) * 3, "RGB": (10, 200, 31), "I;16": (117,) * 3}[mode]


@pytest.mark.parametrize("transparency", [3, bytes([255, 255, 255, 0, 128])])
def test_palette_transparency_is_flattened(transparency: int | bytes) -> None:
    im = Image.new("P", (16, 16), 1)
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    im.paste(3, (0, 0, 8, 16))
    result = output(encode(im, "PNG", transparency=transparency), format="png")
    assert result.getpixel((2, 2)) == (255, 255, 255)
    assert result.getpixel((12, 2)) == (255, 0, 0)


# --- colour -------------------------------------------------------------------------------------


def test_cmyk_comes_out_close_to_the_rgb_original(corpus_dir: Path) -> None:
    cmyk = output((corpus_dir / "pil_sample_cmyk.jpg").read_bytes())
    rgb = output((corpus_dir / "pil_sample_rgb.jpg").read_bytes())
    assert cmyk.mode == "RGB"
    for channel in ImageStat.Stat(ImageChops.difference(cmyk, rgb)).mean:
        assert channel < 10


def swapped_primaries_profile() -> bytes:
    """An RGB profile whose red and blue primaries are swapped: far from sRGB on purpose."""
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    (count,) = struct.unpack(">I", profile[128:132])
    entries = {bytes(profile[132 + 12 * i : 136 + 12 * i]): 136 + 12 * i for i in range(count)}
    red, blue = entries[b"rXYZ"], entries[b"bXYZ"]
    profile[red : red + 8], profile[blue : blue + 8] = (
        profile[blue : blue + 8],
        profile[red : red + 8],
    )
    return bytes(profile)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_an_icc_profile_is_converted_to_srgb(fmt: str) -> None:
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    data = encode(red, fmt, icc_profile=swapped_primaries_profile(), quality=95)
    assert close_to(corner_colour(output(data, format="png"), "top-left"), (0, 0, 255), 25)


@pytest.mark.parametrize("name", ["rgb.jpg", "flower2.jpg", "icc_profile.png"])
def test_an_srgb_profile_changes_nothing(corpus_dir: Path, name: str) -> None:
    with Image.open(corpus_dir / name) as im:
        plain = flattened(im)
        assert b"sRGB" in im.info["icc_profile"]
    assert mad(output((corpus_dir / name).read_bytes(), format="png"), plain) < 0.01


def test_a_large_real_icc_profile_is_applied(corpus_dir: Path) -> None:
    with Image.open(corpus_dir / "icc_profile_big.jpg") as im:
        source = ImageCms.ImageCmsProfile(BytesIO(im.info["icc_profile"]))
        expected = ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"))
        raw = im.convert("RGB")
    assert expected is not None
    result = output((corpus_dir / "icc_profile_big.jpg").read_bytes(), format="png")
    assert mad(result, expected) < 1
    assert mad(raw, expected) > 5  # the profile matters, so ignoring it would fail


@pytest.mark.parametrize("profile", [b"not a profile at all" * 8, b"\x00" * 200])
def test_a_broken_icc_profile_falls_back_to_plain_pixels(profile: bytes) -> None:
    data = encode(Image.new("RGB", (16, 16), (255, 0, 0)), "PNG", icc_profile=profile)
    assert output(data, format="png").getpixel((8, 8)) == (255, 0, 0)


def grey_profile(gamma: float) -> bytes:
    """A minimal ICC v2 greyscale profile with a pure gamma curve."""

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    d50 = s15(0.9642) + s15(1.0) + s15(0.8249)
    text = b"Test grey\x00"
    tags = [
        (b"desc", b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(78)),
        (b"wtpt", b"XYZ " + bytes(4) + d50),
        (b"kTRC", b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (
        struct.pack(">I", offset + len(body))
        + bytes(4)
        + bytes([2, 0x10, 0, 0])
        + b"mntrGRAYXYZ "
        + bytes(12)
        + b"acsp"
        + bytes(28)
        + d50
        + bytes(48)
    )
    return header + struct.pack(">I", len(tags)) + table + body


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_grey_icc_profile_is_converted_and_stays_grey(fmt: str) -> None:
    # Linear (gamma 1.0) grey 77 is about 149 in sRGB; ignoring the profile would keep 77.
    data = encode(Image.new("L", (16, 16), 77), fmt, icc_profile=grey_profile(1.0), quality=95)
    result = output(data, format="png")
    assert result.mode == "L"
    assert close_to(corner_colour(result, "top-left"), (149, 149, 149), 2)


def test_a_mismatched_profile_on_greyscale_keeps_it_greyscale() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # an RGB profile
    data = encode(Image.new("L", (16, 16), 77), "JPEG", icc_profile=srgb, quality=95)
    result = output(data)
    assert result.mode == "L"
    assert close_to(corner_colour(result, "top-left"), (77, 77, 77), 2)


@pytest.mark.parametrize(("fmt", "mode"), [("jpeg", "L"), ("png", "L"), ("webp", "RGB")])
def test_greyscale_stays_greyscale_where_the_format_has_it(
    corpus_dir: Path, fmt: str, mode: str
) -> None:
    assert output((corpus_dir / "hopper_gray.jpg").read_bytes(), format=fmt).mode == mode


# --- 16-bit -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I;16B", "TIFF"), ("I", "TIFF")])
def test_16_bit_samples_are_scaled_not_clipped(mode: str, fmt: str) -> None:
    im = Image.new(mode, (4, 1))
    for x, value in enumerate([0, 64 * 257, 32896, 65535]):
        im.putpixel((x, 0), value)
    result = output(encode(im, fmt), format="png")
    assert result.mode == "L"
    assert [result.getpixel((x, 0)) for x in range(4)] == [0, 64, 128, 255]


def test_16_bit_grey_with_trns_follows_its_16_bit_values(corpus_dir: Path) -> None:
    # i_trns.png holds only 0..255 in 16-bit samples, so correctly scaled it is nearly black;
    # a plain convert("L") would show it as l_trns.png by accident.
    source = corpus_image(corpus_dir, "i_trns.png")
    result = output((corpus_dir / "i_trns.png").read_bytes(), format="png")
    key = source.info["transparency"]
    for y in range(0, source.height, 3):
        for x in range(0, source.width, 3):
            value = grey(source, (x, y))
            assert grey(result, (x, y)) == (255 if value == key else round(value / 257))


def test_a_16_bit_rgba_animation_keeps_full_intensity(corpus_dir: Path) -> None:
    result = output((corpus_dir / "apng_mode_16bit.png").read_bytes(), format="png")
    assert result.getextrema() == ((255, 255), (0, 0), (0, 0))  # frame 0 is opaque pure red


def test_mid_grey_16_bit_png_is_mid_grey() -> None:
    im = Image.new("I;16", (32, 32), 32896)
    result = output(encode(im, "PNG"))
    assert 120 <= ImageStat.Stat(result).mean[0] <= 136


@pytest.mark.parametrize(
    "mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I", "I;16", "F"]
)
def test_every_mode_converts_to_l_or_rgb(mode: str) -> None:
    gradient = Image.linear_gradient("L").resize((64, 64))
    if mode.startswith("I"):  # a 16-bit gradient spans 0..65535
        gradient = gradient.convert("I").point(lambda value: value * 257)
    im = gradient.convert(mode)
    result = output(encode(im, "TIFF"))
    assert result.mode in ("L", "RGB")
    ((low, high),) = ImageStat.Stat(result.convert("L")).extrema
    assert high - low > 100  # the gradient survived


# --- animation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["iss634.gif", "dispose_bgnd.gif", "iss634.webp"])
def test_animations_keep_their_first_frame(corpus_dir: Path, name: str) -> None:
    with Image.open(corpus_dir / name) as im:
        first = flattened(im)
        others = [mad(first, flattened(frame)) for frame in ImageSequence.Iterator(im)]
    result = output((corpus_dir / name).read_bytes(), format="png")
    assert mad(result, first) < 0.01
    assert max(others) > 1  # the frames differ, so a wrong frame would fail


# --- quality and options ------------------------------------------------------------------------


def test_quality_sets_the_jpeg_quantisation_tables() -> None:
    picture = photo()
    data = encode(picture, "PNG")
    at_50, at_90, reference = (
        output(data, quality=50),
        output(data, quality=90),
        Image.open(BytesIO(encode(picture, "JPEG", quality=50))),
    )
    assert isinstance(at_50, JpegImagePlugin.JpegImageFile)
    assert isinstance(at_90, JpegImagePlugin.JpegImageFile)
    assert isinstance(reference, JpegImagePlugin.JpegImageFile)
    assert at_50.quantization == reference.quantization
    assert at_50.quantization != at_90.quantization
    assert "progressive" not in at_50.info
    assert JpegImagePlugin.get_sampling(at_50) == 2  # Pillow's default 4:2:0


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("quality", [50, 85])
def test_a_plain_jpeg_comes_out_byte_for_byte_as_plain_decode_and_encode(
    mode: str, quality: int
) -> None:
    # The fast path (no copy, no colour conversion, fd-backed save) must not change one byte:
    # any drift in quality, colour or subsampling from Pillow's open → load → save fails here.
    data = encode(photo((640, 480)).convert(mode), "JPEG", quality=95)
    with Image.open(BytesIO(data)) as plain:
        plain.load()
        reference = encode(plain, "JPEG", quality=quality)
    assert process(data, quality=quality).data == reference


def test_the_default_is_jpeg_at_quality_50() -> None:
    data = encode(photo(), "PNG")
    assert process(data).data == process(data, quality=50, format="jpeg").data


def test_png_output_ignores_quality() -> None:
    data = encode(photo(), "PNG")
    assert process(data, format="png", quality=5).data == process(data, format="png").data


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((200, None), (200, 150)),
        ((None, 100), (133, 100)),
        ((200, 200), (200, 150)),
        ((300, 300), (300, 225)),
        ((400, 300), (400, 300)),
        ((4000, 3000), (400, 300)),  # never upscale
        ((1, 1), (1, 1)),
    ],
)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_max_width_and_height_fit_inside_the_box(
    fmt: str, box: tuple[int | None, int | None], expected: tuple[int, int]
) -> None:
    data = encode(photo((400, 300)), fmt, quality=95)
    result = process(data, max_width=box[0], max_height=box[1])
    assert (result.width, result.height) == expected


def test_the_box_applies_to_the_upright_image() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 400x300, shown 300x400
    data = encode(photo((400, 300)), "JPEG", exif=exif)
    result = process(data, max_width=150)
    assert (result.width, result.height) == (150, 200)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_downscaling_looks_like_a_full_lanczos_resize(fmt: str) -> None:
    picture = photo((1600, 1200)).filter(ImageFilter.GaussianBlur(3))
    data = encode(picture, fmt, quality=95)
    with Image.open(BytesIO(data)) as source:
        expected = source.convert("RGB").resize((200, 150), Image.Resampling.LANCZOS)
    result = output(data, max_width=200, format="png")
    assert result.size == (200, 150)
    assert mad(result, expected) < 3


@pytest.mark.parametrize(
    ("fmt", "extension", "content_type"),
    [("jpeg", "jpg", "image/jpeg"), ("png", "png", "image/png"), ("webp", "webp", "image/webp")],
)
def test_output_formats(fmt: str, extension: str, content_type: str) -> None:
    result = process(encode(photo((64, 48)), "PNG"), format=fmt)
    assert (result.format, result.extension, result.content_type) == (fmt, extension, content_type)
    assert reopen(result).format == fmt.upper()


@pytest.mark.parametrize(
    ("source", "kept"),
    [
        ("JPEG", "jpeg"),
        ("PNG", "png"),
        ("WEBP", "webp"),
        ("GIF", "jpeg"),
        ("TIFF", "jpeg"),
        ("BMP", "jpeg"),
        ("AVIF", "jpeg"),
    ],
)
def test_keep_re_encodes_jpeg_png_and_webp_and_makes_the_rest_jpeg(source: str, kept: str) -> None:
    result = process(encode(photo((64, 48)), source), format="keep")
    assert result.format == kept
    assert reopen(result).format == kept.upper()


def test_keep_of_a_corpus_gif_gives_jpeg(corpus_dir: Path) -> None:
    assert process((corpus_dir / "hopper.gif").read_bytes(), format="keep").format == "jpeg"


def test_an_mpo_keeps_its_first_frame_as_jpeg() -> None:
    first, second = Image.new("RGB", (32, 24), RED), Image.new("RGB", (32, 24), BLUE)
    data = encode(first, "MPO", save_all=True, append_images=[second])
    with Image.open(BytesIO(data)) as im:
        assert (im.format, getattr(im, "n_frames", 1)) == ("MPO", 2)
    result = process(data, format="keep")
    assert result.format == "jpeg"
    assert close_to(corner_colour(reopen(result), "top-left"), RED)


# --- sniffing and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world",
        b"<!doctype html><html><body>Not found</body></html>",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"BMW is a car maker, not a bitmap" * 2,
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",  # HEIC: same box, not supported
        b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00\x01\x00 \x00",  # an ICO header
    ],
)
def test_bytes_with_no_image_signature_are_not_an_image(data: bytes) -> None:
    with pytest.raises(NotAnImage, match="not an image"):
        process(data)


def test_an_ico_file_is_not_a_supported_image() -> None:
    with pytest.raises(NotAnImage):
        process(encode(Image.new("RGB", (16, 16)), "ICO"))


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff",
        b"GIF89a\x01",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        b"II*\x00\x08\x00\x00\x00",
        b"BM" + b"\x00" * 12 + b"\x28\x00\x00\x00",
        b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf",
    ],
)
def test_a_signature_with_nothing_behind_it_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError, match="could not decode"):
        process(data)


@pytest.mark.parametrize(("size", "fmt"), [((20000, 2), "webp"), ((70000, 2), "jpeg")])
def test_an_image_too_wide_for_the_output_format_cannot_be_encoded(
    size: tuple[int, int], fmt: str
) -> None:
    data = encode(Image.new("L", size, 100), "PNG")
    with pytest.raises(DecodeError, match=r"^could not encode"):
        process(data, format=fmt)


# --- limits -------------------------------------------------------------------------------------


def test_60_megapixels_are_refused_before_decoding() -> None:
    data = png_header_only(7746, 7746)  # 60,000,516 pixels; the pixel data is garbage
    started = time.perf_counter()
    with pytest.raises(TooManyPixels, match="60,000,516 pixels"):
        process(data)
    assert time.perf_counter() - started < 1
    with pytest.raises(DecodeError):  # proof that the garbage is never reached above
        process(png_header_only(16, 16))


@pytest.mark.parametrize(
    ("width", "height"),
    [(10_000, 10_000), (65_535, 65_535)],  # Pillow's bomb warning, then its bomb error
)
def test_pillows_own_bomb_checks_also_give_too_many_pixels(width: int, height: int) -> None:
    with pytest.raises(TooManyPixels):
        process(png_header_only(width, height))


def test_a_huge_jpeg_header_is_refused(corpus_dir: Path) -> None:
    data = bytearray((corpus_dir / "hopper.jpg").read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    with pytest.raises(TooManyPixels):
        process(bytes(data))


def test_the_pixel_limit_is_configurable() -> None:
    engine = PillowEngine(max_image_pixels=100)
    with pytest.raises(TooManyPixels, match="20x20"):
        engine.process(encode(Image.new("RGB", (20, 20)), "PNG"), ImageOptions())
    assert engine.process(encode(Image.new("RGB", (10, 10)), "PNG"), ImageOptions()).width == 10


def test_the_frame_limit_is_configurable() -> None:
    frames = [Image.new("L", (8, 8), shade) for shade in (0, 60, 120, 180, 240)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(TooManyPixels, match="5 frames"):
        PillowEngine(max_frames=4).process(data, ImageOptions())
    assert PillowEngine(max_frames=5).process(data, ImageOptions()).width == 8


def test_a_frame_count_bomb_is_refused_quickly() -> None:
    frame = b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00"  # 1x1, 15 bytes
    data = b"GIF89a\x01\x00\x01\x00\x00\x00\x00" + frame * 20_000 + b"\x3b"
    started = time.perf_counter()
    with pytest.raises(TooManyPixels, match="20,000 frames"):
        process(data)
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    "options", [{"max_image_pixels": 0}, {"max_frames": -1}, {"max_image_pixels": True}]
)
def test_limits_must_be_positive_whole_numbers(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        PillowEngine(**options)


def test_the_registry_can_build_it_by_keyword_only() -> None:
    engine = PillowEngine.from_url("pillow://", max_image_pixels=123, max_frames=4)
    assert (engine.max_image_pixels, engine.max_frames) == (123, 4)
    with pytest.raises(TypeError):
        PillowEngine(100)  # type: ignore[call-arg]


def test_no_pillow_or_warnings_global_is_changed(corpus_dir: Path) -> None:
    script = f"""
import warnings
from pathlib import Path
from PIL import Image, ImageFile

def state():
    return (Image.MAX_IMAGE_PIXELS, ImageFile.MAXBLOCK, ImageFile.LOAD_TRUNCATED_IMAGES,
            list(warnings.filters))

before = state()
from bulkresize.engines.pillow import PillowEngine
from bulkresize.errors import ImageError
from bulkresize.models import ImageOptions
engine = PillowEngine(max_image_pixels=10**9)
for name in ("hopper.jpg", "transparent.png", "decompression_bomb.gif", "truncated_jpeg.jpg"):
    try:
        engine.process(Path({str(corpus_dir)!r}, name).read_bytes(), ImageOptions(max_width=50))
    except ImageError:
        pass
assert state() == before, (before, state())
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


# --- files, threads and fuzzing -----------------------------------------------------------------


@needs_proc
def test_no_file_descriptor_leaks(corpus_dir: Path, engine: PillowEngine) -> None:
    inputs = [
        (corpus_dir / name).read_bytes()
        for name in ("hopper.jpg", "transparent.png", "broken.png", "truncated_jpeg.jpg")
    ] + [b"not an image", png_header_only(7746, 7746)]
    before = fd_count()
    for _ in range(20):
        for data in inputs:
            for fmt in ("jpeg", "png", "webp"):
                with contextlib.suppress(ImageError):
                    engine.process(data, ImageOptions(format=fmt))
    assert fd_count() == before


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs os.memfd_create")
def test_saves_into_a_memfd_and_closes_it(
    monkeypatch: pytest.MonkeyPatch, corpus_dir: Path
) -> None:
    created: list[int] = []
    real = os.memfd_create

    def memfd_create(name: str, flags: int = os.MFD_CLOEXEC) -> int:
        created.append(real(name, flags))
        return created[-1]

    monkeypatch.setattr(os, "memfd_create", memfd_create)
    large = Image.open(corpus_dir / "hopper.jpg").resize((640, 480))  # past _SMALL_PICTURE
    buffer = BytesIO()
    large.save(buffer, "JPEG")
    process(buffer.getvalue())
    assert len(created) == 1
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(created[0])
    process((corpus_dir / "hopper.jpg").read_bytes())  # 128 x 128: a BytesIO is cheaper
    assert len(created) == 1


def test_without_memfd_the_bytes_are_the_same(
    monkeypatch: pytest.MonkeyPatch, corpus_dir: Path
) -> None:
    data = (corpus_dir / "flower.jpg").read_bytes()
    results = [process(data, format=fmt).data for fmt in ("jpeg", "png", "webp")]
    monkeypatch.delattr(os, "memfd_create", raising=False)
    assert [process(data, format=fmt).data for fmt in ("jpeg", "png", "webp")] == results


def test_concurrent_results_equal_sequential_ones(corpus_dir: Path, engine: PillowEngine) -> None:
    names = [
        "hopper.jpg",
        "flower.jpg",
        "transparent.png",
        "pil_sample_cmyk.jpg",
        "icc_profile_big.jpg",
        "iss634.gif",
        "hopper_orientation_6.webp",
        "i_trns.png",
    ]
    jobs = [
        ((corpus_dir / name).read_bytes(), ImageOptions(format=fmt, max_width=width))
        for name in names
        for fmt, width in (("jpeg", None), ("webp", 100), ("png", 64))
    ]
    sequential = [engine.process(data, options).data for data, options in jobs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            parallel = list(pool.map(lambda job: engine.process(*job).data, jobs))
            assert parallel == sequential


def assert_image_or_image_error(data: bytes) -> None:
    """The one promise for any bytes: an image, or an ImageError with a known code."""
    before = fd_count() if Path("/proc/self/fd").is_dir() else None
    outcome: EncodedImage | ImageError
    try:
        outcome = process(data)
    except ImageError as exc:
        outcome = exc
    if isinstance(outcome, ImageError):
        assert outcome.code in CODES
        assert str(outcome)
    else:
        assert reopen(outcome).mode in ("L", "RGB")
    if before is not None:
        assert fd_count() == before


SIGNATURES = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    b"II*\x00",
    b"MM\x00*",
    b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00",
    b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf",
]
FUZZ = settings(max_examples=150, deadline=None, database=None)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.builds(bytes.__add__, st.sampled_from(SIGNATURES), st.binary(max_size=2048)),
    )
)
def test_arbitrary_bytes_give_an_image_or_an_image_error(data: bytes) -> None:
    assert_image_or_image_error(data)


def corpus_bytes() -> Iterator[bytes]:
    for name in CORPUS_FILES:
        if name not in EXPECTED_ERRORS:
            yield (CORPUS / name).read_bytes()


@FUZZ
@given(st.sampled_from(list(corpus_bytes()) or [b""]), st.floats(0, 1))
def test_truncated_corpus_files_give_an_image_or_an_image_error(
    corpus_dir: Path, data: bytes, fraction: float
) -> None:
    assert_image_or_image_error(data[: int(len(data) * fraction)])


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 6411), st.integers(0, 255)), min_size=1, max_size=12))
def test_corrupted_jpegs_give_an_image_or_an_image_error(
    corpus_dir: Path, flips: list[tuple[int, int]]
) -> None:
    data = bytearray((corpus_dir / "hopper.jpg").read_bytes())
    for offset, value in flips:
        data[offset % len(data)] = value
    assert_image_or_image_error(bytes(data))
