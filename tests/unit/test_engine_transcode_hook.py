"""The Pillow engine's ``transcode_jpeg`` hook: asked exactly when pixels need no work."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageCms

from bulkresize.engines.pillow import PillowEngine
from bulkresize.errors import DecodeError
from bulkresize.models import ImageOptions

MARKER = b"\xff\xd8\xff transcoded"


class RecordingEngine(PillowEngine):
    """Answers every hook call with MARKER, or with None when ``decline`` is set."""

    def __init__(self, *, decline: bool = False) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.decline = decline

    def transcode_jpeg(self, data: bytes, quality: int) -> bytes | None:
        self.calls.append(quality)
        return None if self.decline else MARKER


def _jpeg(mode: str = "RGB", size: tuple[int, int] = (40, 30), **params: object) -> bytes:
    im = Image.linear_gradient("L").resize(size).convert(mode)
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=90, **params)
    return buffer.getvalue()


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _profile(name: str) -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile(name)).tobytes()


def _swapped_primaries() -> bytes:
    """sRGB with its red and green primaries swapped: a valid RGB profile that moves colours."""
    profile = bytearray(_profile("sRGB"))
    tags = {}
    for n in range(int.from_bytes(profile[128:132], "big")):
        entry = profile[132 + 12 * n : 144 + 12 * n]
        tags[bytes(entry[:4])] = (
            int.from_bytes(entry[4:8], "big"),
            int.from_bytes(entry[8:12], "big"),
        )
    (red, size), (green, _) = tags[b"rXYZ"], tags[b"gXYZ"]
    profile[red : red + size], profile[green : green + size] = (
        profile[green : green + size],
        profile[red : red + size],
    )
    return bytes(profile)


@pytest.mark.parametrize(
    ("data", "options"),
    [
        (_jpeg(), ImageOptions()),
        (_jpeg("L"), ImageOptions(quality=80)),
        (_jpeg(), ImageOptions(format="keep")),
        (_jpeg(exif=_exif(1)), ImageOptions()),
        (_jpeg(), ImageOptions(max_width=40, max_height=30)),  # the box fits: no resize
        (_jpeg(icc_profile=_profile("sRGB")), ImageOptions()),
        (_jpeg(icc_profile=_profile("LAB")), ImageOptions()),  # misfits: ignored by pixels too
    ],
    ids=["rgb", "grey-q80", "keep", "orientation-1", "box-fits", "srgb-profile", "lab-profile"],
)
def test_the_hook_answers_when_pixels_need_no_work(data: bytes, options: ImageOptions) -> None:
    engine = RecordingEngine()
    result = engine.process(data, options)
    assert engine.calls == [options.quality]
    assert result.data == MARKER
    assert (result.format, result.extension, result.content_type) == ("jpeg", "jpg", "image/jpeg")
    assert (result.width, result.height) == (40, 30)


@pytest.mark.parametrize(
    ("data", "options"),
    [
        (_jpeg(exif=_exif(6)), ImageOptions()),
        (_jpeg(), ImageOptions(max_width=20)),
        (_jpeg(), ImageOptions(format="png")),
        (_jpeg(), ImageOptions(format="webp")),
        (_jpeg("CMYK"), ImageOptions()),
        (_jpeg(icc_profile=_swapped_primaries()), ImageOptions()),
    ],
    ids=["rotated", "smaller-box", "png-out", "webp-out", "cmyk", "other-profile"],
)
def test_the_hook_is_not_asked_when_pixels_change(data: bytes, options: ImageOptions) -> None:
    engine = RecordingEngine()
    assert engine.process(data, options) == PillowEngine().process(data, options)
    assert engine.calls == []


def test_png_input_never_reaches_the_hook() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, "PNG")
    engine = RecordingEngine()
    engine.process(buffer.getvalue(), ImageOptions())
    assert engine.calls == []


def test_a_declined_hook_gives_the_pixel_result_and_errors() -> None:
    data = _jpeg(size=(400, 300))
    engine = RecordingEngine(decline=True)
    assert engine.process(data, ImageOptions()) == PillowEngine().process(data, ImageOptions())
    with pytest.raises(DecodeError):
        engine.process(data[: len(data) // 2], ImageOptions())
    assert engine.calls == [50, 50]


def test_the_default_engine_transcodes_nothing() -> None:
    assert PillowEngine().transcode_jpeg(_jpeg(), 50) is None
