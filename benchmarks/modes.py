"""The benchmark modes. Each returns a flat dict of figures; ratios are taken in ``__main__``."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import io
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.corpus import CorpusSet
from benchmarks.measure import (
    PeakRSS,
    Run,
    cpu_by_command,
    cpu_of,
    cpu_spent,
    differential,
    run_child,
    write_csv,
)
from benchmarks.origin import OriginProcess

__all__ = [
    "codec",
    "distributed",
    "embedded",
    "engines",
    "fetch_only",
    "simplejpeg_loop",
    "validation",
]

REPO = Path(__file__).resolve().parents[1]


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"p50_ms": values[0] * 1000 if values else 0.0, "p95_ms": 0.0}
    cuts = statistics.quantiles(values, n=20)
    return {"p50_ms": statistics.median(values) * 1000, "p95_ms": cuts[18] * 1000}


# --- codec: the yardstick ---------------------------------------------------------------------


def _codec_one(data: bytes, quality: int = 50) -> tuple[int, float]:
    """Decode and re-encode one image the fast way; its output size and its seconds."""
    from PIL import Image

    started = time.perf_counter()
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # before save(): otherwise Pillow 13 copies the whole image inside save()
        # An fd-backed file: Pillow's encoder then releases the GIL (a BytesIO holds it).
        rgb = im if im.mode in ("RGB", "L") else im.convert("RGB")  # convert() always copies
        fd = os.memfd_create("codec")
        with open(fd, "w+b") as out:
            rgb.save(out, "JPEG", quality=quality)
            size = out.tell()
    return size, time.perf_counter() - started


def _codec_pool_init() -> None:
    from PIL import ImageFile

    ImageFile.MAXBLOCK = 16 * 1024 * 1024


def _codec_file(path: str) -> tuple[int, float]:
    return _codec_one(Path(path).read_bytes())


def codec(images: CorpusSet, count: int) -> dict[str, Any]:
    """The fastest plain Pillow loop on all cores, in memory: threads, and a process pool.

    Threads decode with a 16 MiB ``MAXBLOCK`` (decoding then releases the GIL in large chunks)
    and save to a memfd. The pool's workers read their input themselves, so no bytes are
    pickled. The faster of the two is the yardstick.
    """
    from PIL import ImageFile

    files = [images.files[n % len(images.files)] for n in range(count)]
    datas = [path.read_bytes() for path in files]
    workers = _cpus()
    previous = ImageFile.MAXBLOCK
    ImageFile.MAXBLOCK = 16 * 1024 * 1024
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(_codec_one, datas[:workers]))  # warm up
            started = time.perf_counter()
            results = list(pool.map(_codec_one, datas))
            thread_seconds = time.perf_counter() - started
    finally:
        ImageFile.MAXBLOCK = previous
    with concurrent.futures.ProcessPoolExecutor(workers, initializer=_codec_pool_init) as procs:
        list(procs.map(_codec_file, [str(p) for p in files[:workers]]))
        started = time.perf_counter()
        list(procs.map(_codec_file, [str(p) for p in files]))
        process_seconds = time.perf_counter() - started
    best = min(thread_seconds, process_seconds)
    return {
        "images": count,
        "workers": workers,
        "threads_images_per_s": count / thread_seconds,
        "processes_images_per_s": count / process_seconds,
        "images_per_s": count / best,
        "mb_per_s": sum(len(d) for d in datas) / best / 1e6,
        "output_bytes_mean": statistics.mean(size for size, _ in results),
        **_percentiles([seconds for _, seconds in results]),
    }


# --- embedded: `bulkresize process` -----------------------------------------------------------


def _bulkresize() -> list[str]:
    script = Path(sys.executable).parent / "bulkresize"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bulkresize"]


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKRESIZE_")}
    env.update(
        {"BULKRESIZE_DATA_DIR": str(data_dir), "BULKRESIZE_ALLOW_PRIVATE_URLS": "true", **extra}
    )
    return env


def _urls(origin: OriginProcess, images: CorpusSet, count: int, tag: str) -> list[str]:
    # A query string per image: each one is its own URL, as in a real catalogue.
    return [
        origin.url(f"{images.files[n % len(images.files)].name}?{tag}-{n}") for n in range(count)
    ]


def _latencies(db: Path, arrivals: dict[str, float]) -> list[float]:
    """Per image: from its download's arrival at the origin to its row's final update."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT input_url, updated_at FROM bulkresize_images").fetchall()
    out = []
    for url, updated_at in rows:
        path = "/" + url.split("/", 3)[3]
        if path in arrivals:
            done = datetime.fromisoformat(updated_at).timestamp()
            out.append(done - arrivals[path])
    return out


def _steady_rate(db: Path, share: float = 0.8) -> float | None:
    """Images per second over the middle ``share`` of a run's recorded images.

    A second estimate beside the differential one, from the run's own record times: start-up,
    which varies by ±0.5 s from run to run and does not quite cancel, plays no part in it.
    """
    with sqlite3.connect(db) as connection:
        stamps = sorted(
            datetime.fromisoformat(updated_at).timestamp()
            for (updated_at,) in connection.execute("SELECT updated_at FROM bulkresize_images")
        )
    first = int(len(stamps) * (1 - share) / 2)
    last = len(stamps) - 1 - first
    if last <= first or stamps[last] <= stamps[first]:
        return None
    return (last - first) / (stamps[last] - stamps[first])


def embedded(
    images: CorpusSet,
    small: int,
    large: int,
    *,
    latency: float = 0.0,
    workdir: Path,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``bulkresize process`` on a CSV of ``small`` then ``large`` images; differential."""
    runs: dict[int, Run] = {}
    latencies: list[float] = []
    steady: float | None = None
    for count in (small, large):
        folder = Path(tempfile.mkdtemp(prefix=f"embedded-{count}-", dir=workdir))
        log = folder / "arrivals.json"
        with OriginProcess(images.files[0].parent, latency=latency, log=log) as origin:
            csv = write_csv(folder / "in.csv", _urls(origin, images, count, "e"))
            runs[count] = run_child(
                [*_bulkresize(), "process", str(csv), "-o", str(folder / "out.csv")],
                _env(folder / "data", **(env or {})),
            )
        if count == large:
            latencies = _latencies(folder / "data" / "bulkresize.db", json.loads(log.read_text()))
            steady = _steady_rate(folder / "data" / "bulkresize.db")
        shutil.rmtree(folder)
    rate = differential(small, runs[small].seconds, large, runs[large].seconds)
    mean_bytes = images.total_bytes / len(images.files)
    return {
        "images": large,
        "latency_s": latency,
        "seconds": runs[large].seconds,
        "images_per_s": rate,
        "steady_images_per_s": steady,
        "mb_per_s": rate * mean_bytes / 1e6,
        "peak_rss_mb": runs[large].peak_rss_mb,
        "startup_s": runs[small].seconds - small / rate,
        **_percentiles(latencies),
    }


# --- fetch only: a bare threaded httpx loop -----------------------------------------------------


def fetch_only(images: CorpusSet, count: int, *, threads: int = 16) -> dict[str, Any]:
    """The same downloads as the pipeline makes, with nothing else: threads sharing one client."""
    import httpx

    with OriginProcess(images.files[0].parent) as origin:
        urls = _urls(origin, images, count, "f")
        limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
        with httpx.Client(limits=limits) as client:

            def get(url: str) -> int:
                return len(client.get(url).raise_for_status().content)

            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                started = time.perf_counter()
                total = sum(pool.map(get, urls))
                seconds = time.perf_counter() - started
    return {"images": count, "images_per_s": count / seconds, "mb_per_s": total / seconds / 1e6}


# --- distributed: serve + N RQ workers, PostgreSQL, S3 on moto -----------------------------------


def _topology() -> Any:
    spec = importlib.util.spec_from_file_location(
        "bulkresize_topology", REPO / "examples" / "distributed" / "topology.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Topology


def _run_request(api: str, csv: Path, timeout: float = 1800) -> float:
    import httpx

    # One client for the whole request: a new one per poll builds an SSL context each time
    # (about 48 ms of CPU), which took most of a core from the workers when polling every 50 ms.
    with httpx.Client(timeout=120) as client:
        started = time.perf_counter()
        with csv.open("rb") as body:
            answer = client.post(f"{api}/v1/requests", files={"file": body})
        answer.raise_for_status()
        status_url = f"{api}/v1/requests/{answer.json()['request_id']}"
        while time.perf_counter() - started < timeout:
            status = client.get(status_url).json()
            if status["status"] in ("completed", "failed"):
                return time.perf_counter() - started
            time.sleep(0.1)  # the end is seen within 0.1 s; the differential cancels the mean
    raise RuntimeError(f"the request did not finish in {timeout} s")


def distributed(
    images: CorpusSet, small: int, large: int, *, workers: int, workdir: Path
) -> dict[str, Any]:
    """An upload over HTTP to ``serve``, run by ``workers`` RQ workers; differential."""
    topology_class = _topology()
    folder = Path(tempfile.mkdtemp(prefix="distributed-", dir=workdir))
    seconds: dict[int, float] = {}
    with OriginProcess(images.files[0].parent) as origin:
        extra = {
            "BULKRESIZE_ALLOW_PRIVATE_URLS": "true",
            # The workers share this machine's cores, as the embedded pipeline's producer
            # children share its encode pool: one encode thread per core in all, not per worker.
            "BULKRESIZE_ENCODE_WORKERS": str(max(1, _cpus() // workers)),
        }
        with topology_class(folder, extra_env=extra).start(workers=workers) as topology:
            followers = [PeakRSS(worker.pid) for worker in topology.workers]
            _run_request(
                topology.api_url, write_csv(folder / "warm.csv", _urls(origin, images, 4, "w"))
            )
            for count in (small, large):
                csv = write_csv(folder / f"{count}.csv", _urls(origin, images, count, f"d{count}"))
                before = cpu_by_command()
                api_before = cpu_of(topology.api.pid)
                seconds[count] = _run_request(topology.api_url, csv)
                cpu = cpu_spent(before, cpu_by_command())
                cpu["of which the API"] = round(cpu_of(topology.api.pid) - api_before, 2)
            for follower in followers:
                follower.stop()
            peaks = [follower.megabytes for follower in followers]
    shutil.rmtree(folder, ignore_errors=True)
    rate = differential(small, seconds[small], large, seconds[large])
    return {
        "images": large,
        "workers": workers,
        "images_per_s": rate,
        "mb_per_s": rate * images.total_bytes / len(images.files) / 1e6,
        "worker_peak_rss_mb": max(peaks),
        "cpu_seconds_by_command": cpu,  # during the large run, every process on the machine
    }


# --- engines alone ------------------------------------------------------------------------------


def _ssim(reference: bytes, candidate: bytes) -> float:
    import numpy as np
    from PIL import Image
    from skimage.metrics import structural_similarity

    def grey(data: bytes) -> Any:
        return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)

    a, b = grey(reference), grey(candidate)
    if a.shape != b.shape:
        return 0.0
    return float(structural_similarity(a, b, data_range=255))


def engines(
    images: CorpusSet,
    count: int,
    names: Sequence[str],
    *,
    quality_check: bool = True,
    box: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Each installed engine alone, on threads on all cores, on images held in memory.

    Quality is judged against plain decode + encode (the codec loop): SSIM of the grey images
    and the output size, on the first images of the set. With ``box``, the engines fit the
    images inside box x box, and the reference is a full decode, a Lanczos resize and an encode.
    """
    from bulkresize.engines.base import ImageEngine
    from bulkresize.errors import BackendNotFound
    from bulkresize.models import ImageOptions
    from bulkresize.registry import create_backend

    datas = [images.files[n % len(images.files)].read_bytes() for n in range(count)]
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            engine = create_backend("engine", name, ImageEngine)
        except BackendNotFound as exc:
            results[name] = {"skipped": str(exc)}
            continue
        options = ImageOptions(max_width=box, max_height=box)
        outputs, seconds, timed = _time_engine(engine, datas, options)
        entry: dict[str, Any] = {"images_per_s": count / seconds, **_percentiles(timed)}
        if quality_check:
            sample = list(range(min(len(images.files), count)))
            refs = [_reference(datas[n], box) for n in sample]
            entry["ssim_min"] = min(_ssim(refs[n], outputs[n]) for n in sample)
            entry["size_ratio"] = sum(len(outputs[n]) for n in sample) / sum(len(r) for r in refs)
        engine.close()
        results[name] = entry
    return results


def _time_engine(
    engine: Any, datas: Sequence[bytes], options: Any
) -> tuple[list[bytes], float, list[float]]:
    """Run an engine on threads, one per core: outputs, total seconds, per-image seconds."""
    timed: list[float] = []
    lock = threading.Lock()

    def run(data: bytes) -> bytes:
        started = time.perf_counter()
        out: bytes = engine.process(data, options).data
        with lock:
            timed.append(time.perf_counter() - started)
        return out

    with concurrent.futures.ThreadPoolExecutor(_cpus()) as pool:
        list(pool.map(run, datas[: _cpus()]))  # warm up
        timed.clear()
        started = time.perf_counter()
        outputs = list(pool.map(run, datas))
        seconds = time.perf_counter() - started
    return outputs, seconds, timed


def simplejpeg_loop(images: CorpusSet, count: int) -> dict[str, Any]:
    """simplejpeg (libjpeg-turbo with its fast paths) decoding and re-encoding JPEGs at q50.

    Not an engine (no orientation, colour management or limits): a measure of how far a
    leaner libjpeg-turbo binding gets past Pillow on the same images.
    """
    try:
        import simplejpeg
    except ImportError:
        return {"skipped": "simplejpeg is not installed (pip install simplejpeg)"}
    datas = [images.files[n % len(images.files)].read_bytes() for n in range(count)]

    class _Loop:
        def process(self, data: bytes, options: Any) -> Any:
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True)
            return _Bytes(simplejpeg.encode_jpeg(pixels, quality=50, colorspace="RGB"))

    outputs, seconds, timed = _time_engine(_Loop(), datas, None)
    sample = range(min(len(images.files), count))
    refs = [_reference(datas[n]) for n in sample]
    return {
        "images_per_s": count / seconds,
        **_percentiles(timed),
        "ssim_min": min(_ssim(refs[n], outputs[n]) for n in sample),
        "size_ratio": sum(len(outputs[n]) for n in sample) / sum(len(r) for r in refs),
    }


@dataclass(frozen=True)
class _Bytes:
    data: bytes


def _reference(data: bytes, box: int | None = None) -> bytes:
    """Plain decode + encode at quality 50; transparency flattened onto white, as DESIGN §3."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if box is not None and max(im.size) > box:
            scale = box / max(im.size)
            fitted = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(fitted, Image.Resampling.LANCZOS)
        if im.mode in ("RGBA", "LA", "P"):
            rgba = im.convert("RGBA")
            flat = Image.new("RGB", im.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            im = flat
        out = io.BytesIO()
        im.convert("RGB").save(out, "JPEG", quality=50)
        return out.getvalue()


# --- validation at scale ------------------------------------------------------------------------


def validation(rows: int, workdir: Path, repeat: int = 7) -> dict[str, Any]:
    """The pandera validator on a ``rows``-row CSV, and a bare ``pandas.read_csv`` of it."""
    import pandas as pd

    from bulkresize.validation.pandera import PanderaValidator

    lines = ["S. No.,Product Name,Input Image Urls"]
    for n in range(1, rows + 1):
        urls = ",".join(f"https://img.example.com/p/{n}/{k}.jpg" for k in range(3))
        lines.append(f'{n},Product number {n},"{urls}"')
    path = workdir / f"validation-{rows}.csv"
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(data)
    validator = PanderaValidator()

    def timed(action: Callable[[], object]) -> float:
        started = time.perf_counter()
        action()
        return time.perf_counter() - started

    # Alternating, like the other comparisons, and the best of each: both meet the same moments.
    reads, validates = [], []
    for _ in range(repeat):
        reads.append(timed(lambda: pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)))
        validates.append(timed(lambda: validator.validate(data)))
    read, validate = min(reads), min(validates)
    path.unlink()
    return {"rows": rows, "read_csv_s": read, "validate_s": validate, "ratio": validate / read}
