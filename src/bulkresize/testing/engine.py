"""The image engine conformance suite."""

from __future__ import annotations

import os
import random
import struct
import warnings
import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bulkresize.engines.base import ImageEngine
from bulkresize.errors import ImageError, NotAnImage, TooManyPixels
from bulkresize.models import EncodedImage, ImageOptions

__all__ = ["EngineContract"]

#: The corpus files (of the shared real-world corpus) that must fail, and their error codes.
KNOWN_FAILURES = {
    "broken.png": "decode_error",
    "decompression_bomb.gif": "too_many_pixels",
    "png_decompression_dos.png": "decode_error",
    "truncated_image.png": "decode_error",
    "truncated_jpeg.jpg": "decode_error",
    "ultrahdr.jpg": "decode_error",
}


def require_corpus(folder: str | os.PathLike[str]) -> Path:
    """The folder of real images for ``corpus_dir``, if it is there.

    For a ``corpus_dir`` fixture whose folder lives outside the package (a shared checkout, a
    download): when it is missing, the test is skipped on a developer's machine and fails when
    ``CI=true``, so that CI can never skip the corpus silently.

    Args:
        folder: Where the corpus should be.

    Returns:
        ``folder`` as a ``Path``.
    """
    path = Path(folder)
    if not path.is_dir():
        message = f"the image corpus is missing at {path}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def _photo(size: tuple[int, int]) -> Image.Image:
    """A photo-like RGB image: gradients plus noise."""
    noise = Image.effect_noise(size, 40)
    gradient = Image.linear_gradient("L").resize(size)
    radial = Image.radial_gradient("L").resize(size)
    return Image.merge("RGB", (gradient, radial, noise))


def _reopen(result: EncodedImage) -> Image.Image:
    """The output decoded with Pillow, after checking it against its own description."""
    with Image.open(BytesIO(result.data)) as check:
        check.verify()
    im = Image.open(BytesIO(result.data))
    im.load()
    assert im.format == result.format.upper()
    assert im.size == (result.width, result.height)
    return im


def _assert_clean_default_output(result: EncodedImage) -> None:
    """A JPEG (the default options) in L or RGB with no EXIF and no ICC profile."""
    assert (result.format, result.extension, result.content_type) == ("jpeg", "jpg", "image/jpeg")
    im = _reopen(result)
    assert im.mode in ("L", "RGB")
    assert not im.getexif()
    assert "exif" not in im.info
    assert "icc_profile" not in im.info


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares its size but whose pixel data is garbage."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"not zlib data at all")
        + chunk(b"IEND", b"")
    )


class EngineContract:
    """Mix into a test class and provide the ``engine`` and ``corpus_dir`` fixtures.

    ``engine`` is the engine under test, built with its default options. ``corpus_dir`` is a
    folder of real-world images (for instance Pillow's own test images, ``Tests/images`` in its
    source tree); every file in it except ``*.csv`` and ``*.md`` is fed to the engine. Files
    named in ``expected_failures`` (by default the known-bad files of bulkresize's corpus) must
    fail with exactly that error code; entries for files not in the folder are ignored.

    ``engine_with_pixel_limit`` builds the engine with a given ``max_image_pixels``; override it
    if your engine is not built through ``from_url(url, max_image_pixels=...)``.
    """

    @pytest.fixture
    def engine(self) -> ImageEngine:
        """The engine under test. Override this fixture."""
        raise NotImplementedError("provide an `engine` fixture")

    @pytest.fixture
    def corpus_dir(self) -> Path:
        """A folder of real images, such as Pillow's test images. Override this fixture."""
        raise NotImplementedError("provide a `corpus_dir` fixture: a folder of real images")

    @pytest.fixture
    def expected_failures(self) -> dict[str, str]:
        """Corpus file name → the error code it must fail with."""
        return dict(KNOWN_FAILURES)

    @pytest.fixture
    def engine_with_pixel_limit(self, engine: ImageEngine) -> Callable[[int], ImageEngine]:
        """A factory: the engine under test, limited to ``limit`` pixels."""

        def build(limit: int) -> ImageEngine:
            return type(engine).from_url("", max_image_pixels=limit)

        return build

    # --- the corpus ---------------------------------------------------------------------------

    # Pillow warns (UserWarning) about files it decodes anyway, e.g. a malformed MPO header.
    @pytest.mark.filterwarnings("ignore::UserWarning:PIL")
    def test_every_corpus_file_gives_a_clean_image_or_an_image_error(
        self, engine: ImageEngine, corpus_dir: Path, expected_failures: dict[str, str]
    ) -> None:
        files = sorted(
            path
            for path in Path(corpus_dir).glob("*")
            if path.is_file() and path.suffix.lower() not in (".csv", ".md")
        )
        assert files, f"no images in {corpus_dir}"
        problems: list[str] = []
        for path in files:
            expected = expected_failures.get(path.name)
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\b")
                    result = engine.process(path.read_bytes(), ImageOptions())
            except ImageError as exc:
                if expected is not None and exc.code != expected:
                    problems.append(f"{path.name}: code {exc.code!r}, expected {expected!r}")
                continue
            except Exception as exc:  # the promise: an image, or an ImageError
                problems.append(f"{path.name}: raised {type(exc).__name__}: {exc}")
                continue
            if expected is not None:
                problems.append(f"{path.name}: gave an image, expected {expected!r}")
                continue
            try:
                _assert_clean_default_output(result)
            except (AssertionError, OSError) as exc:
                problems.append(f"{path.name}: bad output: {type(exc).__name__}: {exc}")
        assert not problems, "\n".join(problems)

    # --- synthetic images -----------------------------------------------------------------------

    def test_exif_orientation_6_turns_the_image_upright(self, engine: ImageEngine) -> None:
        exif = Image.Exif()
        exif[0x0112] = 6
        data = _encode(_photo((300, 200)), "JPEG", exif=exif, quality=90)
        result = engine.process(data, ImageOptions())
        assert (result.width, result.height) == (200, 300)
        assert _reopen(result).size == (200, 300)

    @pytest.mark.parametrize(("fmt", "at_least"), [("png", 254), ("jpeg", 235)])
    def test_transparent_areas_become_white(
        self, engine: ImageEngine, fmt: str, at_least: int
    ) -> None:
        im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent black: white if flattened
        im.paste((200, 30, 60, 255), (32, 0, 64, 64))  # opaque red on the right
        result = engine.process(_encode(im, "PNG"), ImageOptions(format=fmt))
        out = _reopen(result).convert("RGB")
        for xy in ((4, 4), (20, 30), (4, 59)):
            pixel = out.getpixel(xy)
            assert isinstance(pixel, tuple)
            assert min(pixel) >= at_least, (xy, pixel)
        right = out.getpixel((56, 32))
        assert isinstance(right, tuple)
        assert right[0] > 150, right
        assert right[1] < 100, right

    def test_quality_50_jpeg_uses_pillows_quality_50_tables(self, engine: ImageEngine) -> None:
        data = _encode(_photo((64, 48)), "PNG")
        result = engine.process(data, ImageOptions(quality=50, format="jpeg"))
        out = _reopen(result)
        reference = Image.open(BytesIO(_encode(out.copy(), "JPEG", quality=50)))
        assert getattr(out, "quantization", None) == getattr(reference, "quantization", None)
        assert getattr(out, "quantization", None)

    @pytest.mark.parametrize(
        ("options", "expected"),
        [
            ({"max_width": 200}, (200, 150)),
            ({"max_height": 100}, (133, 100)),
            ({"max_width": 200, "max_height": 50}, (67, 50)),
            ({"max_width": 4000}, (400, 300)),  # never upscale
            ({"max_width": 4000, "max_height": 3000}, (400, 300)),
        ],
    )
    def test_max_width_and_height_fit_inside_the_box_without_upscaling(
        self, engine: ImageEngine, options: dict[str, int], expected: tuple[int, int]
    ) -> None:
        data = _encode(_photo((400, 300)), "JPEG", quality=90)
        result = engine.process(data, ImageOptions(**options))  # type: ignore[arg-type]
        width, height = result.width, result.height
        assert width <= options.get("max_width", 400)
        assert height <= options.get("max_height", 300)
        assert width <= 400
        assert height <= 300
        assert abs(width - expected[0]) <= 1
        assert abs(height - expected[1]) <= 1
        assert _reopen(result).size == (width, height)

    @pytest.mark.parametrize(
        ("fmt", "extension", "content_type"),
        [
            ("jpeg", "jpg", "image/jpeg"),
            ("png", "png", "image/png"),
            ("webp", "webp", "image/webp"),
        ],
    )
    def test_output_formats(
        self, engine: ImageEngine, fmt: str, extension: str, content_type: str
    ) -> None:
        result = engine.process(_encode(_photo((64, 48)), "PNG"), ImageOptions(format=fmt))
        assert (result.format, result.extension, result.content_type) == (
            fmt,
            extension,
            content_type,
        )
        assert _reopen(result).format == fmt.upper()

    # --- errors -------------------------------------------------------------------------------

    @pytest.mark.parametrize("seed", range(5))
    def test_random_bytes_raise_an_image_error(self, engine: ImageEngine, seed: int) -> None:
        data = random.Random(seed).randbytes(4096)
        with pytest.raises(ImageError):
            engine.process(data, ImageOptions())

    @pytest.mark.parametrize("data", [b"", b"hello world", b"<!doctype html><html></html>"])
    def test_text_is_not_an_image(self, engine: ImageEngine, data: bytes) -> None:
        with pytest.raises(NotAnImage):
            engine.process(data, ImageOptions())

    def test_60_megapixels_are_refused_by_the_pixel_limit(
        self, engine_with_pixel_limit: Callable[[int], ImageEngine]
    ) -> None:
        limited = engine_with_pixel_limit(50_000_000)
        try:
            with pytest.raises(TooManyPixels):
                limited.process(_png_header_only(7746, 7746), ImageOptions())  # 60,000,516 px
        finally:
            limited.close()
