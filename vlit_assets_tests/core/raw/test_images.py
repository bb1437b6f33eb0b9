"""Image file checks: every reject reason, the facts of a good file, and the pool's ordering."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from vlit_assets.core.raw import images
from vlit_assets.core.raw.images import ImageJob, inspect_image, inspect_images, resolve_inside
from vlit_assets_tests.corrupt import _png_bomb

LIMIT = 89_478_485


def _jpeg(size=(64, 48), *, progressive=False, exif_orientation: int | None = None) -> bytes:
    im = Image.effect_noise(size, 60).convert("RGB")
    extra = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        extra["exif"] = exif.tobytes()
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90, progressive=progressive, **extra)
    return out.getvalue()


def _encode(im: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt)
    return out.getvalue()


def _check(root: Path, name: str, data: bytes | None, size=(64, 48), **kw) -> images.ImageReport:
    root.mkdir(parents=True, exist_ok=True)
    if data is not None:
        (root / name).write_bytes(data)
    return inspect_image(ImageJob(str(root), name, *size), kw.get("max_pixels", LIMIT))


def test_good_jpeg_reports_its_facts(tmp_path):
    data = _jpeg((64, 48))
    report = _check(tmp_path, "a.jpg", data)
    assert report.ok, report
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.bytes == len(data)
    assert (report.format, report.mode) == ("JPEG", "RGB")
    assert (report.width, report.height) == (64, 48)
    assert (report.oriented_width, report.oriented_height) == (64, 48)


@pytest.mark.parametrize(("orientation", "swapped"), [(1, False), (3, False), (6, True), (8, True)])
def test_exif_orientation_5_to_8_swaps_the_oriented_size(tmp_path, orientation, swapped):
    report = _check(tmp_path, "o.jpg", _jpeg((64, 48), exif_orientation=orientation))
    assert report.ok
    assert (report.width, report.height) == (64, 48)
    expected = (48, 64) if swapped else (64, 48)
    assert (report.oriented_width, report.oriented_height) == expected


def test_draft_decoding_is_engaged_for_jpeg():
    """The speed-up under test: the JPEG is decoded at reduced scale, yet fully read."""
    im = Image.open(io.BytesIO(_jpeg((640, 480))))
    images._decode(im)
    assert im.size == (80, 60)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("keep", [0.95, 0.5, 0.1])
def test_truncated_jpeg_is_caught_despite_draft(tmp_path, progressive, keep):
    data = _jpeg((640, 480), progressive=progressive)
    report = _check(tmp_path, "t.jpg", data[: int(len(data) * keep)], size=(640, 480))
    assert report.reason == "image_truncated", report


def test_truncated_png_is_caught(tmp_path):
    data = _encode(Image.effect_noise((200, 200), 50), "PNG")
    report = _check(tmp_path, "t.png", data[: len(data) // 2], size=(200, 200))
    assert report.reason == "image_truncated", report


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("missing.jpg", None, "image_missing"),
        ("empty.jpg", b"", "image_empty"),
        ("text.jpg", b"hello, not an image\n" * 10, "image_undecodable"),
    ],
)
def test_missing_empty_and_undecodable(tmp_path, name, data, reason):
    assert _check(tmp_path, name, data).reason == reason


def test_a_directory_is_not_an_image(tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    assert _check(tmp_path, "dir.jpg", None).reason == "image_undecodable"


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_modes_are_unsupported(tmp_path, mode):
    data = _encode(Image.new(mode, (64, 48)), "PNG" if mode == "I;16" else "TIFF")
    report = _check(tmp_path, "deep.img", data)
    assert report.reason == "image_unsupported_mode", report
    assert mode.split(";")[0] in (report.mode or "")


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("1", "PNG"), ("CMYK", "JPEG"), ("LA", "PNG")],
)
def test_modes_that_convert_to_rgb_are_supported(tmp_path, mode, fmt):
    data = _encode(Image.effect_noise((64, 48), 50).convert(mode), fmt)
    report = _check(tmp_path, "m.img", data)
    assert report.ok, report
    assert report.mode == mode


def test_pixel_count_over_the_limit_is_a_bomb_before_decoding(tmp_path):
    report = _check(tmp_path, "big.jpg", _jpeg((64, 48)), max_pixels=64 * 48 - 1)
    assert report.reason == "image_decompression_bomb"
    assert "3072" in (report.detail or "")


def test_forged_header_of_a_gigapixel_png_is_a_bomb(tmp_path):
    report = _check(tmp_path, "bomb.png", _png_bomb(40_000, 40_000), size=(40_000, 40_000))
    assert report.reason == "image_decompression_bomb"


def test_declared_size_must_match_decoded_size(tmp_path):
    report = _check(tmp_path, "a.jpg", _jpeg((64, 48)), size=(48, 64))
    assert report.reason == "image_size_mismatch"
    assert "64x48" in (report.detail or "") and "48x64" in (report.detail or "")


def test_paths_leaving_the_root_are_refused_and_never_opened(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(_jpeg())
    (root / "link.jpg").symlink_to(outside)
    (root / "sub").mkdir()
    (root / "sub" / "ok.jpg").write_bytes(_jpeg())
    for name in ("../secret.jpg", str(outside), "link.jpg", "sub/../../secret.jpg"):
        assert resolve_inside(root, name) is None, name
        report = inspect_image(ImageJob(str(root), name, 64, 48), LIMIT)
        assert report.reason == "image_path_escapes_root", name
        assert report.sha256 is None  # nothing was read
    assert resolve_inside(root, "sub/../sub/ok.jpg") == (root / "sub" / "ok.jpg").resolve()
    assert inspect_image(ImageJob(str(root), "sub/../sub/ok.jpg", 64, 48), LIMIT).ok


def test_pool_returns_reports_in_job_order(tmp_path):
    good = _jpeg((64, 48))
    jobs = []
    for i in range(40):
        name = f"{i:03d}.jpg"
        (tmp_path / name).write_bytes(good if i % 3 else good[: len(good) // 2])
        jobs.append(ImageJob(str(tmp_path), name, 64, 48))
    pooled = inspect_images(jobs, max_pixels=LIMIT, workers=2)
    serial = inspect_images(jobs, max_pixels=LIMIT, workers=1)
    assert pooled == serial
    assert [r.file_name for r in pooled] == [j.file_name for j in jobs]
    assert [r.reason for r in pooled[:4]] == ["image_truncated", None, None, "image_truncated"]
