"""Speed and memory of data collection: annotation ingestion at COCO scale, image validation.

``--import-bench DIR`` times the QC-only import instead: ``collect_import`` of a LLaVA folder
(``../shared/bench/make_llava_bench.py`` output) and its DuckDB write, in a subprocess.

Run: ``.venv/bin/python benchmarks/collect.py`` (coco-mini from ``VLIT_COCO_MINI`` or
``../shared/coco-mini``). Everything it writes goes under ``benchmarks/out/`` (git-ignored).

1. Ingestion. coco-mini's annotations are scaled up with new ids to 100,000 images, 500,000
   captions and 700,000 objects, segmentation included, in COCO JSON (built once, reused).
   A subprocess loads them with ``load_annotations``, assembles the raw frames (ids, cascade,
   tags; the image files are not opened: declared sizes stand in for decoded ones) and writes
   them to a fresh DuckDB file with ``warehouse.replace_source``. The parent reads the
   subprocess's wall time and peak RSS (``resource.getrusage(RUSAGE_CHILDREN)``).
   Targets: <= 15 s wall, <= 2 GB peak RSS.
2. Image validation. coco-mini's 80 photos copied to 5,000 files plus a few truncated copies,
   validated with ``validate_images`` on a two-process pool. Target: >= 400 images/s on 2 cores.
   Copies of one photo have equal bytes, so all but the first are rejected as duplicates; they
   are fully decoded first, so the timing is that of a clean set.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from vlit_assets.core import warehouse
from vlit_assets.core.raw.annotations import find_coco_files, load_annotations
from vlit_assets.core.raw.collect import assemble, validate_images
from vlit_assets.core.raw.rejects import conform, source_ids
from vlit_assets.core.schemas import RAW_IMAGES, RAW_REJECTS

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "collect"
SPLIT = "train2017"
N_IMAGES, N_CAPTIONS, N_OBJECTS = 100_000, 500_000, 700_000
N_IMAGE_FILES, N_TRUNCATED = 5_000, 10


def coco_mini() -> Path:
    path = Path(os.environ.get("VLIT_COCO_MINI", REPO.parent / "shared" / "coco-mini"))
    if not (path / "annotations" / f"captions_{SPLIT}.json").is_file():
        sys.exit(f"coco-mini not found at {path}; set VLIT_COCO_MINI")
    return path


# --- building the scaled annotation set -------------------------------------------------------


def _stride(values: list[int]) -> int:
    """A power of ten above every id, so copy c's ids (c * stride + id) never collide."""
    return 10 ** len(str(max(values)))


def _write_coco(path: Path, head: dict, images, annotations, tail: dict) -> None:
    """Stream a COCO file record by record: never holds the scaled set in memory."""
    with open(path, "w") as fh:
        fh.write("{" + "".join(f"{json.dumps(k)}: {json.dumps(v)}, " for k, v in head.items()))
        for key, records in (("images", images), ("annotations", annotations)):
            fh.write(f'"{key}": [')
            for i, record in enumerate(records):
                fh.write(("," if i else "") + json.dumps(record))
            fh.write("]")
            if key == "images":
                fh.write(", ")
        fh.write("".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in tail.items()) + "}")


def build_scaled(src: Path, root: Path) -> Path:
    marker = root / "built.json"
    spec = {"images": N_IMAGES, "captions": N_CAPTIONS, "objects": N_OBJECTS, "version": 1}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (root / SPLIT).mkdir(exist_ok=True)
    captions = json.loads((src / "annotations" / f"captions_{SPLIT}.json").read_text())
    instances = json.loads((src / "annotations" / f"instances_{SPLIT}.json").read_text())
    copies = N_IMAGES // len(captions["images"])
    img_stride = _stride([im["id"] for im in captions["images"]])
    cap_stride = _stride([a["id"] for a in captions["annotations"]])
    obj_stride = _stride([a["id"] for a in instances["annotations"]])

    def images():
        for c in range(copies):
            for im in captions["images"]:
                yield {**im, "id": c * img_stride + im["id"]}

    def scaled(records, stride, limit):
        n = 0
        for c in range(limit // len(records) + 1):
            for a in records:
                if n == limit:
                    return
                yield {**a, "id": c * stride + a["id"], "image_id": c * img_stride + a["image_id"]}
                n += 1

    head = {"info": captions["info"], "licenses": captions["licenses"]}
    _write_coco(
        ann / f"captions_{SPLIT}.json",
        head,
        images(),
        scaled(captions["annotations"], cap_stride, N_CAPTIONS),
        {},
    )
    _write_coco(
        ann / f"instances_{SPLIT}.json",
        head,
        images(),
        scaled(instances["annotations"], obj_stride, N_OBJECTS),
        {"categories": instances["categories"]},
    )
    marker.write_text(json.dumps(spec))
    return root


# --- ingestion, in a subprocess ---------------------------------------------------------------


def _declared_as_valid(source: str, records: pl.DataFrame) -> pl.DataFrame:
    """raw__images rows from the declared sizes: ingestion is measured without image I/O."""
    return conform(
        RAW_IMAGES,
        records.with_columns(
            pl.Series("image_id", source_ids("img", source, records["coco_image_id"])),
            pl.lit(source).alias("source"),
            pl.col("width").alias("oriented_width"),
            pl.col("height").alias("oriented_height"),
            pl.lit("JPEG").alias("format"),
            pl.lit("RGB").alias("mode"),
            pl.lit(None, pl.Int64).alias("bytes"),
            pl.lit(None, pl.String).alias("sha256"),
            pl.lit("bench").alias("run_id"),
        ),
    )


def ingest(root: Path, db: Path) -> dict[str, object]:
    source = "scaled"
    t0, c0 = time.perf_counter(), time.process_time()
    annotations = load_annotations(source, find_coco_files(root), run_id="bench")
    t1 = time.perf_counter()
    images = _declared_as_valid(source, annotations.images)
    result = assemble(
        source, annotations, images, RAW_REJECTS.empty_frame(), absent_k=8, run_id="bench"
    )
    t2 = time.perf_counter()
    with warehouse.connect(db) as con:
        for name in ("images", "captions", "objects", "categories", "tags", "rejects"):
            warehouse.replace_source(con, f"raw__{name}", getattr(result, name), source)
    t3 = time.perf_counter()
    return {
        "load_s": t1 - t0,
        "assemble_s": t2 - t1,
        "write_s": t3 - t2,
        "total_s": t3 - t0,
        "cpu_s": time.process_time() - c0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "counts": result.counts(),
    }


def run_ingest(root: Path) -> dict[str, object]:
    db = OUT / "ingest.duckdb"
    for stale in (db, db.with_suffix(".duckdb.wal")):
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--ingest", str(root), str(db)],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"ingestion failed:\n{proc.stderr}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["process_wall_s"] = wall
    figures["children_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    figures["db_mb"] = db.stat().st_size / 1e6
    return figures


# --- image validation -------------------------------------------------------------------------


def build_image_set(src: Path, root: Path) -> pl.DataFrame:
    """5,000 copies of the coco-mini photos plus truncated ones: records to validate."""
    captions = json.loads((src / "annotations" / f"captions_{SPLIT}.json").read_text())
    originals = sorted(captions["images"], key=lambda im: im["id"])
    image_dir = root / SPLIT
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(N_IMAGE_FILES + N_TRUNCATED):
        im = originals[i % len(originals)]
        name = f"{i:05d}.jpg" if i < N_IMAGE_FILES else f"truncated_{i:05d}.jpg"
        target = image_dir / name
        if not target.exists():
            data = (src / SPLIT / im["file_name"]).read_bytes()
            target.write_bytes(data if i < N_IMAGE_FILES else data[: len(data) * 2 // 3])
        rows.append((i + 1, name, im["width"], im["height"]))
    return pl.DataFrame(
        rows, schema=["coco_image_id", "file_name", "width", "height"], orient="row"
    )


def run_images(src: Path) -> dict[str, object]:
    root = OUT / "images"
    records = build_image_set(src, root)
    start = time.perf_counter()
    valid, rejects = validate_images(
        "bench", root / SPLIT, records, max_pixels=89_478_485, workers=2, run_id="bench"
    )
    wall = time.perf_counter() - start
    reasons = rejects.group_by("reason").len()
    by_reason = dict(zip(reasons["reason"], reasons["len"], strict=True))
    return {
        "files": records.height,
        "wall_s": wall,
        "images_per_s": records.height / wall,
        "truncated_planted": N_TRUNCATED,
        "truncated_caught": by_reason.get("image_truncated", 0),
        "valid": valid.height,
        "duplicate_bytes": by_reason.get("image_duplicate_bytes", 0),
    }


# --- QC-only import -----------------------------------------------------------------------------


def import_child(root: Path, db: Path) -> dict[str, object]:
    """collect_import of a LLaVA folder and its DuckDB write, timed in this process."""
    from vlit_assets.core.raw.imports import collect_import

    t0, c0 = time.perf_counter(), time.process_time()
    result = collect_import("bench", root, workers=2, run_id="bench")
    t1 = time.perf_counter()
    with warehouse.connect(db) as con:
        for name, frame in (
            ("raw__conversations", result.conversations),
            ("raw__images", result.images),
            ("raw__rejects", result.rejects),
        ):
            warehouse.replace_source(con, name, frame, "bench")
    t2 = time.perf_counter()
    return {
        "import_s": t1 - t0,
        "write_s": t2 - t1,
        "cpu_s": time.process_time() - c0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "counts": result.counts(),
        "rejects": result.rejects_by_reason(),
    }


def run_import(root: Path) -> list[str]:
    """Rows of the table for ``--import-bench``: the child's figures and its whole-process wall."""
    OUT.mkdir(parents=True, exist_ok=True)
    db = OUT / "import.duckdb"
    for stale in (db, db.with_suffix(".duckdb.wal")):
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--import-child", str(root), str(db)],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"import failed:\n{proc.stderr}")
    fig = json.loads(proc.stdout.strip().splitlines()[-1])
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    files = sorted(p.name for p in root.iterdir() if p.is_file())
    return [
        _row("what", "figure"),
        _row("-" * 44, "-" * 14),
        _row("folder", root.name),
        *(_row(f"  {name}", f"{(root / name).stat().st_size / 1e6:.0f} MB") for name in files),
        *(_row(f"  rows {k}", f"{v:,}") for k, v in fig["counts"].items()),
        *(_row(f"  rejects {k}", f"{v:,}") for k, v in fig["rejects"].items()),
        _row("import: read, validate, check images", f"{fig['import_s']:.2f} s"),
        _row("import: write to DuckDB", f"{fig['write_s']:.2f} s"),
        _row("import: CPU time (user + sys)", f"{fig['cpu_s']:.2f} s"),
        _row("import: subprocess wall incl. start-up", f"{wall:.2f} s"),
        _row("import: peak RSS (child, getrusage)", f"{rss:.0f} MB"),
    ]


def _row(what: str, value: str, target: str = "") -> str:
    return f"| {what:<44} | {value:>14} | {target:>10} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", nargs=2, metavar=("ROOT", "DB"), help=argparse.SUPPRESS)
    parser.add_argument("--skip-images", action="store_true", help="only time ingestion")
    parser.add_argument(
        "--import-bench",
        metavar="DIR",
        help="instead: time the QC-only import of a LLaVA folder (e.g. make_llava_bench.py output)",
    )
    parser.add_argument("--import-child", nargs=2, metavar=("ROOT", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest:
        print(json.dumps(ingest(Path(args.ingest[0]), Path(args.ingest[1]))))
        return
    if args.import_child:
        print(json.dumps(import_child(Path(args.import_child[0]), Path(args.import_child[1]))))
        return
    if args.import_bench:
        print("\n".join(run_import(Path(args.import_bench).resolve())))
        return
    src = coco_mini()
    OUT.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    root = build_scaled(src, OUT / "scaled")
    built_s = time.perf_counter() - t
    sizes = {p.name: p.stat().st_size / 1e6 for p in (root / "annotations").glob("*.json")}
    ing = run_ingest(root)
    lines = [
        _row("what", "figure", "target"),
        _row("-" * 44, "-" * 14, "-" * 10),
        _row("scaled set built (or reused) in", f"{built_s:.1f} s"),
        *(_row(f"  {name}", f"{mb:.0f} MB") for name, mb in sorted(sizes.items())),
        *(_row(f"  rows raw__{k}", f"{v:,}") for k, v in ing["counts"].items()),  # type: ignore[union-attr]
        _row("ingestion: load + validate annotations", f"{ing['load_s']:.2f} s"),
        _row("ingestion: ids, cascade, tags", f"{ing['assemble_s']:.2f} s"),
        _row("ingestion: write to DuckDB", f"{ing['write_s']:.2f} s"),
        _row("ingestion: total (in process)", f"{ing['total_s']:.2f} s", "<= 15 s"),
        _row("ingestion: subprocess wall incl. start-up", f"{ing['process_wall_s']:.2f} s"),
        _row("ingestion: CPU time (user + sys)", f"{ing['cpu_s']:.2f} s"),
        _row(
            "ingestion: peak RSS (child, getrusage)",
            f"{ing['children_peak_rss_mb']:.0f} MB",
            "<= 2048 MB",
        ),
        _row("DuckDB file", f"{ing['db_mb']:.0f} MB"),
    ]
    if not args.skip_images:
        img = run_images(src)
        lines += [
            _row("images: files validated (2 workers)", f"{img['files']:,}"),
            _row("images: wall", f"{img['wall_s']:.2f} s"),
            _row("images: throughput", f"{img['images_per_s']:.0f} img/s", ">= 400/s"),
            _row(
                "images: truncated caught / planted",
                f"{img['truncated_caught']} / {img['truncated_planted']}",
            ),
            _row(
                "images: valid / duplicate-bytes rejects",
                f"{img['valid']} / {img['duplicate_bytes']}",
            ),
        ]
    load = os.getloadavg()[0]
    lines.append(_row("machine load average (1 min) at the end", f"{load:.1f}"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
