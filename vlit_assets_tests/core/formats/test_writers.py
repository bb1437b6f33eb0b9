"""Writing LLaVA and paper-format files: round trips, the paper's examples, refused rows."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from vlit_assets.core.formats.files import load_instruction_file
from vlit_assets.core.formats.llava import from_llava
from vlit_assets.core.formats.paper import from_paper
from vlit_assets.core.formats.records import CONVERSATION_SCHEMA
from vlit_assets.core.formats.writers import to_llava, to_paper
from vlit_assets.core.ids import stable_id
from vlit_assets.core.vocab import IMAGE_TOKEN, UNLABELLED
from vlit_assets_tests.core.formats import llava_record

TURNS = {
    "global": [
        ("human", "Describe the scene."),
        ("gpt", "A red bus drives past two people on the sidewalk."),
        ("human", "Why might the bus be there?"),
        ("gpt", "It is probably on its regular route through the city."),
    ],
    "negative": [
        ("human", "Is there a dog in the picture?"),
        ("gpt", "No, there is no dog; only a bus and two people."),
    ],
    "region": [
        ("human", "What is inside the red box?"),
        ("gpt", "A red bus."),
    ],
}
IMAGES = {
    "global": "train/000000123456.jpg",
    "negative": "train/000000123456.jpg",
    "region": "regions/000000123456_0.jpg",
}


def _turns(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"from": who, "value": text} for who, text in pairs]


def _internal_rows() -> pl.DataFrame:
    """Rows as the generation stage writes them (generator="template")."""
    rows = []
    for itype, pairs in TURNS.items():
        row = dict.fromkeys(CONVERSATION_SCHEMA)
        row |= {
            "conversation_id": stable_id("conv", "sample", IMAGES[itype], itype, "template"),
            "source": "sample",
            "image_id": stable_id("img", "sample", 123456),
            "instruction_type": itype,
            "generator": "template",
            "variant": 0,
            "turns": _turns(pairs),
            "image_path": IMAGES[itype],
            "source_annotation_ids": ["cap_1", "obj_2"],
        }
        rows.append(row)
    return pl.DataFrame(rows, schema=CONVERSATION_SCHEMA)


def _by_type(df: pl.DataFrame) -> dict[str, dict]:
    return {row["instruction_type"]: row for row in df.iter_rows(named=True)}


# ---------------------------------------------------------------- round trips


def test_llava_round_trip_keeps_turns_type_and_image() -> None:
    rows = _internal_rows()
    records = to_llava(rows)
    assert [r["conversations"][0]["value"].startswith(f"{IMAGE_TOKEN}\n") for r in records] == [
        True
    ] * 3
    assert all(IMAGE_TOKEN not in t["value"] for r in records for t in r["conversations"][1:])
    assert [r["id"] for r in records] == rows["conversation_id"].to_list()

    back = from_llava(json.loads(json.dumps(records)), source="reimport", file="out.json")
    assert back.rejects.height == 0
    before, after = _by_type(rows), _by_type(back.rows)
    assert set(after) == set(TURNS)
    for itype in TURNS:
        assert after[itype]["turns"] == before[itype]["turns"]
        assert after[itype]["image_path"] == before[itype]["image_path"]
    assert set(back.rows["generator"]) == {"import"}


def test_paper_round_trip_keeps_turns_type_and_image() -> None:
    rows = _internal_rows()
    doc = to_paper(rows, image_source="sample", construction_time="2024-01")
    assert {a["instruction_type"]: a["img_ids"] for a in doc["annotations"]} == {
        "global": "000000123456",
        "negative": "000000123456",
        "region": "000000123456_0",
    }
    assert {t["from"] for a in doc["annotations"] for t in a["conversations"]} == {"User", "AI"}

    back = from_paper(json.loads(json.dumps(doc)), source="reimport", file="paper.json")
    assert back.rejects.height == 0
    before, after = _by_type(rows), _by_type(back.rows)
    for itype in TURNS:
        assert after[itype]["turns"] == before[itype]["turns"]
        assert after[itype]["image_path"] == before[itype]["image_path"]
    # re-export of the imported rows writes the same document
    assert to_paper(back.rows, image_source="sample", construction_time="2024-01") == doc


def test_reimport_of_an_export_keeps_conversation_ids() -> None:
    first = from_llava([llava_record(), llava_record(id="r2")], source="s", file="a.json")
    again = from_llava(to_llava(first.rows), source="s", file="b.json")
    assert again.rows["conversation_id"].to_list() == first.rows["conversation_id"].to_list()
    assert [r["id"] for r in to_llava(again.rows)] == ["r1", "r2"]


def test_llava_export_makes_images_relative_to_the_root(tmp_path: Path) -> None:
    rows = _internal_rows().with_columns(
        image_path=pl.lit(str(tmp_path / "imgs" / "train" / "x.jpg"))
    )
    assert {r["image"] for r in to_llava(rows, image_root=tmp_path / "imgs")} == {"train/x.jpg"}
    with pytest.raises(ValueError, match="is not under"):
        to_llava(rows, image_root=tmp_path / "elsewhere")


# ---------------------------------------------------------------- the paper's examples


def test_paper_examples_import_and_reexport_unchanged(paper_examples: Path) -> None:
    path = paper_examples / "examples.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    result = load_instruction_file(path, source="paper")
    assert result.rejects.height == 0
    assert result.rows["instruction_type"].to_list() == ["global", "negative", "region"]
    assert result.rows["turns"].list.len().to_list() == [8, 18, 12]
    for row, ann in zip(result.rows.iter_rows(named=True), doc["annotations"], strict=True):
        assert (paper_examples / "images" / row["image_path"]).exists()
        assert [t["value"] for t in row["turns"]] == [t["value"] for t in ann["conversations"]]
    region = _by_type(result.rows)["region"]
    # the region conversation is about the original image, not the boxed copy
    assert region["image_id"] == stable_id("img", "paper", "COCO_train2014_000000247884.jpg")
    again = to_paper(
        result.rows,
        image_source=doc["image_source"],
        construction_time=doc["construction_time"],
    )
    assert again == doc


def test_paper_examples_convert_to_llava_and_back(paper_examples: Path) -> None:
    result = load_instruction_file(paper_examples / "examples.json", source="paper")
    back = from_llava(to_llava(result.rows), source="paper", file="llava.json")
    assert back.rows["instruction_type"].to_list() == ["global", "negative", "region"]
    assert back.rows["turns"].to_list() == result.rows["turns"].to_list()


# ---------------------------------------------------------------- exporters refuse bad rows


def test_exporters_refuse_rows_they_cannot_write_faithfully() -> None:
    rows = _internal_rows()
    dropped = rows.with_columns(drop_reason=pl.lit("llm_refusal"))
    with pytest.raises(ValueError, match="dropped"):
        to_llava(dropped)
    untyped = rows.with_columns(instruction_type=pl.lit(UNLABELLED))
    with pytest.raises(ValueError, match="paper format"):
        to_paper(untyped, image_source="x", construction_time="y")
    one_turn = rows.head(1).with_columns(
        turns=pl.Series([[{"from": "human", "value": "Q?"}]], dtype=CONVERSATION_SCHEMA["turns"])
    )
    with pytest.raises(ValueError, match="conversations\\[0\\]"):
        to_llava(one_turn)
