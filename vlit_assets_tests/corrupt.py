"""Builds a corrupted copy of a COCO-layout source with one planted fault of each reject kind.

The 80 original images and their annotations stay valid: every fault is an added record (or a
file it names), so a test can check both that each fault is rejected exactly once and that no
good record was lost. Used by the core tests and the Dagster-level raw-stage tests.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

GHOST_IMAGE_ID = 987_654_321  # declared by no images record
UNKNOWN_CATEGORY_ID = 999
_NEW_IMAGE_IDS = 9_000_000_001
_NEW_CAPTION_IDS = 9_100_000_001
_NEW_OBJECT_IDS = 9_200_000_001


@dataclass(frozen=True)
class PlantedFault:
    reason: str  # the reject reason the fault must produce
    record_id: int  # the image id (image faults) or annotation id the reject row must name
    kind: str  # image | caption | object
    note: str


def _copy_tree(src: Path, dst: Path) -> None:
    # copyfile, not copytree's copy2: the shared originals are read-only and the copy is edited.
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def _png_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels; no pixel data worth decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _image_bytes(mode: str, size: tuple[int, int], fmt: str, seed: int) -> bytes:
    im = Image.effect_noise(size, 40 + seed).convert("L")
    im = im.convert(mode) if mode != "I;16" else Image.new("I;16", size, 40_000)
    out = io.BytesIO()
    im.save(out, fmt)
    return out.getvalue()


class _Planter:
    def __init__(self, root: Path, split: str, captions: dict, instances: dict) -> None:
        self.root, self.image_dir = root, root / split
        self.captions, self.instances = captions, instances
        self.faults: list[PlantedFault] = []
        self._ids = {
            "image": _NEW_IMAGE_IDS,
            "caption": _NEW_CAPTION_IDS,
            "object": _NEW_OBJECT_IDS,
        }

    def new_id(self, kind: str) -> int:
        self._ids[kind] += 1
        return self._ids[kind]

    def expect(self, reason: str, record_id: int, kind: str, note: str) -> None:
        self.faults.append(PlantedFault(reason, record_id, kind, note))

    def caption(self, image_id: int, text: object = "a photo", **extra: object) -> int:
        cid = self.new_id("caption")
        self.captions["annotations"].append(
            {"id": cid, "image_id": image_id, "caption": text, **extra}
        )
        return cid

    def box(self, image_id: int, bbox: list[float], category_id: int = 1) -> dict:
        record = {
            "id": self.new_id("object"),
            "image_id": image_id,
            "category_id": category_id,
            "bbox": bbox,
            "area": float(bbox[2] * bbox[3]),
            "iscrowd": 0,
            "segmentation": [
                [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1], bbox[0], bbox[1] + bbox[3]]
            ],
        }
        self.instances["annotations"].append(record)
        return record

    def image(
        self,
        reason: str | None,
        file_name: str,
        size: tuple[int, int],
        content: bytes | None,
        note: str,
        *,
        captioned: bool = True,
        with_object: bool = False,
        **overrides: object,
    ) -> int:
        iid = self.new_id("image")
        if content is not None:
            (self.image_dir / file_name).write_bytes(content)
        record = {"id": iid, "file_name": file_name, "width": size[0], "height": size[1]}
        self.captions["images"].append({**record, **overrides})
        if captioned:
            self.caption(iid)
        if with_object:
            self.box(iid, [1.0, 1.0, 4.0, 4.0])
        if reason:
            self.expect(reason, iid, "image", note)
        return iid


def _plant_image_faults(p: _Planter, dst: Path) -> None:
    originals = sorted(p.captions["images"], key=lambda im: im["id"])
    first, second = originals[0], originals[1]
    first_bytes = (p.image_dir / first["file_name"]).read_bytes()
    first_size = (first["width"], first["height"])
    p.image("image_missing", "missing.jpg", (640, 480), None, "no such file", with_object=True)
    p.image("image_empty", "empty.jpg", (640, 480), b"", "zero bytes")
    p.image("image_undecodable", "garbage.jpg", (640, 480), b"not an image\n" * 64, "text bytes")
    p.image(
        "image_truncated",
        "truncated.jpg",
        first_size,
        first_bytes[: len(first_bytes) // 2],
        "first half of a real JPEG",
    )
    p.image(
        "image_decompression_bomb",
        "bomb.png",
        (40_000, 40_000),
        _png_bomb(40_000, 40_000),
        "PNG header claiming 1.6 gigapixels",
    )
    p.image(
        "image_unsupported_mode",
        "sixteen.png",
        (64, 48),
        _image_bytes("I;16", (64, 48), "PNG", 0),
        "16-bit grayscale PNG",
    )
    p.image(
        "image_duplicate_bytes",
        "copy_of_first.jpg",
        first_size,
        first_bytes,
        f"byte copy of image {first['id']} under a higher id",
    )
    (dst / "outside.jpg").write_bytes((p.image_dir / second["file_name"]).read_bytes())
    second_size = (second["width"], second["height"])
    p.image("image_path_escapes_root", "../outside.jpg", second_size, None, "relative ../ path")
    p.image("image_path_escapes_root", str(dst / "outside.jpg"), second_size, None, "absolute path")
    (p.image_dir / "link.jpg").symlink_to(dst / "outside.jpg")
    p.image("image_path_escapes_root", "link.jpg", second_size, None, "symlink to outside the root")
    p.image(
        "image_size_mismatch",
        "resized.jpg",
        (50, 30),
        _image_bytes("RGB", (40, 30), "JPEG", 1),
        "a 40x30 JPEG declared as 50x30",
    )
    dup = {**first, "file_name": "duplicate_id.jpg"}
    p.captions["images"].append(dup)
    p.expect("image_duplicate_id", first["id"], "image", "second images record with its id")
    p.image(
        "image_without_captions",
        "uncaptioned.jpg",
        (40, 30),
        _image_bytes("RGB", (40, 30), "JPEG", 2),
        "a valid image with no caption",
        captioned=False,
        with_object=True,
    )
    p.image(
        "annotation_bad_field",
        "bad_width.jpg",
        (640, 480),
        None,
        "width is a string",
        with_object=True,
        width="640",
    )


def _plant_annotation_faults(p: _Planter) -> None:
    first = min(p.captions["images"], key=lambda im: im["id"])
    fid, width = first["id"], first["width"]
    cid = p.caption(GHOST_IMAGE_ID, "a caption of an image nobody declared")
    p.expect("annotation_unknown_image", cid, "caption", "caption of an undeclared image")
    existing = next(a for a in p.captions["annotations"] if a["image_id"] == fid)
    p.captions["annotations"].append({**existing, "caption": "a second caption with its id"})
    p.expect("annotation_duplicate_id", existing["id"], "caption", "repeated caption id")
    p.expect("caption_empty", p.caption(fid, "   "), "caption", "whitespace caption")
    p.expect("annotation_bad_field", p.caption(fid, 42), "caption", "caption is a number")

    rec = p.box(fid, [10.0, 10.0, 20.0, 20.0], category_id=UNKNOWN_CATEGORY_ID)
    p.expect("annotation_unknown_category", rec["id"], "object", "undeclared category")
    rec = p.box(fid, [width - 5.0, 10.0, 50.0, 20.0])
    p.expect("bbox_outside_image", rec["id"], "object", "box 45 px past the right edge")
    rec = p.box(fid, [10.0, 10.0, 0.0, 5.0])
    p.expect("bbox_nonpositive", rec["id"], "object", "zero-width box")
    existing = next(a for a in p.instances["annotations"] if a["image_id"] == fid)
    p.instances["annotations"].append({**existing, "bbox": [0.0, 0.0, 1.0, 1.0]})
    p.expect("annotation_duplicate_id", existing["id"], "object", "repeated object id")
    rec = p.box(fid, [10.0, 10.0, 20.0, 20.0])
    del rec["bbox"]
    p.expect("annotation_bad_field", rec["id"], "object", "object without bbox")
    rec = p.box(GHOST_IMAGE_ID, [10.0, 10.0, 20.0, 20.0])
    p.expect("annotation_unknown_image", rec["id"], "object", "object of an undeclared image")
    declared = p.instances["categories"][0]
    p.instances["categories"].append({**declared, "name": f"second {declared['name']}"})
    p.expect("category_duplicate_id", declared["id"], "category", "category id declared twice")


def build_corrupted_coco(src: Path, dst: Path) -> list[PlantedFault]:
    """Copy the COCO source ``src`` to ``dst`` and plant one fault of each reject kind.

    Returns the planted faults: each must appear exactly once in the rejects, with its reason
    and record id. Captions and objects of a faulty image are expected as
    ``parent_image_rejected`` rejects and are not listed.
    """
    src, dst = Path(src), Path(dst)
    found = sorted((src / "annotations").glob("captions_*.json"))
    if len(found) != 1:
        raise ValueError(f"{src}: expected one captions_<split>.json, found {found}")
    split = found[0].stem.removeprefix("captions_")
    _copy_tree(src, dst)
    cap_path = dst / "annotations" / f"captions_{split}.json"
    ins_path = dst / "annotations" / f"instances_{split}.json"
    captions = json.loads(cap_path.read_text())
    instances = json.loads(ins_path.read_text())
    taken = {a["id"] for a in captions["annotations"]} | {a["id"] for a in instances["annotations"]}
    if any(_NEW_IMAGE_IDS <= i < _NEW_OBJECT_IDS + 1_000_000 for i in taken):
        raise ValueError(f"{src}: annotation ids overlap the ids this builder plants")
    planter = _Planter(dst, split, captions, instances)
    _plant_image_faults(planter, dst)
    _plant_annotation_faults(planter)
    cap_path.write_text(json.dumps(captions))
    ins_path.write_text(json.dumps(instances))
    return planter.faults
