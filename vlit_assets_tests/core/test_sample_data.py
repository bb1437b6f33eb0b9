"""The committed sample (data/sample) is valid COCO, true to its pictures, and reproducible."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from vlit_assets.core.text.categories import COCO_CATEGORIES, COCO_ID_BY_NAME
from vlit_assets_tests.conftest import REPO, SAMPLE_DIR

SCRIPT = REPO / "scripts" / "make_sample_data.py"
ANNOTATIONS = SAMPLE_DIR / "annotations"
NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}


def _load(name: str) -> dict:
    return json.loads((ANNOTATIONS / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def instances() -> dict:
    return _load("instances_train.json")


@pytest.fixture(scope="module")
def captions() -> dict:
    return _load("captions_train.json")


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_sample_data", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve the script's string annotations through sys.modules
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _objects_by_image(instances: dict) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in instances["images"]}
    for ann in instances["annotations"]:
        by_image[ann["image_id"]].append(ann)
    return by_image


def _captions_by_image(captions: dict) -> dict[int, list[str]]:
    by_image: dict[int, list[str]] = {}
    for ann in captions["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    return by_image


def test_both_files_are_coco_with_the_same_images(instances: dict, captions: dict) -> None:
    assert {"info", "licenses", "images", "annotations", "categories"} <= set(instances)
    assert {"info", "licenses", "images", "annotations"} <= set(captions)
    assert instances["images"] == captions["images"]
    ids = [im["id"] for im in instances["images"]]
    assert len(ids) >= 20
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, int) for i in ids)
    for kind in (instances, captions):
        ann_ids = [a["id"] for a in kind["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        assert all(isinstance(i, int) for i in ann_ids)


def test_license_and_capture_metadata(instances: dict) -> None:
    (license_,) = instances["licenses"]
    assert "CC0" in license_["name"]
    assert instances["info"]["contributor"]
    for im in instances["images"]:
        assert im["license"] == license_["id"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", im["date_captured"])


def test_every_image_decodes_at_its_declared_size(instances: dict) -> None:
    for im in instances["images"]:
        path = SAMPLE_DIR / "train" / im["file_name"]
        with Image.open(path) as img:
            img.load()
            assert (img.format, img.mode) == ("JPEG", "RGB")
            assert img.size == (im["width"], im["height"])
    on_disk = {p.name for p in (SAMPLE_DIR / "train").iterdir()}
    assert on_disk == {im["file_name"] for im in instances["images"]}


def test_boxes_are_exact_and_inside_their_images(instances: dict) -> None:
    size = {im["id"]: (im["width"], im["height"]) for im in instances["images"]}
    for ann in instances["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = size[ann["image_id"]]
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height, ann
        assert ann["area"] == w * h
        assert ann["segmentation"] == [[x, y, x + w, y, x + w, y + h, x, y + h]]
        assert ann["iscrowd"] == 0


def test_categories_are_cocos_and_scenes_are_varied(instances: dict) -> None:
    declared = {c["id"] for c in instances["categories"]}
    assert [(c["id"], c["name"], c["supercategory"]) for c in instances["categories"]] == (
        COCO_CATEGORIES
    )
    assert {a["category_id"] for a in instances["annotations"]} <= declared
    per_image = _objects_by_image(instances)
    assert all(2 <= len(objs) <= 7 for objs in per_image.values())
    kinds = [len({a["category_id"] for a in objs}) for objs in per_image.values()]
    assert sum(kinds) / len(kinds) >= 2
    repeated = [
        objs
        for objs in per_image.values()
        if max(Counter(a["category_id"] for a in objs).values()) > 1
    ]
    assert len(repeated) >= len(per_image) // 3
    assert len({a["category_id"] for a in instances["annotations"]}) >= 25


def test_every_image_has_varied_captions(instances: dict, captions: dict) -> None:
    by_image = _captions_by_image(captions)
    assert set(by_image) == {im["id"] for im in instances["images"]}
    for caps in by_image.values():
        assert len(caps) >= 3
        assert len(set(caps)) == len(caps)
        assert all(c.strip() and c[0].isupper() and c.endswith(".") for c in caps)


def _name(noun: str) -> str:
    singular = {
        "people": "person",
        "buses": "bus",
        "benches": "bench",
        "knives": "knife",
        "balls": "sports ball",
        "ball": "sports ball",
        "TV": "tv",
        "table": "dining table",
        "pair of scissors": "scissors",
        "mice": "mouse",
    }
    if noun in singular:
        return singular[noun]
    return noun if noun in COCO_ID_BY_NAME else noun.removesuffix("s")


def test_counting_and_left_right_captions_are_true(instances: dict, captions: dict) -> None:
    objects = _objects_by_image(instances)
    checked = 0
    for image_id, caps in _captions_by_image(captions).items():
        counts = Counter(a["category_id"] for a in objects[image_id])
        centre = {a["category_id"]: a["bbox"][0] + a["bbox"][2] / 2 for a in objects[image_id]}
        for cap in caps:
            if m := re.match(r"There are (\w+) ([a-zA-Z ]+?) (on|in|by) ", cap):
                assert counts[COCO_ID_BY_NAME[_name(m[2])]] == NUMBERS[m[1]], cap
                checked += 1
            if m := re.match(r"There is only one ([a-zA-Z ]+?) (on|in|by) ", cap):
                assert counts[COCO_ID_BY_NAME[_name(m[1])]] == 1, cap
                checked += 1
            if m := re.match(r"The ([a-zA-Z ]+) is to the left of the ([a-zA-Z ]+)\.", cap):
                left, right = COCO_ID_BY_NAME[_name(m[1])], COCO_ID_BY_NAME[_name(m[2])]
                assert counts[left] == counts[right] == 1, cap
                assert centre[left] < centre[right], cap
                checked += 1
    assert checked >= len(objects)


def test_the_script_reproduces_the_committed_json(tmp_path: Path, script: ModuleType) -> None:
    written = script.build(tmp_path)
    for name in ("instances_train.json", "captions_train.json"):
        assert (tmp_path / "annotations" / name).read_bytes() == (ANNOTATIONS / name).read_bytes()
    assert written["images"] == len(list((tmp_path / "train").glob("*.jpg")))
    assert {p.name for p in (tmp_path / "train").iterdir()} == {
        p.name for p in (SAMPLE_DIR / "train").iterdir()
    }


def test_another_seed_draws_other_scenes(tmp_path: Path, script: ModuleType) -> None:
    script.build(tmp_path, seed=7, count=5)
    other = json.loads((tmp_path / "annotations" / "captions_train.json").read_text())
    assert len(other["images"]) == 5
    assert {c["caption"] for c in other["annotations"]} != {
        c["caption"] for c in _load("captions_train.json")["annotations"]
    }


def test_sample_stays_small() -> None:
    total = sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file())
    assert total < 2 * 1024 * 1024


def test_categories_match_real_coco(coco_mini: Path) -> None:
    doc = json.loads((coco_mini / "annotations" / "instances_train2017.json").read_text())
    assert [(c["id"], c["name"], c["supercategory"]) for c in doc["categories"]] == COCO_CATEGORIES
