"""Import sources: instruction files plus their images become conversations, images and rejects."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from vlit_assets.core.formats.files import load_instruction_file
from vlit_assets.core.formats.records import InstructionFormatError
from vlit_assets.core.ids import stable_id
from vlit_assets.core.raw.imports import (
    coco_id_from_name,
    collect_import,
    find_instruction_files,
    image_root_of,
    is_import_source,
)
from vlit_assets.core.schemas import GENERATED_CONVERSATIONS, RAW_IMAGES, RAW_REJECTS
from vlit_assets_tests.conftest import SAMPLE_DIR


def _jpeg(size: tuple[int, int] = (64, 48), seed: int = 60) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, seed).convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def _truncated_jpeg() -> bytes:
    data = _jpeg((320, 240))
    return data[: len(data) // 2]


def _llava(rid: str, image: str, answer: str = "A dog on a sofa.") -> dict:
    return {
        "id": rid,
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"},
            {"from": "gpt", "value": answer},
        ],
    }


def _paper(image: str, itype: str, img_ids: str = "1") -> dict:
    return {
        "img_ids": img_ids,
        "image": image,
        "instruction_type": itype,
        "conversations": [
            {"from": "User", "value": "What is in the box?"},
            {"from": "AI", "value": "A cat."},
        ],
    }


def _write_json(path: Path, doc: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _reasons(result) -> dict[tuple[str, str], str]:
    return {(r["record_id"], r["field"]): r["reason"] for r in result.rejects.iter_rows(named=True)}


def _schemas_hold(result) -> None:
    assert result.conversations.schema == GENERATED_CONVERSATIONS.polars_schema
    assert result.images.schema == RAW_IMAGES.polars_schema
    assert result.rejects.schema == RAW_REJECTS.polars_schema


# ---------------------------------------------------------------- the paper's examples


def test_paper_examples_import_whole_with_the_region_image(paper_examples: Path) -> None:
    result = collect_import("paper", paper_examples, workers=1, run_id="run-1")
    _schemas_hold(result)
    assert result.counts() == {"conversations": 3, "images": 3, "rejects": 0}
    assert result.rejects_by_reason() == {}
    conv = result.conversations
    turns = dict(zip(conv["instruction_type"], conv["turns"].list.len(), strict=True))
    assert turns == {"global": 8, "negative": 18, "region": 12}
    assert set(conv["generator"]) == {"import"}
    assert set(conv["run_id"]) == {"run-1"} and set(result.images["run_id"]) == {"run-1"}
    # every conversation joins its image row, and its image_path is an existing absolute file
    joined = conv.join(result.images, on="image_id", how="inner")
    assert joined.height == 3
    for path in conv["image_path"]:
        assert Path(path).is_absolute() and Path(path).is_file()
        assert Path(path).parent == (paper_examples / "images").resolve()
    region = conv.filter(pl.col("instruction_type") == "region").row(0, named=True)
    assert region["image_path"].endswith("COCO_train2014_000000247884_0.jpg")
    assert region["image_id"] == stable_id("img", "paper", "COCO_train2014_000000247884.jpg")
    # the original of the region image is not shipped: the region file stands in for it
    row = result.images.filter(pl.col("image_id") == region["image_id"]).row(0, named=True)
    assert row["file_name"] == "COCO_train2014_000000247884_0.jpg"
    assert sorted(result.images["coco_image_id"]) == [30722, 247884, 288586]
    on_disk = paper_examples / "images" / row["file_name"]
    assert row["bytes"] == on_disk.stat().st_size
    with Image.open(on_disk) as im:
        assert (row["width"], row["height"]) == im.size


def test_conversation_and_image_ids_equal_those_of_formats(paper_examples: Path) -> None:
    result = collect_import("paper", paper_examples, workers=1)
    alone = load_instruction_file(paper_examples / "examples.json", source="paper")
    assert (
        result.conversations["conversation_id"].to_list() == alone.rows["conversation_id"].to_list()
    )
    assert set(result.images["image_id"]) == set(alone.rows["image_id"])


def test_ids_are_deterministic_across_runs(paper_examples: Path) -> None:
    one = collect_import("paper", paper_examples, workers=1, run_id="a")
    two = collect_import("paper", paper_examples, workers=1, run_id="b")
    assert one.conversations.drop("run_id").equals(two.conversations.drop("run_id"))
    assert one.images.drop("run_id").equals(two.images.drop("run_id"))


# ---------------------------------------------------------------- source detection


def test_is_import_source_tells_coco_sources_from_instruction_data(
    coco_mini: Path, paper_examples: Path, tmp_path: Path
) -> None:
    assert is_import_source(paper_examples)
    assert not is_import_source(coco_mini)
    assert not is_import_source(SAMPLE_DIR)
    assert not is_import_source(tmp_path)  # empty
    assert not is_import_source(tmp_path / "nowhere")


def test_find_instruction_files_is_sorted_and_top_level_only(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.json", ".hidden.json", "notes.txt", "images/meta.json"):
        _write_json(tmp_path / name, [])
    assert [p.name for p in find_instruction_files(tmp_path)] == ["a.json", "b.jsonl"]
    assert image_root_of(tmp_path) == tmp_path / "images"


def test_find_instruction_files_names_the_root_when_there_are_none(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no data here")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        find_instruction_files(tmp_path)


def test_an_unusable_instruction_file_fails_naming_it(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"annotations": 3}', encoding="utf-8")
    with pytest.raises(InstructionFormatError, match="broken.json"):
        collect_import("s", tmp_path, workers=1)


# ---------------------------------------------------------------- bad images and records


@pytest.fixture
def faulty_source(tmp_path: Path) -> Path:
    root = tmp_path / "llava-src"
    images = root / "images"
    images.mkdir(parents=True)
    (images / "good.jpg").write_bytes(_jpeg())
    (images / "truncated.jpg").write_bytes(_truncated_jpeg())
    (images / "empty.jpg").write_bytes(b"")
    (root / "escape.jpg").write_bytes(_jpeg())  # exists, but outside the image root
    records = [
        _llava("ok1", "good.jpg"),
        _llava("ok2", "good.jpg", "Nothing but noise."),
        _llava("gone", "missing.jpg"),
        _llava("cut", "truncated.jpg"),
        _llava("zero", "empty.jpg"),
        _llava("out", "../escape.jpg"),
        {"id": "broken", "image": "good.jpg"},  # no conversations
    ]
    _write_json(root / "llava.json", records)
    return root


def test_bad_images_become_rejects_and_good_records_import(faulty_source: Path) -> None:
    result = collect_import("faulty", faulty_source, workers=1, run_id="r")
    _schemas_hold(result)
    assert sorted(
        ref[len("llava_id:") :]
        for refs in result.conversations["source_annotation_ids"]
        for ref in refs
    ) == ["ok1", "ok2"]
    assert result.images["file_name"].to_list() == ["good.jpg"]
    reasons = _reasons(result)
    assert reasons[("missing.jpg", "image")] == "image_missing"
    assert reasons[("truncated.jpg", "image")] == "image_truncated"
    assert reasons[("empty.jpg", "image")] == "image_empty"
    assert reasons[("../escape.jpg", "image")] == "image_path_escapes_root"
    assert reasons[("broken", "conversations")] == "annotation_bad_field"
    image_rejects = result.rejects.filter(
        pl.col("field") == "image", pl.col("reason") != "parent_image_rejected"
    )
    assert sorted(image_rejects["file"]) == [
        "images/../escape.jpg",
        "images/empty.jpg",
        "images/missing.jpg",
        "images/truncated.jpg",
    ]
    assert all("llava.json" in d for d in image_rejects["detail"])
    assert result.rejects_by_reason() == {
        "annotation_bad_field": 1,
        "image_empty": 1,
        "image_missing": 1,
        "image_path_escapes_root": 1,
        "image_truncated": 1,
        "parent_image_rejected": 4,
    }
    assert set(result.rejects["run_id"]) == {"r"}


def test_each_conversation_of_a_rejected_image_is_one_reject_row(faulty_source: Path) -> None:
    result = collect_import("faulty", faulty_source, workers=1)
    all_rows = load_instruction_file(faulty_source / "llava.json", source="faulty").rows
    lost = all_rows.filter(
        ~pl.col("conversation_id").is_in(result.conversations["conversation_id"].implode())
    )
    cascaded = result.rejects.filter(pl.col("reason") == "parent_image_rejected")
    assert sorted(cascaded["record_id"]) == sorted(lost["conversation_id"])
    assert set(cascaded["file"]) == {"llava.json"}
    by_id = dict(zip(lost["conversation_id"], lost["image_path"], strict=True))
    for record_id, detail in cascaded.select("record_id", "detail").iter_rows():
        assert by_id[record_id] in detail
    assert any("record gone [2]" in d for d in cascaded["detail"])
    # nothing is lost silently: every parsed record is either kept or has a reject row
    assert result.conversations.height + cascaded.height == all_rows.height


def test_jsonl_with_images_beside_it_and_an_unparseable_line(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(_jpeg())
    (tmp_path / "b.jpg").write_bytes(_jpeg(seed=20))
    lines = [json.dumps(_llava("1", "a.jpg")), "{not json", json.dumps(_llava("2", "b.jpg"))]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = collect_import("lines", tmp_path, workers=1)
    assert result.counts() == {"conversations": 2, "images": 2, "rejects": 1}
    assert result.rejects_by_reason() == {"record_unparseable": 1}
    assert result.rejects["file"].to_list() == ["data.jsonl"]
    assert sorted(Path(p).name for p in result.conversations["image_path"]) == ["a.jpg", "b.jpg"]
    assert {Path(p).parent for p in result.conversations["image_path"]} == {tmp_path.resolve()}


def test_one_image_named_by_several_files_is_checked_once(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bad.jpg").write_bytes(_truncated_jpeg())
    _write_json(tmp_path / "a.json", [_llava("1", "bad.jpg")])
    _write_json(tmp_path / "b.json", [_llava("2", "bad.jpg")])
    result = collect_import("s", tmp_path, workers=1)
    assert result.rejects_by_reason() == {"image_truncated": 1, "parent_image_rejected": 2}
    detail = result.rejects.filter(pl.col("reason") == "image_truncated")["detail"].item()
    assert "a.json, b.json" in detail


# ---------------------------------------------------------------- several files


def test_colliding_ids_across_files_stay_unique_or_are_duplicates(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(_jpeg())
    _write_json(tmp_path / "a.json", [_llava("1", "x.jpg")])
    _write_json(tmp_path / "b.json", [_llava("1", "x.jpg", "A different answer.")])
    _write_json(tmp_path / "c.json", [_llava("1", "x.jpg")])  # the very record of a.json
    formats_id = load_instruction_file(tmp_path / "a.json", source="s").rows["conversation_id"]
    assert (
        formats_id == load_instruction_file(tmp_path / "b.json", source="s").rows["conversation_id"]
    ).all()

    result = collect_import("s", tmp_path, workers=1)
    ids = result.conversations["conversation_id"].to_list()
    assert len(ids) == 2 and len(set(ids)) == 2
    # the first file keeps the formats id; the later, different record gets one from its file
    assert ids == [formats_id.item(), stable_id("conv", "s", "b.json", formats_id.item())]
    answers = [turns[1]["value"] for turns in result.conversations["turns"]]
    assert answers == ["A dog on a sofa.", "A different answer."]
    dup = result.rejects.row(0, named=True)
    assert result.rejects.height == 1
    assert (dup["file"], dup["record_id"], dup["reason"]) == (
        "c.json",
        "1 [0]",
        "conversation_duplicate_id",
    )
    assert "a.json" in dup["detail"]


def test_paper_and_llava_files_import_together(tmp_path: Path, paper_examples: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for src in (paper_examples / "images").iterdir():
        (images / src.name).write_bytes(src.read_bytes())
    (tmp_path / "examples.json").write_bytes((paper_examples / "examples.json").read_bytes())
    _write_json(tmp_path / "llava.json", [_llava("9", "COCO_train2014_000000288586.jpg")])
    result = collect_import("mixed", tmp_path, workers=1)
    assert result.counts() == {"conversations": 4, "images": 3, "rejects": 0}
    assert result.conversations.join(result.images, on="image_id").height == 4


# ---------------------------------------------------------------- region images


def test_region_original_is_checked_when_present(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "000000000001.jpg").write_bytes(_jpeg((80, 60)))
    (images / "000000000001_0.jpg").write_bytes(_jpeg((80, 60), seed=10))
    (images / "000000000002.jpg").write_bytes(_truncated_jpeg())
    (images / "000000000002_0.jpg").write_bytes(_jpeg((80, 60), seed=30))
    doc = {
        "image_source": "test",
        "construction_time": "2024-01",
        "annotations": [
            _paper("000000000001_0.jpg", "region", "000000000001_0"),
            _paper("000000000002_0.jpg", "region", "000000000002_0"),
        ],
    }
    _write_json(tmp_path / "regions.json", doc)
    result = collect_import("reg", tmp_path, workers=1)
    # the present, valid original describes the image; the region file is the conversation's
    assert result.images.select("file_name", "coco_image_id").rows() == [("000000000001.jpg", 1)]
    assert result.images["image_id"].item() == stable_id("img", "reg", "000000000001.jpg")
    assert Path(result.conversations["image_path"].item()).name == "000000000001_0.jpg"
    # a broken original rejects the region conversation built on it
    assert result.rejects_by_reason() == {"image_truncated": 1, "parent_image_rejected": 1}
    reasons = _reasons(result)
    assert reasons[("000000000002.jpg", "image")] == "image_truncated"
    cascaded = result.rejects.filter(pl.col("reason") == "parent_image_rejected").row(0, named=True)
    assert "000000000002.jpg" in cascaded["detail"]
    assert (
        "region image 000000000002_0.jpg"
        in result.rejects.filter(pl.col("reason") == "image_truncated")["detail"].item()
    )


def test_a_bad_region_file_rejects_its_conversation_only(tmp_path: Path) -> None:
    (tmp_path / "000000000003.jpg").write_bytes(_jpeg())
    (tmp_path / "000000000003_0.jpg").write_bytes(b"not an image")
    doc = {
        "image_source": "test",
        "construction_time": "2024-01",
        "annotations": [
            _paper("000000000003.jpg", "global", "000000000003"),
            _paper("000000000003_0.jpg", "region", "000000000003_0"),
        ],
    }
    _write_json(tmp_path / "p.json", doc)
    result = collect_import("reg", tmp_path, workers=1)
    assert result.conversations["instruction_type"].to_list() == ["global"]
    assert result.images["file_name"].to_list() == ["000000000003.jpg"]
    assert result.rejects_by_reason() == {"image_undecodable": 1, "parent_image_rejected": 1}


# ---------------------------------------------------------------- COCO ids from names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("COCO_train2014_000000288586.jpg", 288586),
        ("COCO_val2014_000000000042.jpg", 42),
        ("COCO_train2014_000000247884_0.jpg", 247884),
        ("000000247884_0.jpg", 247884),
        ("000000033471.jpg", 33471),
        ("coco/train2017/000000033471.jpg", 33471),
        ("x.jpg", None),
        ("img_5.jpg", None),
        ("12345.jpg", None),  # not COCO's 12-digit padding
        ("2014_000000288586.jpg", None),
        ("", None),
    ],
)
def test_coco_id_from_name(name: str, expected: int | None) -> None:
    assert coco_id_from_name(name) == expected


# ---------------------------------------------------------------- LLaVA training conventions


def _bench_like(root: Path, n_images: int = 3) -> Path:
    """The layout of ../shared/bench: JSONL naming images/<f> relative to itself, a sidecar."""
    (root / "images").mkdir(parents=True)
    for k in range(n_images):
        (root / "images" / f"img_{k:03d}.jpg").write_bytes(_jpeg(seed=k + 1))
    lines = [json.dumps(_llava(f"r{k}", f"images/img_{k % n_images:03d}.jpg")) for k in range(6)]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "data.truth.json").write_text(json.dumps({"n": 6, "counts": {}}, indent=2))
    (root / "data.kinds.tsv").write_text("id\tkind\n", encoding="utf-8")
    return root


def test_names_relative_to_the_instruction_file_resolve_as_llava_does(tmp_path: Path) -> None:
    root = _bench_like(tmp_path / "bench")
    result = collect_import("bench", root, workers=1)
    _schemas_hold(result)
    assert result.conversations.height == 6
    assert result.images.height == 3
    assert {Path(p).parent for p in result.conversations["image_path"]} == {
        (root / "images").resolve()
    }
    # the sidecar is one reject with a reason; the .tsv is no instruction file at all
    assert result.rejects.select("file", "reason").rows() == [
        ("data.truth.json", "file_not_a_dataset")
    ]


def test_images_dir_names_the_image_folder_and_confines_names(tmp_path: Path) -> None:
    root = tmp_path / "src"
    folder = tmp_path / "elsewhere" / "coco"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(_jpeg())
    (folder.parent / "outside.jpg").write_bytes(_jpeg(seed=5))
    _write_json(root / "d.json", [_llava("in", "a.jpg"), _llava("out", "../outside.jpg")])
    # without the folder nothing is found under the source
    assert collect_import("s", root, workers=1).conversations.height == 0
    result = collect_import("s", root, images_dir=folder, workers=1)
    assert result.conversations["image_path"].to_list() == [str((folder / "a.jpg").resolve())]
    assert _reasons(result)[("../outside.jpg", "image")] == "image_path_escapes_root"


def test_a_name_missing_everywhere_says_where_it_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    _write_json(tmp_path / "d.json", [_llava("r", "nowhere.jpg")])
    rejects = collect_import("s", tmp_path, workers=1).rejects
    detail = rejects.filter(pl.col("reason") == "image_missing")["detail"][0]
    assert str(tmp_path / "images") in detail and f"{tmp_path} " in detail + " "


def test_text_only_rows_are_imported_beside_image_rows(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(_jpeg())
    text_only = {
        "id": "t",
        "conversations": [
            {"from": "human", "value": "Name a prime number."},
            {"from": "gpt", "value": "Seven."},
        ],
    }
    _write_json(tmp_path / "mix.json", [_llava("v", "a.jpg"), text_only])
    result = collect_import("s", tmp_path, workers=1)
    _schemas_hold(result)
    rows = {r["source_annotation_ids"][0]: r for r in result.conversations.iter_rows(named=True)}
    assert rows["llava_id:t"]["image_id"] is None and rows["llava_id:t"]["image_path"] is None
    assert rows["llava_id:v"]["image_path"].endswith("a.jpg")
    assert result.rejects.height == 0 and result.images.height == 1


# ---------------------------------------------------------------- Hugging Face-style Parquet


def _png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((32, 24), seed).convert("RGB").save(out, "PNG")
    return out.getvalue()


def test_parquet_with_conversations_and_image_paths(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(_jpeg())
    frame = pl.DataFrame(
        {
            "id": ["p0", "p1"],
            "image": ["a.jpg", None],
            "conversations": [
                _llava("p0", "a.jpg")["conversations"],
                [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}],
            ],
        }
    )
    frame.write_parquet(tmp_path / "train.parquet")
    result = collect_import("pq", tmp_path, workers=1)
    _schemas_hold(result)
    assert result.conversations["source_annotation_ids"].to_list() == [
        ["llava_id:p0"],
        ["llava_id:p1"],
    ]
    assert result.conversations["image_path"].null_count() == 1


def test_parquet_messages_with_image_bytes_go_to_a_content_addressed_cache(
    tmp_path: Path,
) -> None:
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    good, broken = _png(1), _png(2)[:40]
    frame = pl.DataFrame(
        {
            "images": [[{"bytes": good, "path": None}], [{"bytes": broken, "path": None}]],
            "messages": [
                [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": "Q?"}],
                    },
                    {"role": "assistant", "content": [{"type": "text", "text": "A noisy square."}]},
                ],
                [
                    {"role": "user", "content": [{"type": "text", "text": "What is it?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "Noise."}]},
                ],
            ],
        }
    )
    frame.write_parquet(src / "hf.parquet")
    result = collect_import("hf", src, image_cache=cache, workers=1)
    _schemas_hold(result)
    digest = hashlib.sha256(good).hexdigest()
    stored = cache / digest[:2] / f"{digest}.png"
    assert stored.read_bytes() == good
    (row,) = result.conversations.iter_rows(named=True)
    assert row["image_path"] == str(stored.resolve())
    assert [t["value"] for t in row["turns"]] == ["Q?", "A noisy square."]
    assert result.images["sha256"].to_list() == [digest]
    reasons = set(result.rejects["reason"])
    assert "parent_image_rejected" in reasons
    assert reasons & {"image_truncated", "image_undecodable"}
    assert not list(src.rglob("*.png"))  # the source folder is never written to


def test_parquet_without_turn_columns_fails_naming_the_file(tmp_path: Path) -> None:
    pl.DataFrame({"text": ["x"]}).write_parquet(tmp_path / "t.parquet")
    with pytest.raises(InstructionFormatError, match="t.parquet: conversations"):
        collect_import("s", tmp_path, workers=1)


# ---------------------------------------------------------------- text-only rows downstream


def test_text_only_rows_get_no_image_text_score_and_keep_a_null_export_path(tmp_path) -> None:
    from vlit_assets.core.final.export import export_image_paths
    from vlit_assets.core.scored.quality import _image_text_scores

    image = tmp_path / "a.jpg"
    image.write_bytes(_jpeg())
    rows = pl.DataFrame(
        {
            "conversation_id": ["c1", "c2"],
            "source": ["s", "s"],
            "image_path": [str(image), None],
            "turns": [
                [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A dog."}],
                [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "Seven."}],
            ],
        }
    )

    class Scorer:
        seen: list = []

        def score(self, paths, texts):
            self.seen.append((paths, texts))
            return [0.25] * len(paths)

    scores = _image_text_scores(rows, Scorer())
    assert scores.to_list() == [0.25, None]
    assert Scorer.seen == [([image], ["A dog."])]
    paths, info = export_image_paths(rows, None)
    assert paths.to_list() == ["a.jpg", None]
    assert info["image_root"] == str(tmp_path)
