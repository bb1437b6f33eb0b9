"""Image checks, template writing and region rendering as shards give the local rows exactly.

``InlineMap(parallel=3)`` cuts as a three-slot cluster would and runs the shards here (fast);
the slow tests run the same shards as Ray tasks on the session's two-node cluster.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from vlit_assets.core.generated.regions import RenderJob, render_regions
from vlit_assets.core.generated.templates.run import TemplateConfig, generate_templates
from vlit_assets.core.raw.annotations import find_coco_files
from vlit_assets.core.raw.collect import CollectResult, collect_source
from vlit_assets.core.raw.images import ImageJob, inspect_images
from vlit_assets.core.raw.imports import collect_import
from vlit_assets.core.shards import InlineMap, ShardMap
from vlit_assets.distributed.ray_map import connect
from vlit_assets_tests.corrupt import _png_bomb

TABLES = ("images", "captions", "objects", "categories", "tags", "rejects")
# Over Pillow's own refusal (2 x 89,478,485 pixels) but under the limit the checks are given:
# only a process that raised Pillow's limit (pool worker, shard) reads past the header.
BIG = (19_000, 10_000)
MAX_PIXELS = 200_000_000


def _steps(mapper: ShardMap) -> dict[str, int]:
    out: dict[str, int] = {}
    for run in mapper.runs:
        out[run.step] = out.get(run.step, 0) + 1
    return out


def _declared(path: Path) -> tuple[int, int]:
    if path.name == "big.png":
        return BIG
    try:
        with Image.open(path) as im:
            return im.size
    except OSError:
        return (1, 1)


def _with_bad_files(coco_mini: Path, tmp_path: Path) -> list[ImageJob]:
    """Every coco-mini image, plus a missing, an empty, a truncated, an oversized one and one
    outside the root (85 jobs)."""
    root = tmp_path / "images"
    shutil.copytree(find_coco_files(coco_mini).image_dir, root)
    first = sorted(root.iterdir())[0]
    (root / "empty.jpg").write_bytes(b"")
    (root / "cut.jpg").write_bytes(first.read_bytes()[:2000])
    (root / "big.png").write_bytes(_png_bomb(*BIG))
    jobs = [ImageJob(str(root), p.name, *_declared(p)) for p in sorted(root.iterdir())]
    jobs.insert(7, ImageJob(str(root), "gone.jpg", 10, 10))
    jobs.append(ImageJob(str(root), "../escape.jpg", 10, 10))
    return jobs


def test_sharded_image_checks_equal_the_pool_in_job_order(coco_mini: Path, tmp_path: Path) -> None:
    jobs = _with_bad_files(coco_mini, tmp_path)
    limit_before = Image.MAX_IMAGE_PIXELS
    mapper = InlineMap(parallel=3)
    sharded = inspect_images(jobs, max_pixels=MAX_PIXELS, mapper=mapper)
    pooled = inspect_images(jobs, max_pixels=MAX_PIXELS, workers=2)
    assert sharded == pooled
    assert [r.file_name for r in sharded] == [j.file_name for j in jobs]
    reasons = {r.file_name: r.reason for r in sharded}
    assert reasons["gone.jpg"] == "image_missing" and reasons["empty.jpg"] == "image_empty"
    assert reasons["cut.jpg"] == "image_truncated"
    assert reasons["../escape.jpg"] == "image_path_escapes_root"
    # The shard raised Pillow's limit as the pool's initializer does, so Pillow read past
    # the header; this process alone stops there. And the shard put the limit back.
    serial = {r.file_name: r for r in inspect_images(jobs, max_pixels=MAX_PIXELS, workers=1)}
    big = next(r for r in sharded if r.file_name == "big.png")
    assert big.width == BIG[0] and serial["big.png"].width is None
    assert limit_before == Image.MAX_IMAGE_PIXELS
    assert _steps(mapper) == {"raw/images": 5}  # 85 jobs, at least 16 per shard
    assert sum(r.items for r in mapper.runs) == len(jobs)


def _frames_equal(one: CollectResult, two: CollectResult) -> None:
    for name in TABLES:
        assert getattr(one, name).equals(getattr(two, name)), name


def test_sharded_collection_of_coco_mini_equals_local(coco_mini: Path) -> None:
    mapper = InlineMap(parallel=3)
    _frames_equal(
        collect_source("coco-mini", coco_mini, mapper=mapper),
        collect_source("coco-mini", coco_mini),
    )
    assert _steps(mapper) == {"raw/images": 5}  # 80 images, at least 16 per shard


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory: pytest.TempPathFactory, make_bench) -> Path:
    """A 600-conversation LLaVA bench folder (an import source) over 60 drawn images."""
    return make_bench(tmp_path_factory.mktemp("bench600"), 600, 60)


def test_sharded_import_image_checks_equal_local(small_bench: Path, tmp_path: Path) -> None:
    mapper = InlineMap(parallel=3)
    sharded = collect_import("bench", small_bench, image_cache=tmp_path / "a", mapper=mapper)
    local = collect_import("bench", small_bench, image_cache=tmp_path / "b")
    for name in ("conversations", "images", "rejects"):
        assert getattr(sharded, name).equals(getattr(local, name)), name
    assert sharded.images.height == 60
    assert _steps(mapper) == {"raw/images": 3}


def _templates(coco_mini: Path, image_root: Path, out: Path, mapper: ShardMap | None):
    result = collect_source("coco-mini", coco_mini)
    frames = (result.images, result.captions, result.objects, result.categories, result.tags)
    config = TemplateConfig(workers=1, render_workers=1)
    return generate_templates(*frames, source="coco-mini", image_root=image_root,
                              regions_dir=out, config=config, mapper=mapper)  # fmt: skip


def _broken_copy(coco_mini: Path, tmp_path: Path) -> tuple[Path, str]:
    """The photos with the last one made unreadable: its region rows fail to render, and after
    the shards are joined the failure must sit on that image's rows."""
    root = tmp_path / "images"
    shutil.copytree(find_coco_files(coco_mini).image_dir, root)
    last = sorted(root.iterdir())[-1]
    last.write_bytes(b"not an image")
    return root, last.name


def _same_rows(one: pl.DataFrame, two: pl.DataFrame, one_dir: Path, two_dir: Path) -> None:
    assert one.drop("image_path").equals(two.drop("image_path"))
    moved = one["image_path"].str.replace(str(one_dir), str(two_dir), literal=True)
    assert moved.to_list() == two["image_path"].to_list()


def test_sharded_templates_and_regions_equal_local(coco_mini: Path, tmp_path: Path) -> None:
    root, broken = _broken_copy(coco_mini, tmp_path)
    mapper = InlineMap(parallel=3)
    sharded = _templates(coco_mini, root, tmp_path / "sharded", mapper)
    local = _templates(coco_mini, root, tmp_path / "local", None)
    _same_rows(sharded, local, tmp_path / "sharded", tmp_path / "local")
    failed = sharded.filter(pl.col("drop_reason") == "region_render_failed")
    assert failed.height > 0 and set(failed["drop_detail"].str.contains(broken)) == {True}
    assert _steps(mapper) == {"generated/templates": 5, "generated/regions": 6}
    regions = sharded.filter(
        (pl.col("instruction_type") == "region") & pl.col("drop_reason").is_null()
    )
    assert all(Path(p).is_file() for p in regions["image_path"])


def test_sharded_rendering_keeps_job_order_and_skips_current_files(tmp_path: Path) -> None:
    photo = tmp_path / "p.jpg"
    Image.effect_noise((96, 64), 40).convert("RGB").save(photo)
    jobs = [
        RenderJob(str(photo), (2.0 + i, 3.0, 30.0, 20.0), str(tmp_path / "r" / f"p_{i}.jpg"))
        for i in range(50)
    ]
    jobs.insert(20, RenderJob(str(tmp_path / "gone.jpg"), (1, 1, 5, 5), str(tmp_path / "g.jpg")))
    sharded = render_regions(jobs, mapper=InlineMap(parallel=3), chunksize=8)
    assert [r.out_path for r in sharded] == [j.out_path for j in jobs]
    assert [r.status for r in sharded] == ["rendered"] * 20 + ["failed"] + ["rendered"] * 30
    assert {r.status for r in render_regions(jobs[:20], workers=1)} == {"skipped"}


@pytest.mark.slow
def test_ray_shards_of_raw_and_generated_equal_local_on_two_nodes(
    ray_cluster, coco_mini: Path, tmp_path: Path
) -> None:
    root, _ = _broken_copy(coco_mini, tmp_path)
    jobs = _with_bad_files(coco_mini, tmp_path / "checks")
    with connect(ray_cluster.address) as mapper:
        reports = inspect_images(jobs, max_pixels=MAX_PIXELS, mapper=mapper)
        collected = collect_source("coco-mini", coco_mini, mapper=mapper)
        rows = _templates(coco_mini, root, tmp_path / "ray", mapper)
    assert reports == inspect_images(jobs, max_pixels=MAX_PIXELS, workers=2)
    _frames_equal(collected, collect_source("coco-mini", coco_mini))
    local = _templates(coco_mini, root, tmp_path / "local", None)
    _same_rows(rows, local, tmp_path / "ray", tmp_path / "local")
    assert set(_steps(mapper)) == {"raw/images", "generated/templates", "generated/regions"}
    assert len({r.node for r in mapper.runs}) == 2
    assert all(r.attempts == 1 for r in mapper.runs)
