"""Region images: copies of photos with one object's box drawn in red, rendered in parallel
(a process pool, or the shards of a ``ShardMap``).

The copy is drawn on the stored pixels, exactly as COCO boxes are measured; the EXIF block and
ICC profile are carried over unchanged, so a viewer that rotates the original by its EXIF
orientation rotates the copy the same way and the box stays on the object.

A rendered file is skipped on the next run when its stamp still matches. The stamp is a sidecar
``<out>.stamp`` holding (a) a key made of the source file's size and mtime_ns, the box, the line
width and ``RENDER_VERSION``, and (b) the rendered file's own size and mtime_ns. Both must
match: a changed source, box or drawing style re-renders, and so does a rendered file that was
edited or replaced. Size+mtime rather than a content hash keeps the skip check to two ``stat``
calls and one small read, so an up-to-date run costs almost nothing.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from vlit_assets.core.shards import ShardMap, cut, shard_count

RENDER_VERSION = "1"  # bump when the drawing changes: every stamp then misses
BOX_COLOUR = (255, 0, 0)
JPEG_QUALITY = 90
_STAMP_SUFFIX = ".stamp"


@dataclass(frozen=True)
class RenderJob:
    image_path: str
    bbox: tuple[float, float, float, float]  # COCO x, y, w, h in stored pixels
    out_path: str


@dataclass(frozen=True)
class RenderResult:
    out_path: str
    status: str  # rendered | skipped | failed
    error: str | None = None


def choose_regions(
    objects: Sequence[tuple[str, str, float, bool]], min_area_frac: float, limit: int
) -> list[int]:
    """Positions in ``objects`` that get a region conversation, region ``k`` first.

    Each object is ``(object_id, category name, box area / image area, crowd)``. Crowd boxes and
    boxes under ``min_area_frac`` are never chosen; of the rest, the largest box of each
    category comes first (larger first, ties by object id), then the next largest boxes. Both
    generators call this, so region ``k`` of an image is the same object for either.
    """
    eligible = sorted(
        (i for i, (_, _, frac, crowd) in enumerate(objects) if not crowd and frac >= min_area_frac),
        key=lambda i: (-objects[i][2], objects[i][0]),
    )
    chosen: list[int] = []
    names: set[str] = set()
    for i in eligible:
        if len(chosen) < limit and objects[i][1] not in names:
            chosen.append(i)
            names.add(objects[i][1])
    taken = set(chosen)
    chosen += [i for i in eligible if i not in taken][: max(0, limit - len(chosen))]
    return chosen


def region_stems(images: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Image id -> file stem of its region images (``<stem>_<k>.jpg``), from (image id, file name).

    Two images of a source may share a stem in different folders; only those get ``-<image id>``
    appended, so the documented name holds for every other image.
    """
    # os.path rather than pathlib: this runs once per image, and Path() costs several times more.
    stems = {
        image_id: os.path.splitext(os.path.basename(file_name))[0] for image_id, file_name in images
    }
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {
        image_id: stem if counts[stem] == 1 else f"{stem}-{image_id}"
        for image_id, stem in stems.items()
    }


def line_width_for(width: int, height: int) -> int:
    """About 0.6% of the longer side (4 px on a 640 px COCO photo), never under 2 px."""
    return max(2, round(max(width, height) / 160))


def _box_corners(
    bbox: tuple[float, float, float, float], line: int, width: int, height: int
) -> tuple[int, int, int, int]:
    # Pillow draws a rectangle's outline inward from the corners it is given; widening the
    # corners by half the line centres the stroke on the annotated box edge.
    x, y, w, h = bbox
    half = line // 2
    x0 = max(0, round(x) - half)
    y0 = max(0, round(y) - half)
    x1 = min(width - 1, round(x + w) + half)
    y1 = min(height - 1, round(y + h) + half)
    return x0, y0, x1, y1


def render_region(
    image_path: Path,
    bbox: tuple[float, float, float, float],
    out_path: Path,
    *,
    width: int | None = None,
) -> None:
    """Write a JPEG copy of ``image_path`` with ``bbox`` outlined in red to ``out_path``.

    ``width`` is the line width in pixels (default: scaled to the image). The original is only
    read; the copy is written to a temporary name and renamed, so a crash never leaves a
    half-written file that a later run would take as done.
    """
    image_path, out_path = Path(image_path), Path(out_path)
    if out_path.resolve() == image_path.resolve():
        raise ValueError(f"refusing to draw over the original image {image_path}")
    _, _, bw, bh = bbox
    if bw <= 0 or bh <= 0:
        raise ValueError(f"{image_path}: box {bbox} has no area")
    with Image.open(image_path) as src:
        src.load()
        exif = src.info.get("exif")
        icc = src.info.get("icc_profile")
        im = src if src.mode == "RGB" else src.convert("RGB")
        line = width if width is not None else line_width_for(*im.size)
        ImageDraw.Draw(im).rectangle(
            _box_corners(bbox, line, *im.size), outline=BOX_COLOUR, width=line
        )
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f"{out_path.name}.tmp{os.getpid()}")
        extra = {k: v for k, v in (("exif", exif), ("icc_profile", icc)) if v}
        # 4:4:4 chroma: with the default 4:2:0 a thin red line bleeds into its neighbours.
        im.save(tmp, "JPEG", quality=JPEG_QUALITY, subsampling=0, **extra)
    os.replace(tmp, out_path)


def _stamp_key(job: RenderJob) -> str:
    st = os.stat(job.image_path)
    return f"{RENDER_VERSION}|{st.st_size}|{st.st_mtime_ns}|{job.bbox!r}"


def _stamp_path(out_path: str) -> str:
    return out_path + _STAMP_SUFFIX


def _is_current(job: RenderJob, key: str) -> bool:
    try:
        with open(_stamp_path(job.out_path), encoding="utf-8") as fh:
            stamp = json.load(fh)
        out = os.stat(job.out_path)
    except (OSError, ValueError):
        return False
    return stamp == {"key": key, "size": out.st_size, "mtime_ns": out.st_mtime_ns}


def _write_stamp(job: RenderJob, key: str) -> None:
    out = os.stat(job.out_path)
    stamp = {"key": key, "size": out.st_size, "mtime_ns": out.st_mtime_ns}
    tmp = f"{_stamp_path(job.out_path)}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(stamp, fh)
    os.replace(tmp, _stamp_path(job.out_path))


def render_job(job: RenderJob) -> RenderResult:
    """Render one job unless its stamp is current; a failure is returned, never raised."""
    try:
        key = _stamp_key(job)
        if _is_current(job, key):
            return RenderResult(job.out_path, "skipped")
        render_region(Path(job.image_path), job.bbox, Path(job.out_path))
        _write_stamp(job, key)
        return RenderResult(job.out_path, "rendered")
    except Exception as exc:  # one bad image must not stop the batch: it becomes a row
        return RenderResult(job.out_path, "failed", f"{type(exc).__name__}: {exc}")


def _render_shard(jobs: list[RenderJob]) -> list[RenderResult]:
    return [render_job(job) for job in jobs]


def render_regions(
    jobs: Sequence[RenderJob],
    *,
    workers: int | None = None,
    chunksize: int = 16,
    mapper: ShardMap | None = None,
) -> list[RenderResult]:
    """Render ``jobs`` (results in job order) with a process pool of ``workers`` processes.

    ``workers=None`` uses every core; 1 renders in this process. The pool uses the ``spawn``
    start method because forking a process that runs threads (a Dagster run does) can
    deadlock in the child. A ``mapper`` renders contiguous shards of at least ``chunksize``
    jobs instead (step ``generated/regions``); every node must see the same paths.
    """
    n = len(jobs)
    if mapper is not None:
        shards = cut(n, shard_count(mapper, n, min_items=chunksize))
        parts = mapper.map(
            _render_shard,
            [list(jobs[start : start + k]) for start, k in shards],
            step="generated/regions",
            sizes=[k for _, k in shards],
        )
        return [result for part in parts for result in part]
    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    if workers == 1 or n <= chunksize:
        return [render_job(job) for job in jobs]
    chunksize = max(1, min(chunksize, n // (workers * 4) or 1))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, n), mp_context=ctx) as pool:
        return list(pool.map(render_job, jobs, chunksize=chunksize))
