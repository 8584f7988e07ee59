"""The benchmark corpus: photo-like JPEGs of 1, 3, 6 and 12 MP, PNGs with alpha, tiny JPEGs.

Files are generated once, deterministically, into a cache folder, and reused by later runs.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

__all__ = ["SIZES", "CorpusSet", "build"]

#: Name → (width, height). The megapixel sizes have a camera's 3:2 or 4:3 shape.
SIZES: dict[str, tuple[int, int]] = {
    "1mp": (1224, 816),
    "3mp": (2121, 1414),
    "6mp": (3000, 2000),
    "12mp": (4000, 3000),
    "tiny": (64, 48),
}
#: Distinct files per set; a request of N images cycles through them.
VARIANTS = 8


@dataclass(frozen=True)
class CorpusSet:
    """A set of same-sized files in one folder."""

    name: str
    files: tuple[Path, ...]

    @property
    def total_bytes(self) -> int:
        """The sum of the files' sizes."""
        return sum(path.stat().st_size for path in self.files)


def _photo(size: tuple[int, int], seed: int) -> Image.Image:
    """A photo-like picture: smooth shading, blurred texture, edges and fine grain.

    Pure noise would make JPEG slower and larger than any photo; flat colour would make it
    faster. This mix gives about 0.35 bytes per pixel at quality 90, like a camera photo.
    """
    rng = random.Random(seed)
    width, height = size
    small = (max(width // 8, 8), max(height // 8, 8))
    channels = []
    for _ in range(3):
        gradient = Image.linear_gradient("L").rotate(rng.uniform(0, 360)).resize(small)
        texture = Image.effect_noise(small, 60).filter(ImageFilter.GaussianBlur(2))
        channels.append(Image.blend(gradient, texture, 0.45).resize(size, Image.Resampling.BICUBIC))
    im = Image.merge("RGB", channels)
    draw = ImageDraw.Draw(im)
    for _ in range(40):  # edges: what a photo's objects give the encoder
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(max(width // 40, 2), max(width // 6, 3))
        fill = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=max(width // 400, 1))
    grain = Image.effect_noise(size, 48).convert("RGB")
    return Image.blend(im, grain, 0.15)


def _build_set(folder: Path, name: str) -> CorpusSet:
    size = SIZES[name]
    files = []
    for n in range(VARIANTS if name != "tiny" else 32):
        path = folder / f"{name}-{n}.jpg"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            _photo(size, seed=zlib.crc32(f"{name}-{n}".encode())).save(tmp, "JPEG", quality=90)
            tmp.rename(path)
        files.append(path)
    return CorpusSet(name, tuple(files))


def _build_alpha(folder: Path) -> CorpusSet:
    files = []
    for n in range(VARIANTS):
        path = folder / f"alpha-{n}.png"
        if not path.exists():
            im = _photo(SIZES["1mp"], seed=1000 + n).convert("RGBA")
            mask = Image.radial_gradient("L").resize(im.size)
            im.putalpha(mask)
            tmp = path.with_suffix(".tmp")
            im.save(tmp, "PNG", compress_level=1)
            tmp.rename(path)
        files.append(path)
    return CorpusSet("alpha", tuple(files))


def build(folder: Path, names: list[str]) -> dict[str, CorpusSet]:
    """Generate (or reuse) the named sets in ``folder``: size names from SIZES, or ``alpha``."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        name: _build_alpha(folder) if name == "alpha" else _build_set(folder, name)
        for name in names
    }
