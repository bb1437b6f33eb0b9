"""Image file checks: path safety, full decode, pixel facts and hashes, run over a process pool
or the shards of a ``ShardMap`` (a Ray cluster).

One image is checked by :func:`inspect_image`, which never raises for a bad file: it returns an
:class:`ImageReport` whose ``reason`` is a code from ``schemas.REJECT_REASONS`` (or ``None`` when
the file is usable). The checks run in this order and the first failure wins:

1. ``image_path_escapes_root`` — the name is absolute, or it (or a symlink on the way) resolves
   outside the image root. Nothing outside the root is ever opened.
2. ``image_missing`` / ``image_empty`` — no file, or zero bytes.
3. ``image_undecodable`` — Pillow cannot identify the format.
4. ``image_decompression_bomb`` — width x height from the header exceeds ``max_pixels``; checked
   before any pixel is decoded. (Pillow itself refuses to open files over twice its own
   ``Image.MAX_IMAGE_PIXELS``; pool workers and shards raise that to ``max_pixels``, but with
   ``workers=1`` a ``max_pixels`` above 2 x 89,478,485 also needs Pillow's limit raised.)
5. ``image_unsupported_mode`` — the pixel mode is not in :data:`SUPPORTED_MODES`.
6. ``image_truncated`` / ``image_undecodable`` — the full decode fails (or the EXIF block
   cannot be read).
7. ``image_size_mismatch`` — the decoded size differs from the annotated width/height.

Supported modes are those Pillow converts to RGB without losing what the pixels mean: ``1``,
``L``, ``LA``, ``P``, ``PA``, ``RGB``, ``RGBA``, ``RGBX``, ``CMYK`` and ``YCbCr``. High bit-depth
and float modes (``I``, ``I;16*``, ``F``) are rejected: converting them to RGB clips every
value above 255, so a 16-bit scan would train as a white rectangle. ``LAB``/``HSV`` and the
premultiplied ``La``/``RGBa`` have no direct RGB conversion.

Decoding uses ``Image.draft`` for JPEGs (1/8 scale, luma only). libjpeg still reads and
entropy-decodes every scan to the end of the file, so a truncated file still fails with
"image file is truncated"; it only skips the inverse DCT at full size, upsampling and colour
conversion, which is most of the time of a full decode.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlit_assets.core.shards import ShardMap, cut, shard_count

SUPPORTED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # the transposing/rotating-by-90° ones
_POOL_MIN_JOBS = 16  # below this, starting processes costs more than it saves
# A shard's floor: ~16 decodes (a few ms each) outweigh one task's overhead; larger sources are
# cut by the cluster's slots, so the floor only matters for small ones.
_SHARD_MIN_JOBS = 16


@dataclass(frozen=True)
class ImageJob:
    image_root: str
    file_name: str  # as annotated: relative to image_root
    declared_width: int
    declared_height: int


@dataclass(frozen=True)
class ImageReport:
    file_name: str
    reason: str | None = None  # reject code, None when the image is usable
    detail: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    format: str | None = None
    mode: str | None = None
    width: int | None = None  # decoded (stored) size
    height: int | None = None
    oriented_width: int | None = None  # size after applying the EXIF orientation
    oriented_height: int | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def resolve_inside(image_root: Path, file_name: str) -> Path | None:
    """The resolved path of ``file_name`` under ``image_root``, or None if it leaves the root.

    Resolution follows symlinks, so a link inside the root that points outside is refused as
    surely as ``../x.jpg`` or ``/etc/passwd``.
    """
    if not file_name or "\x00" in file_name or Path(file_name).is_absolute():
        return None
    root = image_root.resolve()
    candidate = (root / file_name).resolve()
    return candidate if candidate.is_relative_to(root) else None


def _reject(job: ImageJob, reason: str, detail: str, **facts: object) -> ImageReport:
    return ImageReport(job.file_name, reason, detail, **facts)  # type: ignore[arg-type]


def _orientation(im: Image.Image) -> int:
    value = im.getexif().get(_ORIENTATION_TAG, 1)
    return value if isinstance(value, int) else 1


def _decode(im: Image.Image) -> None:
    if im.format == "JPEG":
        im.draft("L", (1, 1))
    im.load()


def _decode_failure(exc: Exception) -> str:
    text = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in text or "premature end" in text:
        return "image_truncated"
    return "image_undecodable"


def inspect_image(job: ImageJob, max_pixels: int) -> ImageReport:
    """Check one image file; never raises for a bad file (see the module docstring)."""
    try:
        path = resolve_inside(Path(job.image_root), job.file_name)
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long for the OS
        return _reject(job, "image_missing", f"{job.file_name!r} cannot be resolved: {exc}")
    if path is None:
        return _reject(
            job,
            "image_path_escapes_root",
            f"{job.file_name!r} resolves outside the image root {job.image_root}; not opened",
        )
    try:
        if not path.exists():
            return _reject(job, "image_missing", f"{path} does not exist")
        if not path.is_file():
            return _reject(job, "image_undecodable", f"{path} is not a regular file")
        data = path.read_bytes()
    except OSError as exc:  # a name longer than the OS allows, no permission, an I/O error
        return _reject(job, "image_missing", f"{job.file_name!r} cannot be read: {exc}")
    if not data:
        return _reject(job, "image_empty", f"{path} has zero bytes")
    facts: dict[str, object] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _inspect_bytes(job, path, data, max_pixels, facts)


def _inspect_bytes(
    job: ImageJob, path: Path, data: bytes, max_pixels: int, facts: dict[str, object]
) -> ImageReport:
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        return _reject(job, "image_decompression_bomb", f"{path}: {exc}", **facts)
    except UnidentifiedImageError:
        return _reject(
            job, "image_undecodable", f"{path}: not an image format Pillow reads", **facts
        )
    except (OSError, ValueError, SyntaxError) as exc:
        return _reject(job, "image_undecodable", f"{path}: {exc}", **facts)
    with im:
        width, height = im.size
        facts.update(format=im.format, mode=im.mode, width=width, height=height)
        if width * height > max_pixels:
            return _reject(
                job,
                "image_decompression_bomb",
                f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of "
                f"{max_pixels}",
                **facts,
            )
        if im.mode not in SUPPORTED_MODES:
            return _reject(
                job,
                "image_unsupported_mode",
                f"{path}: mode {im.mode} is not one of {sorted(SUPPORTED_MODES)}",
                **facts,
            )
        try:
            _decode(im)
        except Exception as exc:  # decoders raise OSError, EOFError, ValueError, SyntaxError
            return _reject(job, _decode_failure(exc), f"{path}: {exc}", **facts)
        try:  # after the decode: a PNG's EXIF chunk may follow the pixel data
            orientation = _orientation(im)
        except Exception as exc:  # a malformed EXIF block can raise almost anything
            return _reject(job, "image_undecodable", f"{path}: unreadable EXIF: {exc}", **facts)
        swap = orientation in _SWAPPING_ORIENTATIONS
        facts.update(
            oriented_width=height if swap else width, oriented_height=width if swap else height
        )
    if (width, height) != (job.declared_width, job.declared_height):
        return _reject(
            job,
            "image_size_mismatch",
            f"{path}: decoded size {width}x{height} differs from the annotated "
            f"{job.declared_width}x{job.declared_height}",
            **facts,
        )
    return ImageReport(job.file_name, **facts)  # type: ignore[arg-type]


def _init_worker(max_pixels: int) -> None:
    # Our own check applies the limit; Pillow's (which raises only at twice its own default)
    # must not reject first with a less precise message.
    Image.MAX_IMAGE_PIXELS = max(max_pixels, Image.MAX_IMAGE_PIXELS or 0)


def _inspect_chunk(jobs: list[ImageJob], max_pixels: int) -> list[ImageReport]:
    return [inspect_image(job, max_pixels) for job in jobs]


@contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's limit raised as ``_init_worker`` does, then put back: a shard may run in a
    process that lives on (a Ray worker, or this one under ``InlineMap``)."""
    before = Image.MAX_IMAGE_PIXELS
    _init_worker(max_pixels)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _inspect_shard(shard: tuple[list[ImageJob], int]) -> list[ImageReport]:
    jobs, max_pixels = shard
    with _pixel_limit(max_pixels):
        return _inspect_chunk(jobs, max_pixels)


def inspect_images(
    jobs: Sequence[ImageJob],
    *,
    max_pixels: int,
    workers: int = 2,
    mapper: ShardMap | None = None,
) -> list[ImageReport]:
    """Check every job; reports come back in job order.

    With a ``mapper`` the jobs are cut into contiguous shards that it runs (step
    ``raw/images``); ``workers`` is then unused. Otherwise ``workers`` > 1 uses a process pool
    (``spawn``: forking a process that runs threads, as a Dagster run does, can deadlock). Jobs
    travel in chunks so that the per-task overhead stays small next to a ~2 ms decode.
    """
    jobs = list(jobs)
    if mapper is not None:
        shards = cut(len(jobs), shard_count(mapper, len(jobs), min_items=_SHARD_MIN_JOBS))
        checked = mapper.map(
            _inspect_shard,
            [(jobs[start : start + n], max_pixels) for start, n in shards],
            step="raw/images",
            sizes=[n for _, n in shards],
        )
        return [report for part in checked for report in part]
    if workers <= 1 or len(jobs) < _POOL_MIN_JOBS:
        return _inspect_chunk(jobs, max_pixels)
    workers = min(workers, os.cpu_count() or 1, len(jobs))
    size = max(8, min(256, len(jobs) // (workers * 8) or 1))
    chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(max_pixels,)
    ) as pool:
        parts = pool.map(_inspect_chunk, chunks, [max_pixels] * len(chunks))
        return [report for part in parts for report in part]
