"""Data collection on real COCO (coco-mini), a corrupted copy of it, and small made-up sources."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from vlit_assets.core.ids import stable_id
from vlit_assets.core.raw import annotations, coco_json, collect, rejects
from vlit_assets.core.raw.annotations import find_coco_files, load_annotations
from vlit_assets.core.raw.coco_json import SourceFormatError
from vlit_assets.core.raw.collect import CollectConfig, collect_source
from vlit_assets.core.raw.tags import balanced_sample, derive_tags
from vlit_assets.core.schemas import (
    RAW_CAPTIONS,
    RAW_CATEGORIES,
    RAW_IMAGES,
    RAW_OBJECTS,
    RAW_REJECTS,
    RAW_TAGS,
)
from vlit_assets.core.vocab import REJECT_REASONS
from vlit_assets_tests.corrupt import build_corrupted_coco

TABLES = {
    "images": RAW_IMAGES,
    "captions": RAW_CAPTIONS,
    "objects": RAW_OBJECTS,
    "categories": RAW_CATEGORIES,
    "tags": RAW_TAGS,
    "rejects": RAW_REJECTS,
}
SERIAL = CollectConfig(workers=1)


@pytest.fixture(scope="module")
def mini_result(coco_mini):
    return collect_source("coco-mini", coco_mini, run_id="run-1")


def _source_json(root: Path) -> tuple[dict, dict]:
    ann = root / "annotations"
    return (
        json.loads((ann / "captions_train2017.json").read_text()),
        json.loads((ann / "instances_train2017.json").read_text()),
    )


# --- a small made-up source ------------------------------------------------------------------


def _write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.effect_noise(size, 30 + seed).convert("RGB").save(path, "JPEG")


def _tiny_source(root: Path, *, instances: bool = True, indent: int | None = None) -> Path:
    """Three 32x24 images with two captions each; image 1 has a cat and a dog."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 32, "height": 24} for i in (1, 2, 3)]
    for i in (1, 2, 3):
        _write_image(root / "train" / f"{i}.jpg", (32, 24), i)
    captions = {
        "images": images,
        "annotations": [
            {"id": 10 * i + j, "image_id": i, "caption": f"image {i}, caption {j}"}
            for i in (1, 2, 3)
            for j in (1, 2)
        ],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/captions_train.json").write_text(json.dumps(captions, indent=indent))
    if instances:
        doc = {
            "images": images,
            "annotations": [
                _box(100, 1, 1, [1, 1, 10, 10]),
                _box(101, 1, 2, [5, 5, 10, 10]),
                _box(102, 2, 1, [0, 0, 32, 24]),
            ],
            "categories": [
                {"id": 1, "name": "cat", "supercategory": "animal"},
                {"id": 2, "name": "dog", "supercategory": "animal"},
                {"id": 3, "name": "bird", "supercategory": "animal"},
            ],
        }
        (root / "annotations/instances_train.json").write_text(json.dumps(doc, indent=indent))
    return root


def _box(ann_id: int, image_id: int, category_id: int, bbox: list[float]) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": abs(bbox[2] * bbox[3]),
        "iscrowd": 0,
        "segmentation": [[bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3], 1, 2]],
    }


def _edit(root: Path, name: str, change, indent: int | None = None) -> None:
    path = root / "annotations" / name
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=indent))


# --- coco-mini -------------------------------------------------------------------------------


def test_coco_mini_is_collected_whole_and_counts_equal_the_source_json(coco_mini, mini_result):
    captions, instances = _source_json(coco_mini)
    assert mini_result.counts() == {
        "images": len(captions["images"]) == 80 and 80,
        "captions": len(captions["annotations"]) == 400 and 400,
        "objects": len(instances["annotations"]) == 739 and 739,
        "categories": len(instances["categories"]) == 80 and 80,
        "tags": 80,
        "rejects": 0,
    }
    assert mini_result.rejects_by_reason() == {}
    assert set(mini_result.images["coco_image_id"]) == {im["id"] for im in captions["images"]}
    assert set(mini_result.objects["coco_annotation_id"]) == {
        a["id"] for a in instances["annotations"]
    }


def test_frames_have_exactly_the_schema_columns_and_provenance(mini_result):
    for name, table in TABLES.items():
        frame = getattr(mini_result, name)
        assert frame.columns == list(table.columns), name
        if frame.height:
            assert frame["source"].unique().to_list() == ["coco-mini"], name
            assert frame["run_id"].unique().to_list() == ["run-1"], name
        key = frame.select(table.key)
        assert key.n_unique() == frame.height, name


def test_image_facts_match_the_files(coco_mini, mini_result):
    row = mini_result.images.filter(pl.col("coco_image_id") == 790).to_dicts()[0]
    path = coco_mini / "train2017" / row["file_name"]
    assert row["bytes"] == path.stat().st_size
    with Image.open(path) as im:
        assert (row["width"], row["height"], row["format"], row["mode"]) == (
            *im.size,
            im.format,
            im.mode,
        )


def test_object_fields_are_those_of_the_source(coco_mini, mini_result):
    _, instances = _source_json(coco_mini)
    by_id = {a["id"]: a for a in instances["annotations"]}
    names = {c["id"]: c["name"] for c in instances["categories"]}
    for row in mini_result.objects.head(50).iter_rows(named=True):
        src = by_id[row["coco_annotation_id"]]
        assert [row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"]] == src["bbox"]
        assert row["category_name"] == names[src["category_id"]]
        assert row["iscrowd"] == bool(src["iscrowd"])
        assert row["image_id"] == stable_id("img", "coco-mini", src["image_id"])


def test_ids_are_stable_across_runs_and_equal_stable_id(coco_mini, mini_result):
    again = collect_source("coco-mini", coco_mini, SERIAL, run_id="run-2")
    for name, column in (("images", "image_id"), ("captions", "caption_id")):
        first = getattr(mini_result, name).sort(column)[column].to_list()
        assert first == getattr(again, name).sort(column)[column].to_list()
    assert mini_result.objects.sort("object_id")["object_id"].to_list() == (
        again.objects.sort("object_id")["object_id"].to_list()
    )
    cap = mini_result.captions.row(0, named=True)
    assert cap["caption_id"] == stable_id("cap", "coco-mini", cap["coco_caption_id"])
    obj = mini_result.objects.row(0, named=True)
    assert obj["object_id"] == stable_id("obj", "coco-mini", obj["coco_annotation_id"])
    img = mini_result.images.row(0, named=True)
    assert img["image_id"] == stable_id("img", "coco-mini", img["coco_image_id"])


def test_bulk_ids_equal_stable_id():
    values = [0, 7, 123456789012, -3, "x"]
    assert rejects.source_ids("cap", "src", values) == [stable_id("cap", "src", v) for v in values]


# --- tags and sampling -----------------------------------------------------------------------


def test_present_tags_count_the_objects_and_absent_never_intersects(mini_result):
    counts = Counter(
        zip(mini_result.objects["image_id"], mini_result.objects["category_id"], strict=True)
    )
    declared = set(mini_result.categories["category_id"])
    for row in mini_result.tags.iter_rows(named=True):
        present = {t["category_id"]: t["count"] for t in row["present"]}
        expected = {c: n for (img, c), n in counts.items() if img == row["image_id"]}
        assert present == expected
        absent = [t["category_id"] for t in row["absent"]]
        assert len(absent) == min(8, len(declared) - len(present))
        assert not set(absent) & set(present)
        assert set(absent) <= declared
        scores = [t["score"] for t in row["absent"]]
        assert scores == sorted(scores, reverse=True)
    strategies = set(mini_result.tags["absent_strategy"])
    assert "co-occurrence" in strategies
    assert strategies <= {"co-occurrence", "co-occurrence+popularity", "popularity"}


def _tag_inputs(sets: list[set[int]], n_categories: int = 4):
    images = pl.DataFrame(
        {"image_id": [f"i{n}" for n in range(len(sets))], "source": "s", "run_id": "r"}
    )
    rows = [(f"i{n}", c) for n, cats in enumerate(sets) for c in sorted(cats)]
    objects = pl.DataFrame(
        rows, schema={"image_id": pl.String, "category_id": pl.Int32}, orient="row"
    )
    categories = pl.DataFrame(
        {"category_id": list(range(1, n_categories + 1)), "name": list("ABCDEFGH"[:n_categories])}
    )
    return images, objects, categories


def test_absent_ranks_co_occurring_categories_first_then_popularity():
    # A co-occurs with B in 3 images and with C in 1; D is the most popular category but is
    # never seen with A. For an image with only A: B, then C, then D by popularity.
    sets = [{1, 2}] * 3 + [{1, 3}] + [{4}] * 5 + [{1}]
    tags = derive_tags(*_tag_inputs(sets), k=3)
    only_a = tags.filter(pl.col("image_id") == "i9").row(0, named=True)
    assert [t["name"] for t in only_a["absent"]] == ["B", "C", "D"]
    assert only_a["absent_strategy"] == "co-occurrence+popularity"
    assert [t["score"] for t in only_a["absent"]] == pytest.approx([0.6, 0.2, 0.0])
    only_d = tags.filter(pl.col("image_id") == "i4").row(0, named=True)
    assert only_d["absent_strategy"] == "popularity"  # D co-occurs with nothing
    assert [t["name"] for t in only_d["absent"]] == ["A", "B", "C"]  # by image count: 5, 3, 1


def test_image_without_objects_gets_popularity_and_empty_present():
    tags = derive_tags(*_tag_inputs([{1, 2}, {2}, set()]), k=2)
    empty = tags.filter(pl.col("image_id") == "i2").row(0, named=True)
    assert empty["present"] == []
    assert empty["absent_strategy"] == "popularity"
    assert [t["name"] for t in empty["absent"]] == ["B", "A"]
    assert [t["score"] for t in empty["absent"]] == pytest.approx([2 / 3, 1 / 3])


def test_no_declared_categories_gives_no_absent_tags():
    images, objects, _ = _tag_inputs([{1}, set()])
    no_categories = pl.DataFrame(schema={"category_id": pl.Int32, "name": pl.String})
    tags = derive_tags(images, objects.clear(), no_categories, k=5)
    assert tags["absent_strategy"].to_list() == ["none", "none"]
    assert tags["absent"].to_list() == [[], []]


def test_balanced_sample_caps_every_category_and_is_deterministic(mini_result):
    cap = 5
    sample = balanced_sample(mini_result.tags, per_category_cap=cap, seed=7)
    assert sample.columns == ["image_id"]
    assert sample.height > 0 and sample["image_id"].is_unique().all()
    chosen = mini_result.tags.filter(pl.col("image_id").is_in(sample["image_id"].implode()))
    per_category = Counter(t["category_id"] for tags in chosen["present"] for t in tags)
    assert max(per_category.values()) <= cap
    again = balanced_sample(mini_result.tags, per_category_cap=cap, seed=7)
    assert again["image_id"].to_list() == sample["image_id"].to_list()
    shuffled = balanced_sample(mini_result.tags.reverse(), per_category_cap=cap, seed=7)
    assert shuffled["image_id"].to_list() == sample["image_id"].to_list()


def test_balanced_sample_keeps_rare_categories():
    # Category 2 is rare and always appears with the common category 1: rarest-first
    # gives it its images before category 1 is full.
    sets = [{1, 2}] * 2 + [{1}] * 20
    images, objects, categories = _tag_inputs(sets)
    tags = derive_tags(images, objects, categories, k=1)
    sample = balanced_sample(tags, per_category_cap=3, seed=1)
    assert {"i0", "i1"} <= set(sample["image_id"])
    assert sample.height == 3


# --- the corrupted copy ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def corrupted(coco_mini, tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt") / "coco"
    planted = build_corrupted_coco(coco_mini, root)
    return root, planted, collect_source("corrupt", root, run_id="r")


def test_every_planted_fault_is_rejected_exactly_once_with_its_reason(corrupted):
    _, planted, result = corrupted
    rejects = list(zip(result.rejects["reason"], result.rejects["record_id"], strict=True))
    for fault in planted:
        hits = [r for r in rejects if r == (fault.reason, str(fault.record_id))]
        assert len(hits) == 1, (fault, hits)
    planted_reasons = {f.reason for f in planted}
    assert set(collect.RAW_REJECT_REASONS) <= set(REJECT_REASONS)
    assert planted_reasons == set(collect.RAW_REJECT_REASONS) - {"parent_image_rejected"}
    unplanted = Counter(r for r, _ in rejects) - Counter(f.reason for f in planted)
    assert set(unplanted) == {"parent_image_rejected"}
    assert result.rejects["reject_id"].is_unique().all()
    assert set(result.rejects["reason"]) <= set(collect.RAW_REJECT_REASONS)
    assert result.rejects.filter(pl.col("detail").str.len_chars() < 10).height == 0


def test_annotations_of_rejected_images_cascade_one_row_each(corrupted):
    root, planted, result = corrupted
    captions, instances = _source_json(root)
    bad_images = {f.record_id for f in planted if f.kind == "image"}
    bad_images.discard(min(im["id"] for im in captions["images"]))  # duplicate id: first kept
    # a byte copy's annotations move to the kept image (next test), so none cascades
    bad_images -= {f.record_id for f in planted if f.reason == "image_duplicate_bytes"}
    cascaded = set(result.rejects.filter(pl.col("reason") == "parent_image_rejected")["record_id"])
    expected = {
        str(a["id"])
        for doc in (captions, instances)
        for a in doc["annotations"]
        if a["image_id"] in bad_images
    }
    assert cascaded == expected
    assert len(expected) >= len(bad_images)


def test_a_byte_copy_is_rejected_but_its_captions_and_objects_move_to_the_kept_image(
    tmp_path: Path,
) -> None:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    photo = io.BytesIO()
    Image.effect_noise((64, 48), 3).convert("RGB").save(photo, "JPEG")
    for name in ("000000000001.jpg", "000000000002.jpg"):
        (root / "train2017" / name).write_bytes(photo.getvalue())
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in (1, 2)]
    captions = [
        {"id": 11, "image_id": 1, "caption": "A grey square."},
        {"id": 12, "image_id": 2, "caption": "Static on an old television."},
    ]
    objects = [
        {"id": 21, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
    ]
    categories = [{"id": 1, "name": "tv", "supercategory": "electronic"}]
    (root / "annotations" / "captions_train2017.json").write_text(
        json.dumps({"images": images, "annotations": captions})
    )
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": objects, "categories": categories})
    )
    result = collect_source("s", root, CollectConfig(workers=1))
    (kept,) = result.images["image_id"].to_list()
    assert result.images["coco_image_id"].to_list() == [1]
    assert sorted(result.captions["caption"]) == ["A grey square.", "Static on an old television."]
    assert set(result.captions["image_id"]) == {kept}
    assert result.objects.select("coco_annotation_id", "image_id").rows() == [(21, kept)]
    (reject,) = result.rejects.to_dicts()
    assert (reject["record_id"], reject["reason"]) == ("2", "image_duplicate_bytes")
    assert "now belong to image 1" in reject["detail"]


def test_every_good_record_of_the_corrupted_copy_is_kept(coco_mini, corrupted):
    root, planted, result = corrupted
    captions, instances = _source_json(coco_mini)
    # the byte copy's own caption moves onto the image it copies; nothing else is added
    copies = {f.record_id for f in planted if f.reason == "image_duplicate_bytes"}
    moved = [a for a in _source_json(root)[0]["annotations"] if a["image_id"] in copies]
    assert len(moved) == 1
    assert set(result.images["coco_image_id"]) == {im["id"] for im in captions["images"]}
    assert set(result.captions["coco_caption_id"]) == {
        a["id"] for a in captions["annotations"] + moved
    }
    assert set(result.objects["coco_annotation_id"]) == {a["id"] for a in instances["annotations"]}
    assert result.counts()["captions"] == 401 and result.counts()["objects"] == 739
    # The first record of a duplicated id wins: the kept caption is the original text.
    originals = {a["id"]: a["caption"] for a in captions["annotations"] + moved}
    for row in result.captions.iter_rows(named=True):
        assert row["caption"] == originals[row["coco_caption_id"]]


def test_escaping_paths_are_never_opened(corrupted):
    _, planted, result = corrupted
    escapes = {str(f.record_id) for f in planted if f.reason == "image_path_escapes_root"}
    assert len(escapes) == 3
    rows = result.rejects.filter(pl.col("record_id").is_in(list(escapes)))
    assert rows["detail"].str.contains("not opened").all()


# --- not COCO-shaped -------------------------------------------------------------------------

GOOD_CAPTIONS = {"images": [], "annotations": []}


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("this is not json", "not valid JSON"),
        ("", "empty file"),
        ('{"images": [], "annotations": [', "not valid JSON"),
        ('{"images": [], "annotations": []} trailing', "not valid JSON"),
        ("[]", "a list"),
        ('[{"images": [], "annotations": []}]', "a list"),
        ('"just a string"', "a string"),
        (json.dumps({"annotations": []}), "'images'"),
        (json.dumps({"images": []}), "'annotations'"),
        (json.dumps({"images": [], "annotations": {}}), "'annotations' is an object"),
        (json.dumps({"images": "x.jpg", "annotations": []}), "'images' is a string"),
        (json.dumps({"images": None, "annotations": []}), "'images' is null"),
        (json.dumps({"images": [], "annotations": [1, 2]}), "annotations[0] is not an object"),
        (json.dumps({"images": [], "annotations": [[1]]}), "annotations[0] is a list"),
        ('{"images": [], "annotations": [{"id": 1} {"id": 2}]}', "comma"),
        ('{"images": [], "annotations": [{"id": 1, "caption": "x",}]}', "annotations[0]"),
    ],
)
def test_a_file_that_is_not_coco_shaped_raises_naming_file_and_key(tmp_path, content, key):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "train").mkdir()
    (tmp_path / "annotations/captions_train.json").write_text(content)
    with pytest.raises(SourceFormatError) as raised:
        load_annotations("bad", find_coco_files(tmp_path))
    message = str(raised.value)
    assert "captions_train.json" in message
    assert key in message


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda d: d.pop("categories"), "'categories'"),
        (lambda d: d.update(categories={"1": "cat"}), "'categories' is an object"),
        (lambda d: d.update(annotations=5), "'annotations' is a number"),
    ],
)
def test_instances_file_shape_errors_name_the_instances_file(tmp_path, change, key):
    root = _tiny_source(tmp_path / "src")
    _edit(root, "instances_train.json", change)
    with pytest.raises(SourceFormatError, match=key) as raised:
        collect_source("bad", root, SERIAL)
    assert "instances_train.json" in str(raised.value)


# --- record-level faults on a small source ---------------------------------------------------


def _reasons(result) -> dict[tuple[str, str], str]:
    return {(r["reason"], r["record_id"]): r["field"] for r in result.rejects.iter_rows(named=True)}


def test_tiny_source_collects_cleanly_pretty_printed_or_not(tmp_path):
    for indent in (None, 2):
        root = _tiny_source(tmp_path / f"src{indent}", indent=indent)
        result = collect_source("tiny", root, SERIAL)
        assert result.counts() == {
            "images": 3,
            "captions": 6,
            "objects": 3,
            "categories": 3,
            "tags": 3,
            "rejects": 0,
        }


def test_scan_path_reads_coco_mini_exactly_as_the_whole_file_path(coco_mini, monkeypatch):
    files = find_coco_files(coco_mini)
    whole = load_annotations("m", files)
    monkeypatch.setattr(coco_json, "_read_whole", lambda path, arrays: None)
    monkeypatch.setattr(coco_json, "_GROUP_BYTES", 50_000)  # many groups, each streamed
    scanned = load_annotations("m", files)
    for name in ("images", "captions", "objects", "categories"):
        assert scanned.__dict__[name].equals(whole.__dict__[name]), name
    assert scanned.rejects.height == whole.rejects.height == 0


def test_mistyped_fields_are_rejected_per_record_and_the_rest_proceeds(tmp_path, monkeypatch):
    """A type error sends a file down the record-by-record path; strings full of brackets,
    escaped quotes and newlines must not confuse its scanner."""
    slow_calls = []
    real_slow = coco_json._read_slow
    monkeypatch.setattr(
        coco_json, "_read_slow", lambda *a: slow_calls.append(a[1]) or real_slow(*a)
    )
    root = _tiny_source(tmp_path / "src")

    def captions(doc):
        doc["annotations"] += [
            {"id": 40, "image_id": 1, "caption": 'tricky "[{" \\"}]\\\\ \n caption'},
            {"id": "41", "image_id": 1, "caption": "id is a string"},
            {"id": 42, "image_id": 1.5, "caption": "image id is a float"},
            {"id": 43, "image_id": 1},
            {"id": 44, "image_id": 1, "caption": ["a", "list"]},
        ]
        doc["images"].append({"id": 9, "file_name": "9.jpg", "width": 2**40, "height": 24})

    def instances(doc):
        doc["annotations"] += [
            {**_box(200, 1, 1, [1, 1, 2, 2]), "bbox": [1, 1, 2]},
            {**_box(201, 1, 1, [1, 1, 2, 2]), "bbox": [1, "1", 2, 2]},
            {**_box(202, 1, 1, [1, 1, 2, 2]), "iscrowd": 2},
            {**_box(203, 1, 1, [1, 1, 2, 2]), "iscrowd": True},
            {**_box(204, 1, 1, [1, 1, 2, 2]), "area": None},
            {**_box(205, 1, 1, [1, 1, 2, 2]), "category_id": 99999999999999999999},
        ]
        doc["categories"] += [{"id": 4, "name": 4}, {"id": 2**40, "name": "huge id"}]

    _edit(root, "captions_train.json", captions, indent=1)
    _edit(root, "instances_train.json", instances, indent=1)
    result = collect_source("tiny", root, SERIAL)
    assert _reasons(result) == {
        ("annotation_bad_field", "annotations[7]"): "annotations.id",
        ("annotation_bad_field", "42"): "annotations.image_id",
        ("annotation_bad_field", "43"): "annotations.caption",
        ("annotation_bad_field", "44"): "annotations.caption",
        ("annotation_bad_field", "200"): "annotations.bbox",
        ("annotation_bad_field", "201"): "annotations.bbox",
        ("annotation_bad_field", "202"): "annotations.iscrowd",
        ("annotation_bad_field", "204"): "annotations.area",
        ("annotation_bad_field", "205"): "annotations.category_id",
        ("annotation_bad_field", "4"): "categories.name",
        ("annotation_bad_field", str(2**40)): "categories.id",
        ("annotation_bad_field", "9"): "images.width",
    }
    tricky = result.captions.filter(pl.col("coco_caption_id") == 40)["caption"].item()
    assert tricky == 'tricky "[{" \\"}]\\\\ \n caption'
    crowd = result.objects.filter(pl.col("coco_annotation_id") == 203)["iscrowd"].item()
    assert crowd is True
    assert result.counts()["captions"] == 7 and result.counts()["objects"] == 4
    detail = result.rejects.filter(pl.col("record_id") == "42")["detail"].item()
    assert "image_id" in detail and "integer" in detail
    assert sorted(slow_calls) == ["annotations", "annotations", "categories"]


def test_duplicated_ids_give_one_reject_per_id_and_keep_the_first(tmp_path):
    root = _tiny_source(tmp_path / "src")

    def captions(doc):
        doc["images"] += [dict(doc["images"][0], file_name="other.jpg")] * 2
        doc["annotations"] += [{"id": 11, "image_id": 2, "caption": "again"}] * 2

    _edit(root, "captions_train.json", captions)
    result = collect_source("tiny", root, SERIAL)
    assert _reasons(result) == {
        ("image_duplicate_id", "1"): "images.id",
        ("annotation_duplicate_id", "11"): "annotations.id",
    }
    detail = result.rejects.filter(pl.col("reason") == "image_duplicate_id")["detail"].item()
    assert "images[3], images[4]" in detail and "images[0]" in detail
    assert result.images.filter(pl.col("coco_image_id") == 1)["file_name"].item() == "1.jpg"
    kept = result.captions.filter(pl.col("coco_caption_id") == 11)
    assert kept["caption"].item() == "image 1, caption 1"


def test_box_tolerance_lets_float_rounding_pass(tmp_path):
    root = _tiny_source(tmp_path / "src")
    tol = annotations.BOX_TOLERANCE_PX

    def instances(doc):
        doc["annotations"] += [
            _box(300, 3, 1, [0, 0, 32 + tol / 2, 24]),
            _box(301, 3, 1, [-tol / 2, 0, 10, 10]),
            _box(302, 3, 1, [0, 0, 32 + 2 * tol, 24]),
            _box(303, 3, 1, [0, -2 * tol, 10, 10]),
            _box(304, 3, 1, [0, 0, 10, -1]),
        ]

    _edit(root, "instances_train.json", instances)
    result = collect_source("tiny", root, SERIAL)
    assert _reasons(result) == {
        ("bbox_outside_image", "302"): "annotations.bbox",
        ("bbox_outside_image", "303"): "annotations.bbox",
        ("bbox_nonpositive", "304"): "annotations.bbox",
    }
    assert {300, 301} <= set(result.objects["coco_annotation_id"])


def test_without_instances_file_there_are_no_objects(tmp_path):
    root = _tiny_source(tmp_path / "src", instances=False)
    files = find_coco_files(root)
    assert files.instances is None and files.split == "train"
    result = collect_source("tiny", root, SERIAL)
    assert result.counts()["objects"] == 0 and result.counts()["categories"] == 0
    assert result.counts()["images"] == 3 and result.counts()["rejects"] == 0
    assert set(result.tags["absent_strategy"]) == {"none"}


def test_images_only_in_the_instances_file_have_no_captions(tmp_path):
    root = _tiny_source(tmp_path / "src")

    def instances(doc):
        doc["images"].append({"id": 7, "file_name": "7.jpg", "width": 32, "height": 24})
        doc["annotations"].append(_box(400, 7, 1, [1, 1, 5, 5]))

    _edit(root, "instances_train.json", instances)
    result = collect_source("tiny", root, SERIAL)
    assert _reasons(result) == {
        ("image_without_captions", "7"): "images.id",
        ("parent_image_rejected", "400"): "annotations.image_id",
    }


def test_split_detection(tmp_path):
    root = _tiny_source(tmp_path / "src")
    (root / "annotations/captions_val.json").write_text(json.dumps(GOOD_CAPTIONS))
    with pytest.raises(FileNotFoundError, match="exactly one"):
        find_coco_files(root)
    assert find_coco_files(root, "train").captions.name == "captions_train.json"
    with pytest.raises(FileNotFoundError, match="val"):
        find_coco_files(root, "val")  # no val/ image directory
