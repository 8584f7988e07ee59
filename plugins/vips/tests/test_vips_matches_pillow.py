"""The libvips engine against the Pillow engine, which is the behavioural reference.

How close is "close": both outputs are area-averaged down to fit 32 x 32 pixels, and compared
as grey levels (mean absolute difference, 0-255) and as colour (the largest difference between
the two images' R, G and B means). Area-averaging first removes what legitimately differs
between two good resamplers (Lanczos kernels, reducing gaps, libwebp's shrink-on-load) and
keeps what a bug changes: orientation, flattening, colour conversion, cropping.

Measured on the shared corpus (libvips 8.18, Pillow 13): at the input size the engines differ
by at most 1.2 grey levels and 0.4 in colour (WebP encoder versions and alpha rounding; JPEG
output is bit-identical in the scan), and after scaling into a box by at most 2.7 grey levels
and 1.0 in colour. A wrong turn costs 7 to 100 grey levels, alpha flattened onto black 40+ in
colour, and libvips's own CMYK conversion ~30 in colour, as the teeth test shows.
"""

from __future__ import annotations

import io
import os
import random
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from bulkresize.engines.base import ImageEngine
from bulkresize.engines.pillow import PillowEngine
from bulkresize.errors import DecodeError, ImageError, NotAnImage
from bulkresize.models import EncodedImage, ImageOptions
from bulkresize.registry import create_backend
from bulkresize_vips import VipsEngine

#: Grey-level and colour tolerances at the input size, and after scaling into a box.
SAME_SIZE = (2.0, 1.0)
RESIZED = (5.0, 2.5)

#: Options the corpus is compared under: the default, every format, and three boxes.
CORPUS_OPTIONS = [
    ImageOptions(),
    ImageOptions(format="png"),
    ImageOptions(format="webp", quality=80),
    ImageOptions(format="keep"),
    ImageOptions(max_width=64, max_height=64),
    ImageOptions(max_width=200),
    ImageOptions(max_height=150, format="png"),
]

#: A full 24-megapixel RGB frame, decoded: what shrink-on-load must never hold.
BIG_SIZE = (6000, 4000)
FULL_FRAME = BIG_SIZE[0] * BIG_SIZE[1] * 3

Outcome = EncodedImage | str  # an image, or the code of the error it failed with


@pytest.fixture(scope="module")
def vips_engine() -> VipsEngine:
    return VipsEngine()


@pytest.fixture(scope="module")
def pillow_engine() -> PillowEngine:
    return PillowEngine()


@pytest.fixture(scope="module")
def vips_corpus(vips_corpus_dir: Path) -> dict[str, bytes]:
    """Every image of the shared corpus, by file name."""
    return {
        path.name: path.read_bytes()
        for path in sorted(vips_corpus_dir.iterdir())
        if path.is_file() and path.suffix.lower() not in (".csv", ".md")
    }


@pytest.fixture(scope="module")
def vips_big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A photo-like 24-megapixel JPEG (gradients and noise, quality 85)."""
    path = tmp_path_factory.mktemp("big") / "24mp.jpg"
    _photo(BIG_SIZE).save(path, "JPEG", quality=85)
    return path


def _photo(size: tuple[int, int]) -> Image.Image:
    noise = Image.effect_noise(size, 40)
    gradient = Image.linear_gradient("L").resize(size)
    radial = Image.radial_gradient("L").resize(size)
    return Image.merge("RGB", (gradient, radial, noise))


def _encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def _outcome(engine: ImageEngine, data: bytes, options: ImageOptions) -> Outcome:
    try:
        return engine.process(data, options)
    except ImageError as exc:
        return exc.code


def _open(result: EncodedImage) -> Image.Image:
    im = Image.open(io.BytesIO(result.data))
    im.load()
    return im


def _small(im: Image.Image) -> Image.Image:
    """The image area-averaged to fit 32 x 32, in RGB."""
    rgb = im.convert("RGB")
    scale = min(1.0, 32 / max(rgb.size))
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    return rgb.resize(size, Image.Resampling.BOX)


def _distance(a: Image.Image, b: Image.Image) -> tuple[float, float]:
    """(mean grey-level difference, largest channel-mean difference) of two pictures."""
    small_a, small_b = _small(a), _small(b)
    if small_b.size != small_a.size:  # a 1-pixel difference in the output size
        small_b = small_b.resize(small_a.size, Image.Resampling.BOX)
    grey = ImageStat.Stat(ImageChops.difference(small_a.convert("L"), small_b.convert("L")))
    means = zip(ImageStat.Stat(small_a).mean, ImageStat.Stat(small_b).mean, strict=True)
    return grey.mean[0], max(abs(x - y) for x, y in means)


def _scan(jpeg: bytes) -> bytes:
    """A JPEG from its first start-of-scan marker on: the coded pixels, with no headers."""
    return jpeg[jpeg.index(b"\xff\xda") :]


# --- the corpus -----------------------------------------------------------------------------


# Pillow warns (UserWarning) about files it decodes anyway, e.g. a malformed MPO header.
@pytest.mark.filterwarnings("ignore::UserWarning:PIL")
def test_both_engines_agree_on_every_corpus_file(
    vips_engine: VipsEngine, pillow_engine: PillowEngine, vips_corpus: dict[str, bytes]
) -> None:
    problems: list[str] = []
    for name, data in vips_corpus.items():
        for options in CORPUS_OPTIONS:
            label = f"{name} {options.to_dict()}"
            expected = _outcome(pillow_engine, data, options)
            got = _outcome(vips_engine, data, options)
            if isinstance(expected, str) or isinstance(got, str):
                if expected != got:
                    problems.append(f"{label}: pillow {_show(expected)}, vips {_show(got)}")
                continue
            if (got.format, got.extension, got.content_type) != (
                expected.format,
                expected.extension,
                expected.content_type,
            ):
                problems.append(f"{label}: vips wrote {got.format}, pillow {expected.format}")
            if abs(got.width - expected.width) > 1 or abs(got.height - expected.height) > 1:
                problems.append(
                    f"{label}: vips {got.width}x{got.height}, "
                    f"pillow {expected.width}x{expected.height}"
                )
                continue
            grey, colour = _distance(_open(expected), _open(got))
            boxed = options.max_width is not None or options.max_height is not None
            grey_limit, colour_limit = RESIZED if boxed else SAME_SIZE
            if grey > grey_limit or colour > colour_limit:
                problems.append(
                    f"{label}: {grey:.2f} grey levels (limit {grey_limit}), "
                    f"{colour:.2f} in colour (limit {colour_limit}) apart"
                )
    assert not problems, "\n".join(problems)


def _show(outcome: Outcome) -> str:
    if isinstance(outcome, str):
        return repr(outcome)
    return f"an image {outcome.width}x{outcome.height}"


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")
def test_the_closeness_measure_has_teeth(
    pillow_engine: PillowEngine, vips_corpus: dict[str, bytes]
) -> None:
    """The mistakes an engine could make land far outside the tolerances."""
    grey_limit, colour_limit = RESIZED
    upright = pillow_engine.process(vips_corpus["hopper_orientation_6.jpg"], ImageOptions())
    reference = _open(upright)
    for wrong in (reference.rotate(180), reference.transpose(Image.Transpose.FLIP_LEFT_RIGHT)):
        assert _distance(reference, wrong)[0] > 2 * grey_limit

    # Transparency flattened onto black instead of white.
    with Image.open(io.BytesIO(vips_corpus["transparent.png"])) as im:
        on_black = Image.new("RGBA", im.size, (0, 0, 0, 255))
        on_black.alpha_composite(im.convert("RGBA"))
    flattened = _open(pillow_engine.process(vips_corpus["transparent.png"], ImageOptions()))
    assert _distance(flattened, on_black.convert("RGB"))[1] > 10 * colour_limit

    # A CMYK JPEG without a profile, through libvips's own CMYK profile instead of Pillow's
    # formula: what the engine would do if it let thumbnail_buffer convert it.
    import pyvips  # type: ignore[import-untyped, unused-ignore]

    data = vips_corpus["pil_sample_cmyk.jpg"]
    own = pyvips.Image.thumbnail_buffer(data, 100, height=100, size="force")
    own_profile = Image.open(io.BytesIO(own.pngsave_buffer()))
    cmyk = _open(pillow_engine.process(data, ImageOptions()))
    assert _distance(cmyk, own_profile)[1] > 5 * colour_limit


# --- JPEG encoding --------------------------------------------------------------------------


@pytest.mark.parametrize("quality", [1, 50, 75, 92, 95])
def test_jpeg_output_is_coded_exactly_as_pillow_codes_it(
    vips_engine: VipsEngine, pillow_engine: PillowEngine, quality: int
) -> None:
    """Same pixels in, the same entropy-coded scan out: tables, subsampling and Huffman codes.

    From quality 90 up libvips would drop chroma subsampling and Pillow does not.
    """
    data = _encode(_photo((320, 240)), "PNG")
    options = ImageOptions(quality=quality)
    expected = pillow_engine.process(data, options)
    got = vips_engine.process(data, options)
    assert _scan(got.data) == _scan(expected.data)
    assert _open(got).quantization == _open(expected).quantization  # type: ignore[attr-defined]


def test_greyscale_stays_greyscale_and_metadata_is_stripped(vips_engine: VipsEngine) -> None:
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    grey = _photo((120, 80)).convert("L")
    data = _encode(grey, "JPEG", exif=exif, comment=b"hello", quality=90)
    for fmt in ("jpeg", "png"):
        out = _open(vips_engine.process(data, ImageOptions(format=fmt)))
        assert out.mode == "L"
        assert not out.getexif()
        assert not {"exif", "icc_profile", "comment", "xmp"} & set(out.info)


# --- large images ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_24_megapixel_jpeg_with_max_width_800_is_shrunk_on_load(
    vips_engine: VipsEngine, pillow_engine: PillowEngine, vips_big_jpeg: Path
) -> None:
    data = vips_big_jpeg.read_bytes()
    options = ImageOptions(max_width=800)
    got = vips_engine.process(data, options)
    expected = pillow_engine.process(data, options)
    assert (got.width, got.height) == (expected.width, expected.height) == (800, 533)
    grey, colour = _distance(_open(expected), _open(got))
    assert grey <= RESIZED[0]
    assert colour <= RESIZED[1]


_PEAK = textwrap.dedent(
    """
    import io, sys
    from pathlib import Path
    from PIL import Image
    from bulkresize.models import ImageOptions

    def peak():
        # VmHWM starts afresh at exec; ru_maxrss would carry over pytest's own peak.
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    name, path, width = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if name == "vips":
        from bulkresize_vips import VipsEngine as Engine
    else:
        from bulkresize.engines.pillow import PillowEngine as Engine
    engine = Engine()
    data = path.read_bytes()
    tiny = io.BytesIO()
    Image.new("RGB", (64, 64)).save(tiny, "JPEG")
    engine.process(tiny.getvalue(), ImageOptions())  # load every library and thread first
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the high-water mark to what is resident now
    except OSError:
        pass  # then the warm-up's peak is the baseline, which only lowers the growth
    before = peak()
    result = engine.process(data, ImageOptions(max_width=int(width) if width else None))
    print(peak() - before, result.width, result.height)
    """
)


def _peak_growth(engine: str, image: Path, max_width: int | None) -> tuple[int, int, int]:
    """How much a fresh process's peak memory grows while one engine processes one image."""
    env = {key: value for key, value in os.environ.items() if key != "VIPS_CONCURRENCY"}
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, engine, str(image), str(max_width or "")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    )
    growth, width, height = (int(word) for word in done.stdout.split())
    return growth, width, height


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="peak memory is read from /proc")
def test_a_24_megapixel_jpeg_never_exists_whole_in_memory(vips_big_jpeg: Path) -> None:
    """With a box the JPEG is decoded at 1/4 scale and streamed: far below one full frame.

    The Pillow engine without a box is the control: it decodes the full frame, so the
    measurement does see a full decode when there is one.
    """
    growth, width, height = _peak_growth("vips", vips_big_jpeg, 800)
    assert (width, height) == (800, 533)
    assert growth < FULL_FRAME / 2, f"peak grew by {growth / 2**20:.0f} MiB"

    growth, width, height = _peak_growth("pillow", vips_big_jpeg, None)
    assert (width, height) == BIG_SIZE
    assert growth > FULL_FRAME * 0.9, f"the control grew by {growth / 2**20:.0f} MiB only"


# --- threads, configuration and registration ----------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")
def test_many_threads_at_once_give_the_same_bytes_as_one(
    vips_engine: VipsEngine, vips_corpus: dict[str, bytes]
) -> None:
    options = ImageOptions(max_width=100)
    jobs = list(vips_corpus.values()) * 3

    def run(data: bytes) -> bytes | str:
        outcome = _outcome(vips_engine, data, options)
        return outcome if isinstance(outcome, str) else outcome.data

    alone = [run(data) for data in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(run, jobs))
    assert together == alone


def test_libvips_is_configured_by_the_engine_not_by_the_import() -> None:
    script = textwrap.dedent(
        """
        import os, pyvips
        defaults = (pyvips.cache_get_max(), pyvips.cache_get_max_mem(), pyvips.concurrency_get())
        import bulkresize_vips
        assert (pyvips.cache_get_max(), pyvips.cache_get_max_mem(),
                pyvips.concurrency_get()) == defaults, "import changed libvips"
        bulkresize_vips.VipsEngine()
        print(pyvips.cache_get_max(), pyvips.cache_get_max_mem(), pyvips.cache_get_max_files(),
              pyvips.concurrency_get())
        bulkresize_vips.VipsEngine(concurrency=3)
        print(pyvips.concurrency_get())
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "VIPS_CONCURRENCY"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "0", "0", "1", "3"]


def test_vips_concurrency_in_the_environment_is_kept() -> None:
    script = (
        "import pyvips, bulkresize_vips; bulkresize_vips.VipsEngine(); "
        "print(pyvips.concurrency_get())"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "VIPS_CONCURRENCY": "2"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2"]


def test_the_registry_builds_it_by_name_with_the_pixel_limit() -> None:
    engine = create_backend("engine", "vips", ImageEngine, max_image_pixels=1234)
    assert isinstance(engine, VipsEngine)
    assert engine.max_image_pixels == 1234


@pytest.mark.parametrize(
    "options",
    [{"max_image_pixels": 0}, {"max_frames": -1}, {"concurrency": 0}, {"max_image_pixels": True}],
)
def test_bad_limits_are_configuration_errors(options: dict[str, object]) -> None:
    from bulkresize.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        VipsEngine(**options)  # type: ignore[arg-type]


# --- inputs that libvips alone would treat differently --------------------------------------


def _png(chunks: list[tuple[bytes, bytes]], *, size: tuple[int, int] = (4, 4)) -> bytes:
    """A small grey PNG with extra chunks before its image data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", size[0], size[1], 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes(range(size[0])) for _ in range(size[1]))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + b"".join(chunk(kind, body) for kind, body in chunks)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _both(vips_engine: VipsEngine, pillow_engine: PillowEngine, data: bytes) -> Iterator[Outcome]:
    for engine in (pillow_engine, vips_engine):
        yield _outcome(engine, data, ImageOptions())


def test_a_png_text_chunk_that_inflates_into_a_bomb_is_refused(
    vips_engine: VipsEngine, pillow_engine: PillowEngine
) -> None:
    bomb = b"Comment\x00\x00" + zlib.compress(b"\x00" * (4 * 2**20), 9)
    data = _png([(b"zTXt", bomb)])
    assert list(_both(vips_engine, pillow_engine, data)) == ["decode_error", "decode_error"]


def test_an_apng_that_declares_too_many_frames_is_refused(
    vips_engine: VipsEngine, pillow_engine: PillowEngine
) -> None:
    data = _png([(b"acTL", struct.pack(">II", 20_000, 0))])
    assert list(_both(vips_engine, pillow_engine, data)) == ["too_many_pixels"] * 2


def test_a_png_header_chunk_with_a_bad_checksum_is_refused(
    vips_engine: VipsEngine, pillow_engine: PillowEngine
) -> None:
    data = bytearray(_png([(b"tEXt", b"Comment\x00hello")]))
    data[data.index(b"hello") + 5] ^= 0xFF  # the chunk's CRC
    assert list(_both(vips_engine, pillow_engine, bytes(data))) == ["decode_error"] * 2


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_xmp_orientation_turns_the_image_upright(
    vips_engine: VipsEngine, pillow_engine: PillowEngine, fmt: str
) -> None:
    """No EXIF, but XMP says orientation 6: Pillow applies it, and so must libvips."""
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    photo = _photo((300, 200))
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp)
        data = _encode(photo, fmt, pnginfo=info)
    else:
        data = _encode(photo, fmt, xmp=xmp.encode())
    expected = pillow_engine.process(data, ImageOptions())
    got = vips_engine.process(data, ImageOptions())
    assert (got.width, got.height) == (expected.width, expected.height) == (200, 300)
    assert _distance(_open(expected), _open(got))[0] <= SAME_SIZE[0]


def test_the_pixel_limit_is_checked_before_decoding(
    vips_engine: VipsEngine, pillow_engine: PillowEngine
) -> None:
    """A JPEG whose header declares 64 megapixels, cut off just after the header."""
    data = bytearray(_encode(_photo((64, 48)), "JPEG"))
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", 8000, 8000)
    header_only = bytes(data[: data.index(b"\xff\xda") + 30])
    assert list(_both(vips_engine, pillow_engine, header_only)) == ["too_many_pixels"] * 2


def test_bmp_which_libvips_cannot_read_is_handled_as_pillow_handles_it(
    vips_engine: VipsEngine, pillow_engine: PillowEngine
) -> None:
    data = _encode(_photo((90, 60)), "BMP")
    assert vips_engine.process(data, ImageOptions()) == pillow_engine.process(data, ImageOptions())


def test_too_wide_for_webp_is_a_decode_error(vips_engine: VipsEngine) -> None:
    data = _encode(Image.new("RGB", (16400, 2)), "PNG")
    with pytest.raises(DecodeError, match="WEBP"):
        vips_engine.process(data, ImageOptions(format="webp"))


_SIGNATURES = {
    "jpeg": b"\xff\xd8\xff",
    "png": b"\x89PNG\r\n\x1a\n",
    "gif": b"GIF89a",
    "webp": b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    "tiff": b"II*\x00",
    "avif": b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1",
}


@pytest.mark.parametrize("signature", _SIGNATURES.values(), ids=_SIGNATURES.keys())
@pytest.mark.parametrize("seed", range(3))
def test_a_signature_then_garbage_fails_as_pillow_fails(
    vips_engine: VipsEngine, pillow_engine: PillowEngine, signature: bytes, seed: int
) -> None:
    data = signature + random.Random(seed).randbytes(2000)
    outcomes = list(_both(vips_engine, pillow_engine, data))
    assert all(isinstance(outcome, str) for outcome in outcomes)  # never a raw exception
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize(
    "make",
    [
        lambda: b"",
        lambda: b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",  # HEIC is not supported
    ],
)
def test_what_pillow_refuses_as_not_an_image_vips_refuses_too(
    vips_engine: VipsEngine, make: Callable[[], bytes]
) -> None:
    with pytest.raises(NotAnImage):
        vips_engine.process(make(), ImageOptions())
