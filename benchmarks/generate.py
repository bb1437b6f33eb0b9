"""Throughput of template generation (core/generate.py) and region rendering (core/regions.py).

Run: ``.venv/bin/python benchmarks/generate.py [--images 100000] [--render 600]``. The frames are
coco-mini's 80 images and their annotations repeated under new ids up to ``--images`` images,
built in memory straight from the COCO JSON (absent tags ranked by popularity, which is all the
generator reads of them). Template generation is timed in one process and split over every
core (the default at this size). Targets: >= 20,000 conversations/s without rendering, >= 100 region
images/s rendered with the process pool. Prints one table; rows of ``benchmarks/llm_bench.py``
are appended when that file exists.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import polars as pl

from vlit_assets.core.generated.regions import RenderJob, render_regions
from vlit_assets.core.generated.templates.run import TemplateConfig, generate_templates

SOURCE = "bench"
REPO = Path(__file__).resolve().parents[1]


def coco_mini_dir() -> Path:
    path = Path(os.environ.get("VLIT_COCO_MINI", REPO.parent / "shared" / "coco-mini"))
    if not path.exists():
        raise SystemExit(f"coco-mini not found at {path}: set VLIT_COCO_MINI")
    return path


def scaled_frames(root: Path, n_images: int) -> tuple[pl.DataFrame, ...]:
    """raw__images/captions/objects/categories/tags for n_images copies of coco-mini."""
    inst = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    caps = json.loads((root / "annotations" / "captions_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    base = inst["images"]
    copies = -(-n_images // len(base))
    by_image_caps: dict[int, list[dict]] = {}
    for a in caps["annotations"]:
        by_image_caps.setdefault(a["image_id"], []).append(a)
    by_image_objs: dict[int, list[dict]] = {}
    for a in inst["annotations"]:
        by_image_objs.setdefault(a["image_id"], []).append(a)
    popularity = [
        c for c, _ in Counter(a["category_id"] for a in inst["annotations"]).most_common()
    ]
    popularity += [c for c in names if c not in popularity]

    img_rows, cap_rows, obj_rows, tag_rows = [], [], [], []
    for copy in range(copies):
        for im in base:
            if len(img_rows) == n_images:
                break
            image_id = f"img_{copy}_{im['id']}"
            img_rows.append(
                (image_id, SOURCE, f"train2017/{im['file_name']}", im["width"], im["height"])
            )
            for a in by_image_caps.get(im["id"], []):
                cap_rows.append((f"cap_{copy}_{a['id']}", SOURCE, image_id, a["caption"]))
            present = set()
            for a in by_image_objs.get(im["id"], []):
                x, y, w, h = a["bbox"]
                present.add(a["category_id"])
                obj_rows.append(
                    (f"obj_{copy}_{a['id']}", SOURCE, image_id, a["category_id"],
                     names[a["category_id"]], float(x), float(y), float(w), float(h),
                     bool(a["iscrowd"]))
                )  # fmt: skip
            absent = [c for c in popularity if c not in present][:10]
            tag_rows.append(
                (image_id, SOURCE,
                 [{"category_id": c, "name": names[c], "score": 1.0 / (k + 1)}
                  for k, c in enumerate(absent)])
            )  # fmt: skip
    images = pl.DataFrame(
        img_rows, schema=["image_id", "source", "file_name", "width", "height"], orient="row"
    )
    captions = pl.DataFrame(
        cap_rows, schema=["caption_id", "source", "image_id", "caption"], orient="row"
    )
    objects = pl.DataFrame(
        obj_rows,
        schema=["object_id", "source", "image_id", "category_id", "category_name",
                "bbox_x", "bbox_y", "bbox_w", "bbox_h", "iscrowd"],
        orient="row",
    )  # fmt: skip
    categories = pl.DataFrame(
        {"source": SOURCE, "category_id": list(names), "name": list(names.values())}
    )
    tags = pl.DataFrame(tag_rows, schema=["image_id", "source", "absent"], orient="row")
    return images, captions, objects, categories, tags


def bench_templates(root: Path, n_images: int, regions_dir: Path) -> list[tuple]:
    t0 = time.perf_counter()
    frames = scaled_frames(root, n_images)
    build_s = time.perf_counter() - t0
    rows = [("build frames in memory", f"{n_images:,} images", f"{build_s:.2f}", "")]
    for label, workers in (("1 process", 1), (f"{os.cpu_count()} processes", None)):
        config = TemplateConfig(render_regions=False, workers=workers)
        t0, c0 = time.perf_counter(), time.process_time()
        df = generate_templates(
            *frames, source=SOURCE, image_root=root, regions_dir=regions_dir, config=config
        )
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append(
            (f"template generation, no rendering, {label}", f"{df.height:,} conversations",
             f"{wall:.2f}", f"{df.height / wall:,.0f} conversations/s (target >= 20,000)")
        )  # fmt: skip
        if workers == 1:
            # Other work on a shared machine stretches wall time; CPU time shows the code's own.
            rows.append(
                ("  same, per CPU-second", "", f"{cpu:.2f} cpu",
                 f"{df.height / cpu:,.0f} conversations/cpu-s")
            )  # fmt: skip
    for itype, n in sorted(df.group_by("instruction_type").len().iter_rows()):
        rows.append((f"  of which {itype}", f"{n:,} conversations", "", ""))
    return rows


def bench_render(root: Path, n_jobs: int, out_dir: Path) -> list[tuple]:
    frames = scaled_frames(root, 80)
    images, objects = frames[0], frames[2]
    big = objects.filter(~pl.col("iscrowd")).join(
        images.select("image_id", "file_name"), on="image_id"
    )
    boxes = big.select("file_name", "bbox_x", "bbox_y", "bbox_w", "bbox_h").rows()
    jobs = [
        RenderJob(str(root / boxes[i % len(boxes)][0]), tuple(boxes[i % len(boxes)][1:]),
                  str(out_dir / f"r_{i}.jpg"))
        for i in range(n_jobs)
    ]  # fmt: skip
    rows = []
    for label, workers in (("region rendering, 1 process", 1), ("region rendering, pool", None)):
        for p in out_dir.glob("r_*"):
            p.unlink()
        t0 = time.perf_counter()
        results = render_regions(jobs, workers=workers)
        wall = time.perf_counter() - t0
        done = sum(r.status == "rendered" for r in results)
        n_workers = 1 if workers == 1 else os.cpu_count()
        target = " (target >= 100)" if workers is None else ""
        rows.append(
            (f"{label} ({n_workers} workers)", f"{done:,} images", f"{wall:.2f}",
             f"{done / wall:,.0f} images/s{target}")
        )  # fmt: skip
    t0 = time.perf_counter()
    results = render_regions(jobs, workers=None)
    wall = time.perf_counter() - t0
    skipped = sum(r.status == "skipped" for r in results)
    rows.append(
        ("region rendering, re-run (stamps current)", f"{skipped:,} skipped", f"{wall:.2f}",
         f"{skipped / wall:,.0f} images/s")
    )  # fmt: skip
    return rows


def llm_rows() -> list[tuple]:
    path = REPO / "benchmarks" / "llm_bench.py"
    if not path.exists():
        return [("llm bench", "benchmarks/llm_bench.py not present", "", "")]
    spec = importlib.util.spec_from_file_location("llm_bench", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = []
    for row in module.run_llm_bench():
        cells = list(row.values()) if isinstance(row, dict) else list(row)
        out.append(tuple(str(c) for c in (cells + ["", "", "", ""])[:4]))
    return out


def print_table(rows: list[tuple]) -> None:
    header = ("stage", "work", "wall s", "rate")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--render", type=int, default=600)
    parser.add_argument("--no-llm", action="store_true")
    args = parser.parse_args()
    root = coco_mini_dir()
    with tempfile.TemporaryDirectory(prefix="vlit_bench_") as tmp:
        rows = bench_templates(root, args.images, Path(tmp) / "regions")
        rows += bench_render(root, args.render, Path(tmp) / "render")
    if not args.no_llm:
        rows += llm_rows()
    print_table(rows)


if __name__ == "__main__":
    main()
