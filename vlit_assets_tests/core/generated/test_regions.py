"""Region rendering: the red box sits on the annotated edges, originals stay untouched, skips."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from PIL import Image

from vlit_assets.core.generated.regions import (
    RenderJob,
    line_width_for,
    render_job,
    render_region,
    render_regions,
)


def _photo(path: Path, size: tuple[int, int] = (320, 240), mode: str = "RGB") -> Path:
    # A smooth gradient: JPEG keeps it close to the original, so "unchanged elsewhere" is testable.
    im = Image.new("RGB", size)
    im.putdata([(x % 256, y % 256, 128) for y in range(size[1]) for x in range(size[0])])
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, "JPEG", quality=95)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_red(pixel: tuple[int, int, int]) -> bool:
    r, g, b = pixel
    return r > 190 and g < 70 and b < 70


def test_line_width_scales_with_the_image() -> None:
    assert line_width_for(640, 480) == 4
    assert line_width_for(1280, 960) == 8
    assert line_width_for(100, 80) == 2


def test_box_is_drawn_on_the_edges_and_nowhere_else(tmp_path: Path) -> None:
    src = _photo(tmp_path / "a.jpg")
    before = _sha(src)
    out = tmp_path / "out" / "a_0.jpg"
    bbox = (60.0, 50.0, 120.0, 90.0)
    render_region(src, bbox, out)
    assert _sha(src) == before
    rendered, original = Image.open(out).convert("RGB"), Image.open(src).convert("RGB")
    assert rendered.size == original.size
    x0, y0, x1, y1 = 60, 50, 180, 140
    edge_points = [(x, y0) for x in range(x0, x1, 7)] + [(x, y1) for x in range(x0, x1, 7)]
    edge_points += [(x0, y) for y in range(y0, y1, 7)] + [(x1, y) for y in range(y0, y1, 7)]
    assert all(_is_red(rendered.getpixel(p)) for p in edge_points)
    far = [(x, y) for x in range(0, 320, 9) for y in range(0, 240, 9)]
    far = [(x, y) for x, y in far if not (x0 - 12 <= x <= x1 + 12 and y0 - 12 <= y <= y1 + 12)]
    diffs = [
        sum(abs(a - b) for a, b in zip(rendered.getpixel(p), original.getpixel(p), strict=True))
        for p in far
    ]
    assert max(diffs) < 30 and sum(diffs) / len(diffs) < 6
    inside = (120, 95)
    assert not _is_red(rendered.getpixel(inside))


def test_box_touching_the_border_is_clamped(tmp_path: Path) -> None:
    src = _photo(tmp_path / "a.jpg")
    out = tmp_path / "a_0.jpg"
    render_region(src, (0.0, 0.0, 320.0, 240.0), out)
    rendered = Image.open(out).convert("RGB")
    assert _is_red(rendered.getpixel((0, 120))) and _is_red(rendered.getpixel((319, 120)))
    assert _is_red(rendered.getpixel((160, 0))) and _is_red(rendered.getpixel((160, 239)))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_non_rgb_images_are_converted(tmp_path: Path, mode: str) -> None:
    src = _photo(tmp_path / "a.jpg", mode=mode)
    out = tmp_path / "a_0.jpg"
    render_region(src, (10.0, 10.0, 100.0, 100.0), out)
    with Image.open(out) as im:
        assert im.mode == "RGB"
        assert _is_red(im.getpixel((10, 50)))


def test_stored_pixels_are_drawn_and_exif_is_kept(tmp_path: Path) -> None:
    src = tmp_path / "rotated.jpg"
    im = Image.new("RGB", (200, 100), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(src, "JPEG", quality=95, exif=exif.tobytes())
    out = tmp_path / "rotated_0.jpg"
    render_region(src, (20.0, 10.0, 60.0, 40.0), out)
    with Image.open(out) as rendered:
        assert rendered.size == (200, 100)  # not transposed
        assert rendered.getexif().get(0x0112) == 6
        assert _is_red(rendered.getpixel((20, 30)))


def test_refuses_to_overwrite_the_original(tmp_path: Path) -> None:
    src = _photo(tmp_path / "a.jpg")
    before = _sha(src)
    with pytest.raises(ValueError, match="original"):
        render_region(src, (1.0, 1.0, 10.0, 10.0), src)
    assert _sha(src) == before


def test_rerun_skips_until_source_box_or_output_change(tmp_path: Path) -> None:
    src = _photo(tmp_path / "a.jpg")
    job = RenderJob(str(src), (10.0, 10.0, 50.0, 50.0), str(tmp_path / "r" / "a_0.jpg"))
    assert render_job(job).status == "rendered"
    assert render_job(job).status == "skipped"
    moved = RenderJob(job.image_path, (20.0, 10.0, 50.0, 50.0), job.out_path)
    assert render_job(moved).status == "rendered"
    assert render_job(moved).status == "skipped"
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert render_job(moved).status == "rendered"
    Path(job.out_path).write_bytes(b"tampered")
    assert render_job(moved).status == "rendered"
    with Image.open(job.out_path) as im:
        assert im.size == (320, 240)


def test_failures_are_returned_not_raised(tmp_path: Path) -> None:
    missing = RenderJob(str(tmp_path / "nope.jpg"), (1.0, 1.0, 5.0, 5.0), str(tmp_path / "x.jpg"))
    result = render_job(missing)
    assert result.status == "failed" and "nope.jpg" in (result.error or "")
    assert not (tmp_path / "x.jpg").exists()


def test_process_pool_renders_every_job_in_order(tmp_path: Path) -> None:
    srcs = [_photo(tmp_path / f"p{i}.jpg", size=(96, 64)) for i in range(3)]
    jobs = [
        RenderJob(str(srcs[i % 3]), (5.0 + i, 5.0, 30.0, 20.0), str(tmp_path / "r" / f"p_{i}.jpg"))
        for i in range(40)
    ]
    jobs.append(
        RenderJob(str(tmp_path / "gone.jpg"), (1.0, 1.0, 5.0, 5.0), str(tmp_path / "g.jpg"))
    )
    results = render_regions(jobs, workers=2, chunksize=4)
    assert [r.out_path for r in results] == [j.out_path for j in jobs]
    assert [r.status for r in results] == ["rendered"] * 40 + ["failed"]
    again = render_regions(jobs[:40], workers=2, chunksize=4)
    assert {r.status for r in again} == {"skipped"}


def test_choose_regions_takes_one_box_per_category_first_then_the_next_largest():
    from vlit_assets.core.generated.regions import choose_regions

    objects = [
        ("o1", "dog", 0.30, False),
        ("o2", "dog", 0.25, False),
        ("o3", "cat", 0.10, False),
        ("o4", "person", 0.50, True),  # crowd: never
        ("o5", "cup", 0.01, False),  # under the area floor
        ("o6", "cat", 0.10, False),  # ties with o3; the lower id wins
    ]
    assert choose_regions(objects, 0.02, 2) == [0, 2]
    assert choose_regions(objects, 0.02, 4) == [0, 2, 1, 5]
    assert choose_regions(objects, 0.02, 0) == []
    assert choose_regions(objects, 0.6, 3) == []


def test_region_stems_suffix_only_images_whose_stems_collide():
    from vlit_assets.core.generated.regions import region_stems

    stems = region_stems([("i1", "a/x.jpg"), ("i2", "b/x.png"), ("i3", "c/y.jpg")])
    assert stems == {"i1": "x-i1", "i2": "x-i2", "i3": "y"}
