"""The DCT engine against the Pillow engine's pixel path, which is the reference.

"Holds up" means, for every JPEG it transcodes: the same size, the same quantisation tables,
mean colour within one level per channel, a file within 2.5% of the pixel path's size (5% at
quality 65), and, for the picture itself, two SSIM figures (greyscale, scikit-image):

- against the source, as close as the pixel path's output (within 0.005; measured 0.0003 to
  0.0026 further);
- against the pixel path's output, at least 0.98 for quality-90 sources re-encoded at 50
  (measured 0.995), and at least 0.96 for every other pair of source and target quality
  (measured 0.969 to 0.997).

The second figure depends on the source: near a rounding boundary the pixel path's own
sample rounding (about +-0.15 of a quality-50 step) decides which way a coefficient goes. At
quality 90 every step is a fifth of the quality-50 one, so no rescaled value lies near a
boundary; for other pairs the ratios are irregular, many do, and the two outputs differ there
like two equally good encodes, each about as close to the source as the other. The test
photos carry heavy grain, the worst case for that agreement.
"""

from __future__ import annotations

import io
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageStat
from skimage.metrics import structural_similarity

from bulkresize.engines.base import ImageEngine
from bulkresize.engines.pillow import PillowEngine
from bulkresize.errors import ImageError
from bulkresize.models import EncodedImage, ImageOptions
from bulkresize.registry import create_backend
from bulkresize.testing import EngineContract
from bulkresize_dct import DctEngine
from bulkresize_dct._transcode import requantize

#: SSIM against the pixel path's output: sources at quality 90, and at any other quality.
AGREEMENT = {90: 0.98, "other": 0.96}
#: How much closer to the source the pixel path's output may be than the DCT path's.
FIDELITY_MARGIN = 0.005
COLOUR_TOLERANCE = 1.0
#: Output size against the pixel path's, by target quality (from quality-90 sources): the
#: further the target is from the source, the closer the two paths' files.
SIZE_TOLERANCE = {50: 0.025, 30: 0.025, 65: 0.05}


class TestDctEngineContract(EngineContract):
    @pytest.fixture
    def engine(self) -> ImageEngine:
        return DctEngine()

    @pytest.fixture
    def corpus_dir(self, dct_corpus_dir: Path) -> Path:
        return dct_corpus_dir


def _photo(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    """Smooth shading, texture, edges and grain: JPEG behaves on it as on a photo."""
    rng = random.Random(seed)
    small = (max(size[0] // 8, 8), max(size[1] // 8, 8))
    channels = []
    for _ in range(3):
        gradient = Image.linear_gradient("L").rotate(rng.uniform(0, 360)).resize(small)
        texture = _noise(small, rng).filter(ImageFilter.GaussianBlur(2))
        channels.append(Image.blend(gradient, texture, 0.45).resize(size, Image.Resampling.BICUBIC))
    im = Image.merge("RGB", channels)
    draw = ImageDraw.Draw(im)
    for _ in range(20):
        x, y, r = rng.randrange(size[0]), rng.randrange(size[1]), rng.randrange(4, size[0] // 4)
        fill = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=2)
    im = Image.blend(im, _noise(size, rng).convert("RGB"), 0.15)
    return im.convert(mode)


def _noise(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """Grey noise from the seeded generator (Image.effect_noise would differ on every run)."""
    return Image.frombytes("L", size, rng.randbytes(size[0] * size[1]))


def _jpeg(im: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", **{"quality": 90, **params})
    return buffer.getvalue()


def _assert_holds_up(
    reference: EncodedImage,
    candidate: EncodedImage,
    source: bytes,
    *,
    agreement: float = AGREEMENT[90],
    size_tolerance: float = 0.025,
) -> None:
    """The candidate is the reference's picture, at its size, tables and colour."""
    assert (candidate.width, candidate.height) == (reference.width, reference.height)
    assert (candidate.format, candidate.content_type) == ("jpeg", "image/jpeg")
    with (
        Image.open(io.BytesIO(reference.data)) as ref,
        Image.open(io.BytesIO(candidate.data)) as out,
    ):
        assert out.mode == ref.mode
        assert out.quantization == ref.quantization
        assert not {"exif", "icc_profile", "comment", "dpi"} & set(out.info)
        grey = [np.asarray(im.convert("L")) for im in (ref, out)]
        assert structural_similarity(*grey, data_range=255) >= agreement
        with Image.open(io.BytesIO(source)) as original:
            truth = np.asarray(original.convert("L"))
        pixel_path, dct_path = (structural_similarity(truth, g, data_range=255) for g in grey)
        assert dct_path >= pixel_path - FIDELITY_MARGIN
        means = [ImageStat.Stat(im.convert("RGB")).mean for im in (ref, out)]
        assert max(abs(a - b) for a, b in zip(*means, strict=True)) <= COLOUR_TOLERANCE
    assert abs(len(candidate.data) / len(reference.data) - 1) <= size_tolerance


PHOTOS = {
    "rgb-420": lambda: _jpeg(_photo((640, 480), 1)),
    "odd-size": lambda: _jpeg(_photo((333, 211), 2)),  # partial MCUs at both edges
    "grey": lambda: _jpeg(_photo((400, 300), 3, "L")),
    "progressive": lambda: _jpeg(_photo((500, 375), 4), progressive=True),
    "optimised-huffman": lambda: _jpeg(_photo((320, 240), 5), optimize=True),
    "quality-93": lambda: _jpeg(_photo((480, 320), 6), quality=93),
    "quality-95": lambda: _jpeg(_photo((480, 320), 7), quality=95),
    "quality-97": lambda: _jpeg(_photo((480, 320), 8), quality=97),
}


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("quality", [50, 30, 65])
def test_a_transcoded_photo_holds_up_against_the_pixel_path(name: str, quality: int) -> None:
    data = PHOTOS[name]()
    transcoded, reason = requantize(data, quality)
    assert transcoded is not None, reason  # the DCT path was taken, not the fallback
    options = ImageOptions(quality=quality)
    result = DctEngine().process(data, options)
    assert result.data == transcoded
    agreement = AGREEMENT[90] if quality == 50 and "quality" not in name else AGREEMENT["other"]
    reference = PillowEngine().process(data, options)
    _assert_holds_up(
        reference, result, data, agreement=agreement, size_tolerance=SIZE_TOLERANCE[quality]
    )


def test_the_checks_catch_a_wrong_table_or_a_wrong_picture() -> None:
    data, other = PHOTOS["rgb-420"](), _jpeg(_photo((640, 480), 99))
    reference = PillowEngine().process(data, ImageOptions())
    _assert_holds_up(reference, replace(reference, data=requantize(data, 50)[0]), data)
    wrong_table = replace(reference, data=requantize(data, 40)[0])
    wrong_picture = replace(reference, data=requantize(other, 50)[0])
    for candidate in (wrong_table, wrong_picture):
        with pytest.raises(AssertionError):
            _assert_holds_up(reference, candidate, data)
    # A picture further from the source than the pixel path's fails on fidelity alone.
    blurred = Image.open(io.BytesIO(reference.data)).filter(ImageFilter.GaussianBlur(1.2))
    buffer = io.BytesIO()
    blurred.save(buffer, "JPEG", quality=50)
    with pytest.raises(AssertionError):
        _assert_holds_up(reference, replace(reference, data=buffer.getvalue()), data, agreement=0)


@pytest.mark.parametrize(
    ("data", "options", "reason"),
    [
        (_jpeg(_photo((320, 240), 7), subsampling=0), ImageOptions(), "4:2:0"),  # 4:4:4
        (_jpeg(_photo((320, 240), 8), subsampling=1), ImageOptions(), "4:2:0"),  # 4:2:2
        (_jpeg(_photo((320, 240), 9), quality=75), ImageOptions(), "halves"),  # 8 -> 16 steps
        (_jpeg(_photo((320, 240), 10, "CMYK")), ImageOptions(), "4:2:0"),
    ],
    ids=["444", "422", "quality-75-source", "cmyk"],
)
def test_unsuitable_files_take_the_pixel_path(
    data: bytes, options: ImageOptions, reason: str
) -> None:
    transcoded, why = requantize(data, options.quality)
    assert transcoded is None
    assert reason in why
    assert DctEngine().process(data, options) == PillowEngine().process(data, options)


def test_damaged_files_fail_as_the_pixel_path_fails() -> None:
    data = PHOTOS["rgb-420"]()
    for cut in (len(data) // 3, len(data) - 40):
        truncated = data[:cut]
        assert requantize(truncated, 50) == (None, "the data is damaged")
        codes = []
        for engine in (DctEngine(), PillowEngine()):
            with pytest.raises(ImageError) as caught:
                engine.process(truncated, ImageOptions())
            codes.append(caught.value.code)
        assert codes == ["decode_error", "decode_error"]


def test_garbage_after_the_header_is_not_a_crash() -> None:
    data = bytearray(PHOTOS["rgb-420"]())
    rng = random.Random(0)
    for _ in range(50):
        spoiled = bytearray(data)
        for _ in range(8):
            spoiled[rng.randrange(600, len(spoiled))] = rng.randrange(256)
        transcoded, reason = requantize(bytes(spoiled), 50)
        assert transcoded is None or transcoded.startswith(b"\xff\xd8"), reason


def test_threads_get_the_same_bytes() -> None:
    data = PHOTOS["rgb-420"]()
    expected = requantize(data, 50)[0]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: requantize(data, 50)[0], range(16)))
    assert results == [expected] * 16


def test_quality_outside_libjpeg_range_is_refused() -> None:
    with pytest.raises(ValueError, match="quality"):
        requantize(PHOTOS["grey"](), 0)


def test_the_engine_is_registered_as_dct() -> None:
    assert isinstance(create_backend("engine", "dct", ImageEngine), DctEngine)


def test_a_progressive_file_cut_after_its_first_scans_takes_the_pixel_path() -> None:
    """It ends cleanly (EOI) but unrefined: the pixel path smooths, a transcode would block."""
    data = PHOTOS["progressive"]()
    scans = [n for n in range(len(data) - 1) if data[n : n + 2] == b"\xff\xda"]
    assert len(scans) > 3
    cut = data[: scans[2]] + b"\xff\xd9"
    transcoded, reason = requantize(cut, 50)
    assert transcoded is None
    assert "progressive" in reason
    assert DctEngine().process(cut, ImageOptions()) == PillowEngine().process(cut, ImageOptions())


def test_sixteen_bit_source_tables_are_requantised_too() -> None:
    """Steps of 1000 and 2000 need 16-bit tables; every value is rescaled and clamped alike."""
    buffer = io.BytesIO()
    _photo((64, 48), 1).save(buffer, "JPEG", qtables=[[1000] * 64, [2000] * 64])
    data = buffer.getvalue()
    transcoded, reason = requantize(data, 50)
    assert transcoded is not None, reason
    result = DctEngine().process(data, ImageOptions())
    reference = PillowEngine().process(data, ImageOptions())
    with (
        Image.open(io.BytesIO(result.data)) as out,
        Image.open(io.BytesIO(reference.data)) as ref,
    ):
        assert out.size == ref.size
        means = [ImageStat.Stat(im.convert("RGB")).mean for im in (ref, out)]
        # A coefficient that wrapped or was clamped to the wrong side would swing a block.
        assert max(abs(a - b) for a, b in zip(*means, strict=True)) <= 3
