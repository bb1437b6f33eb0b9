"""Reading LLaVA and paper-format records and files: malformed records, hostile text, JSON Lines."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlit_assets.core import warehouse
from vlit_assets.core.formats.files import load_instruction_file
from vlit_assets.core.formats.llava import from_llava, import_llava
from vlit_assets.core.formats.paper import from_paper
from vlit_assets.core.formats.records import (
    IMPORT_REJECT_REASONS,
    Collector,
    ImportLimits,
    InstructionFormatError,
)
from vlit_assets.core.formats.writers import to_llava
from vlit_assets.core.ids import stable_id
from vlit_assets.core.vocab import IMAGE_TOKEN, REJECT_REASONS, UNLABELLED
from vlit_assets_tests.core.formats import llava_record

# ---------------------------------------------------------------- LLaVA details


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<image>\nWhat is here?", "What is here?"),
        ("What is here?\n<image>", "What is here?"),
        ("<image>What is here?", "What is here?"),
        ("Look at <image> and say what is here.", "Look at and say what is here."),
    ],
)
def test_llava_image_token_is_stripped_wherever_it_sits(value: str, expected: str) -> None:
    result = from_llava([llava_record(value)], source="s", file="f.json")
    assert result.rows["turns"][0][0]["value"] == expected


def test_untyped_llava_records_are_unlabelled_and_keep_their_id() -> None:
    result = from_llava([llava_record(id=33471)], source="s", file="f.json")
    row = result.rows.row(0, named=True)
    assert row["instruction_type"] == UNLABELLED
    assert row["conversation_id"] == stable_id(
        "conv", "s", "images/a.jpg", UNLABELLED, "import", "", "33471"
    )
    (record,) = to_llava(result.rows)
    assert record["id"] == "33471"
    assert "instruction_type" not in record


def test_typed_llava_records_keep_their_type() -> None:
    result = from_llava([llava_record(instruction_type="negative")], source="s", file="f.json")
    assert result.rows["instruction_type"].to_list() == ["negative"]
    assert to_llava(result.rows)[0]["instruction_type"] == "negative"


def test_repeated_llava_ids_import_as_distinct_conversations() -> None:
    # LLaVA-Instruct gives every conversation about one image that image's id
    records = [llava_record(), llava_record(), llava_record(id="other")]
    result = from_llava(records, source="s", file="f.json")
    assert result.rejects.height == 0
    assert result.rows["conversation_id"].n_unique() == 3
    assert [r["id"] for r in to_llava(result.rows)] == ["r1", "r1", "other"]


def test_a_rejected_record_still_counts_as_an_occurrence_of_its_id() -> None:
    broken = llava_record("no token here")
    alone = from_llava([llava_record()], source="s", file="f.json")
    after_broken = from_llava([broken, llava_record()], source="s", file="f.json")
    assert after_broken.rejects["reason"].to_list() == ["image_token_missing"]
    # the valid record is the second "r1" of its file, so its key (and id) differ from "r1" alone
    assert after_broken.rows["conversation_id"][0] == stable_id(
        "conv", "s", "images/a.jpg", UNLABELLED, "import", "", "r1#1"
    )
    assert alone.rows["conversation_id"][0] != after_broken.rows["conversation_id"][0]


def test_records_without_id_get_ids_from_their_position() -> None:
    records = [llava_record(), llava_record()]
    for r in records:
        del r["id"]
    result = from_llava(records, source="s", file="f.json")
    assert result.rows["conversation_id"].n_unique() == 2
    assert result.rows["variant"].to_list() == [0, 1]


# ---------------------------------------------------------------- malformed records

GOOD = llava_record()


def _conv(*turns: tuple[object, object]) -> list[dict]:
    return [{"from": who, "value": value} for who, value in turns]


LLAVA_BAD = {
    "not an object": ("just text", "", "annotation_bad_field"),
    "no conversations": (
        {k: v for k, v in GOOD.items() if k != "conversations"},
        "conversations",
        "annotation_bad_field",
    ),
    "conversations not a list": (
        GOOD | {"conversations": {"from": "human"}},
        "conversations",
        "annotation_bad_field",
    ),
    "empty conversations": (GOOD | {"conversations": []}, "conversations", "conversation_empty"),
    "turn not an object": (
        GOOD | {"conversations": [GOOD["conversations"][0], "A cat."]},
        "conversations[1]",
        "annotation_bad_field",
    ),
    "unknown speaker": (
        GOOD | {"conversations": _conv(("human", "<image>\nQ?"), ("assistant", "A."))},
        "conversations[1].from",
        "turn_unknown_speaker",
    ),
    "missing speaker": (
        GOOD | {"conversations": [{"from": "human", "value": "<image>\nQ?"}, {"value": "A."}]},
        "conversations[1].from",
        "turn_unknown_speaker",
    ),
    "starts with gpt": (
        GOOD | {"conversations": _conv(("gpt", "<image>\nHi."), ("human", "Q?"))},
        "conversations[0].from",
        "turns_not_alternating",
    ),
    "two user turns in a row": (
        GOOD | {"conversations": _conv(("human", "<image>\nQ?"), ("human", "Q2?"), ("gpt", "A."))},
        "conversations[1].from",
        "turns_not_alternating",
    ),
    "unanswered": (
        GOOD | {"conversations": _conv(("human", "<image>\nQ?"), ("gpt", "A."), ("human", "Q2?"))},
        "conversations[2]",
        "turn_unanswered",
    ),
    "empty answer": (
        GOOD | {"conversations": _conv(("human", "<image>\nQ?"), ("gpt", ""))},
        "conversations[1].value",
        "turn_empty",
    ),
    "only the token": (
        GOOD | {"conversations": _conv(("human", "<image>\n  "), ("gpt", "A."))},
        "conversations[0].value",
        "turn_empty",
    ),
    "value not text": (
        GOOD | {"conversations": _conv(("human", "<image>\nQ?"), ("gpt", None))},
        "conversations[1].value",
        "annotation_bad_field",
    ),
    "no image": (
        {k: v for k, v in GOOD.items() if k != "image"},
        "image",
        "annotation_bad_field",
    ),
    "image is a list": (GOOD | {"image": ["a.jpg", "b.jpg"]}, "image", "annotation_bad_field"),
    "no image token": (
        llava_record("What is here?"),
        "conversations[0].value",
        "image_token_missing",
    ),
    "two image tokens": (
        llava_record("<image>\n<image>\nQ?"),
        "conversations[0].value",
        "image_token_misplaced",
    ),
    "token in an answer": (
        GOOD | {"conversations": _conv(("human", "<image>\nQ?"), ("gpt", "<image> A."))},
        "conversations[1].value",
        "image_token_misplaced",
    ),
    "unknown type": (
        llava_record(instruction_type="detail"),
        "instruction_type",
        "instruction_type_unknown",
    ),
    "id not text": (llava_record(id={"n": 1}), "id", "annotation_bad_field"),
}


@pytest.mark.parametrize("case", list(LLAVA_BAD), ids=list(LLAVA_BAD))
def test_malformed_llava_record_is_rejected_and_the_rest_imports(case: str) -> None:
    bad, field, reason = LLAVA_BAD[case]
    records = [llava_record(id="good-0"), copy.deepcopy(bad), llava_record(id="good-2")]
    result = from_llava(records, source="s", file="mixed.json")
    assert result.rows["variant"].to_list() == [0, 2]
    assert result.rejects.height == 1
    reject = result.rejects.row(0, named=True)
    assert (reject["field"], reason) == (field, reject["reason"])
    assert reject["file"] == "mixed.json"
    assert reject["record_id"] in ("[1]", "r1")
    assert reject["detail"].startswith("mixed.json record ")
    assert reject["reason"] in REJECT_REASONS or reject["reason"] in IMPORT_REJECT_REASONS


def _paper_doc(*annotations: object) -> dict:
    return {"image_source": "x", "construction_time": "2024", "annotations": list(annotations)}


PAPER_GOOD = {
    "img_ids": "000000000001",
    "image": "COCO_train2014_000000000001.jpg",
    "instruction_type": "negative",
    "conversations": _conv(("User", "Is there a dog?"), ("AI", "No, there is no dog.")),
}
PAPER_BAD = {
    "LLaVA speaker": (
        PAPER_GOOD | {"conversations": _conv(("human", "Q?"), ("gpt", "A."))},
        "conversations[0].from",
        "turn_unknown_speaker",
    ),
    "no type": (
        {k: v for k, v in PAPER_GOOD.items() if k != "instruction_type"},
        "instruction_type",
        "instruction_type_unknown",
    ),
    "unlabelled type": (
        PAPER_GOOD | {"instruction_type": UNLABELLED},
        "instruction_type",
        "instruction_type_unknown",
    ),
    "no img_ids": (
        {k: v for k, v in PAPER_GOOD.items() if k != "img_ids"},
        "img_ids",
        "annotation_bad_field",
    ),
    "LLaVA token": (
        PAPER_GOOD | {"conversations": _conv(("User", "<image>\nQ?"), ("AI", "A."))},
        "conversations[0].value",
        "image_token_misplaced",
    ),
    "AI first": (
        PAPER_GOOD | {"conversations": _conv(("AI", "Hello."), ("User", "Q?"))},
        "conversations[0].from",
        "turns_not_alternating",
    ),
    "blank question": (
        PAPER_GOOD | {"conversations": _conv(("User", " \n"), ("AI", "A."))},
        "conversations[0].value",
        "turn_empty",
    ),
    "list instead of object": ([1, 2], "", "annotation_bad_field"),
}


@pytest.mark.parametrize("case", list(PAPER_BAD), ids=list(PAPER_BAD))
def test_malformed_paper_record_is_rejected_and_the_rest_imports(case: str) -> None:
    bad, field, reason = PAPER_BAD[case]
    doc = _paper_doc(PAPER_GOOD, copy.deepcopy(bad), PAPER_GOOD)
    result = from_paper(doc, source="s", file="paper.json")
    assert result.rows["variant"].to_list() == [0, 2]
    reject = result.rejects.row(0, named=True)
    assert result.rejects.height == 1
    assert (reject["record_id"], reject["field"], reject["reason"]) == ("[1]", field, reason)


def test_reject_ids_are_stable_and_distinct() -> None:
    records = [LLAVA_BAD[c][0] for c in ("no image", "no image token", "empty answer")]
    one = from_llava(copy.deepcopy(records), source="s", file="f.json")
    two = from_llava(copy.deepcopy(records), source="s", file="f.json")
    assert one.rejects["reject_id"].to_list() == two.rejects["reject_id"].to_list()
    assert one.rejects["reject_id"].n_unique() == 3
    assert one.reject_counts() == {
        "annotation_bad_field": 1,
        "image_token_missing": 1,
        "turn_empty": 1,
    }


@pytest.mark.parametrize(
    "doc", [[PAPER_GOOD], {"image_source": "x"}, {"annotations": {"a": 1}}], ids=str
)
def test_unusable_paper_document_names_file_and_key(doc: object) -> None:
    with pytest.raises(InstructionFormatError, match="paper.json") as info:
        from_paper(doc, source="s", file="paper.json")
    assert info.value.file == "paper.json"


def test_llava_import_needs_a_list() -> None:
    with pytest.raises(InstructionFormatError, match="f.json: expected a JSON list"):
        from_llava({"conversations": []}, source="s", file="f.json")


# ---------------------------------------------------------------- files


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_detects_llava_json_list(tmp_path: Path) -> None:
    path = _write(tmp_path / "llava.json", json.dumps([llava_record(), llava_record(id="r2")]))
    result = load_instruction_file(path, source="s")
    assert result.rows.height == 2
    assert set(result.rows["source"]) == {"s"}


def test_load_jsonl_rejects_an_unparseable_line_and_keeps_the_rest(tmp_path: Path) -> None:
    lines = [
        json.dumps(llava_record(id="a")),
        json.dumps(llava_record(id="b"))[:40],
        "",
        json.dumps(llava_record()),
    ]
    path = _write(tmp_path / "data.jsonl", "\n".join(lines) + "\n")
    result = load_instruction_file(path, source="s")
    assert result.rows["source_annotation_ids"].to_list() == [["llava_id:a"], ["llava_id:r1"]]
    reject = result.rejects.row(0, named=True)
    assert (reject["file"], reject["field"], reject["reason"]) == (
        "data.jsonl",
        "line 2",
        "record_unparseable",
    )


def test_load_single_line_jsonl(tmp_path: Path) -> None:
    path = _write(tmp_path / "one.jsonl", json.dumps(llava_record()) + "\n")
    assert load_instruction_file(path, source="s").rows.height == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("  \n\n", "empty"),
        ('[{"id": "a", "image": "x.jpg", "conversations": [', "not JSON"),
        ("Here is the data you asked for:\n[]", "not JSON"),
        ('[{"id": "a"}, {"id": "b"} {"id": "c"}]', "not JSON \\(after record \\[1\\]\\)"),
        ('{"annotations": 3}', "annotations"),
    ],
    ids=["empty", "blank", "truncated", "prose", "missing comma", "annotations not a list"],
)
def test_unusable_file_fails_with_its_name(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path / "broken.json", text)
    with pytest.raises(InstructionFormatError, match=message) as info:
        load_instruction_file(path, source="s")
    assert "broken.json" in str(info.value)


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ('{"data": []}', "top level has ['data']"),
        ("42", "top level is int"),
        ('{\n  "n": 10000,\n  "counts": {"exact_dup": 1000}\n}\n', "top level has ['counts', 'n']"),
    ],
    ids=["unknown keys", "number", "bench truth sidecar"],
)
def test_json_that_is_no_dataset_is_one_reject_not_an_error(
    tmp_path: Path, text: str, what: str
) -> None:
    path = _write(tmp_path / "labels.truth.json", text)
    result = load_instruction_file(path, source="s")
    assert result.rows.height == 0
    (reject,) = result.rejects.to_dicts()
    assert (reject["file"], reject["reason"]) == ("labels.truth.json", "file_not_a_dataset")
    assert what in reject["detail"]


def test_non_utf8_file_fails_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"image": "caf\u00e9.jpg"}]'.encode("latin-1"))
    with pytest.raises(InstructionFormatError, match="latin1.json.*UTF-8"):
        load_instruction_file(path, source="s")


# ---------------------------------------------------------------- storage and purity


def test_imported_rows_and_rejects_store_in_duckdb(tmp_path: Path) -> None:
    result = from_llava([llava_record(), LLAVA_BAD["no image"][0]], source="s", file="f.json")
    with warehouse.connect(tmp_path / "wh.duckdb") as con:
        warehouse.replace_source(con, "generated__conversations", result.rows, "s")
        warehouse.replace_source(con, "raw__rejects", result.rejects, "s")
        rows = warehouse.read_source(con, "generated__conversations", "s")
        rejects = warehouse.read_source(con, "raw__rejects", "s")
    assert rows["turns"].to_list() == result.rows["turns"].to_list()
    assert rejects["reason"].to_list() == ["annotation_bad_field"]


def test_formats_does_not_import_dagster() -> None:
    code = (
        "import sys, vlit_assets.core.formats.files, vlit_assets.core.formats.writers; "
        "print('dagster' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- LLaVA-1.5 conventions


def test_text_only_records_import_with_no_image() -> None:
    text_only = {
        "id": "t1",
        "conversations": [
            {"from": "human", "value": "What is two plus two?"},
            {"from": "gpt", "value": "Four."},
        ],
    }
    result = from_llava([text_only, llava_record(id="v1")], source="s", file="mix.json")
    rows = {r["source_annotation_ids"][0]: r for r in result.rows.iter_rows(named=True)}
    assert rows["llava_id:t1"]["image_id"] is None and rows["llava_id:t1"]["image_path"] is None
    assert rows["llava_id:t1"]["turns"][0]["value"] == "What is two plus two?"
    assert rows["llava_id:v1"]["image_path"] == "images/a.jpg"
    # exported as LLaVA-1.5 writes text-only data: no image key, no token
    exported = {r["id"]: r for r in to_llava(result.rows)}
    assert "image" not in exported["t1"]
    assert exported["t1"]["conversations"][0]["value"] == "What is two plus two?"
    assert exported["v1"]["conversations"][0]["value"].startswith(IMAGE_TOKEN)


def test_a_single_images_list_entry_is_the_image_and_several_are_rejected() -> None:
    one = {k: v for k, v in llava_record(id="one").items() if k != "image"} | {
        "images": ["x/b.jpg"]
    }
    two = {k: v for k, v in llava_record(id="two").items() if k != "image"} | {"images": ["a", "b"]}
    result = from_llava([one, two], source="s", file="dj.json")
    assert result.rows["image_path"].to_list() == ["x/b.jpg"]
    assert result.rejects.select("record_id", "field").rows() == [("two", "images")]


def test_streamed_files_are_never_read_whole(tmp_path: Path, monkeypatch) -> None:
    records = [llava_record(id=f"r{i}") for i in range(50)]
    array = _write(tmp_path / "array.json", json.dumps(records))
    lines = _write(tmp_path / "lines.jsonl", "\n".join(json.dumps(r) for r in records))
    paper = _write(
        tmp_path / "paper.json",
        json.dumps({"image_source": "x", "annotations": [PAPER_GOOD] * 3}, indent=1),
    )

    def whole(*args, **kwargs):
        raise AssertionError("a dataset file was read whole")

    monkeypatch.setattr(Path, "read_text", whole)
    monkeypatch.setattr(Path, "read_bytes", whole)
    assert load_instruction_file(array, source="s").rows.height == 50
    assert load_instruction_file(lines, source="s").rows.height == 50
    assert load_instruction_file(paper, source="s").rows.height == 3


# ---------------------------------------------------------------- hostile text and fields

HOSTILE = {
    "from is a list": (
        GOOD | {"conversations": [{"from": ["human"], "value": "<image>\nQ?"}]},
        "conversations[0].from",
        "turn_unknown_speaker",
    ),
    "from is a dict": (
        GOOD | {"conversations": _conv(("human", "<image>\nQ?"), ({"who": "gpt"}, "A."))},
        "conversations[1].from",
        "turn_unknown_speaker",
    ),
    "lone surrogate in a value": (
        GOOD | {"conversations": _conv(("human", "<image>\nQ?"), ("gpt", "A \ud800 cat."))},
        "conversations[1].value",
        "text_invalid_unicode",
    ),
    "lone surrogate in the image name": (
        GOOD | {"image": "a\udc00.jpg"},
        "image",
        "text_invalid_unicode",
    ),
    "turn too long": (
        GOOD | {"conversations": _conv(("human", "<image>\nQ?"), ("gpt", "x" * 40_000))},
        "conversations[1].value",
        "turn_too_long",
    ),
    "conversation too long": (
        GOOD
        | {
            "conversations": _conv(
                *[
                    (("human", "gpt")[k % 2], ("<image>\n" if k == 0 else "") + "y" * 30_000)
                    for k in range(6)
                ]
            )
        },
        "conversations",
        "conversation_too_long",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_llava_fields_are_rejects(case: str) -> None:
    bad, field, reason = HOSTILE[case]
    result = from_llava([llava_record(id="ok"), bad], source="s", file="h.json")
    assert result.rows.height == 1
    assert result.rejects.select("field", "reason").rows() == [(field, reason)]


def test_lone_surrogate_escape_in_a_json_list_is_a_reject_not_a_question_mark(
    tmp_path: Path,
) -> None:
    text = json.dumps([llava_record(id="ok"), llava_record(id="bad", image="\ud800.jpg")])
    assert "\\ud800" in text
    path = _write(tmp_path / "list.json", text)
    result = load_instruction_file(path, source="s")
    assert result.rows["image_path"].to_list() == ["images/a.jpg"]
    assert result.rejects.select("record_id", "reason").rows() == [("bad", "text_invalid_unicode")]


def test_bad_bytes_and_surrogates_in_json_lines_reject_their_line(tmp_path: Path) -> None:
    good = json.dumps(llava_record(id="ok")).encode()
    latin1 = json.dumps(llava_record(id="l1", image="caf\u00e9.jpg"), ensure_ascii=False).encode(
        "latin-1"
    )
    surrogate = json.dumps(llava_record(id="s1", image="\ud800.jpg")).encode()
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join([good, latin1, surrogate, good.replace(b'"ok"', b'"ok2"')]))
    result = load_instruction_file(path, source="s")
    assert result.rows.height == 2
    assert result.rejects.select("field", "reason").rows() == [
        ("line 2", "record_unparseable"),
        ("line 3", "record_unparseable"),
    ]


def test_limits_are_settings() -> None:
    record = GOOD | {"conversations": _conv(("human", "<image>\nQ?"), ("gpt", "z" * 100))}
    tight = ImportLimits(max_turn_chars=50, max_conversation_chars=1000)
    out = Collector("s", "f.json", tight)
    result = import_llava([(0, record)], out)
    assert result.rejects["reason"].to_list() == ["turn_too_long"]
    assert from_llava([record], source="s", file="f.json").rows.height == 1


def test_every_import_reject_reason_is_declared_in_schemas() -> None:
    assert set(IMPORT_REJECT_REASONS) <= set(REJECT_REASONS)


# ---------------------------------------------------------------- the vectorised JSON Lines path


def _variety() -> list[dict]:
    """Records each check of the per-record path decides, valid and not, in one file."""
    conv = _conv
    base = [
        llava_record(id="plain"),
        llava_record("What is here?\n<image>", id="token-last"),
        llava_record("Look: <image> what is it?", id="token-mid"),
        llava_record("  <image>\n  padded  ", id="padded"),
        llava_record(id="plain"),  # a repeated id: its own key plain#1
        llava_record(id="typed", instruction_type="negative"),
        llava_record(id="labelled", instruction_type="unlabelled"),
        llava_record(id="bad-type", instruction_type="detail"),
        {"id": "text-only", "conversations": conv(("human", "Hi?"), ("gpt", "Hello."))},
        {"id": "text-token", "conversations": conv(("human", "<image> Hi?"), ("gpt", "Hey."))},
        {"conversations": conv(("human", "<image>\nQ?"), ("gpt", "A.")), "image": "n.jpg"},
        {
            "id": None,
            "image": "a.jpg",
            "conversations": conv(("human", "<image>\nQ"), ("gpt", "A")),
        },
        llava_record(id="  "),
        llava_record(id="sep\x1f"),
        llava_record("<image>\n\x1f", id="unit-separator-only"),
        llava_record("<image>\n\u2003", id="em-space-only"),
        {k: v for k, v in llava_record(id="dj").items() if k != "image"} | {"images": ["x.jpg"]},
        llava_record(id="both") | {"images": ["ignored.jpg"]},
        llava_record(id="two-images") | {"image": None, "images": ["a", "b"]},
        llava_record("<image>\n<image>\nQ?", id="two-tokens"),
        GOOD | {"id": "unanswered", "conversations": conv(("human", "<image>\nQ?"))},
        GOOD | {"id": "gpt-first", "conversations": conv(("gpt", "<image>\nQ?"), ("human", "A"))},
        GOOD | {"id": "null-turn", "conversations": [GOOD["conversations"][0], None]},
        GOOD | {"id": "null-value", "conversations": conv(("human", "<image>\nQ?"), ("gpt", None))},
        GOOD | {"id": "empty-answer", "conversations": conv(("human", "<image>\nQ"), ("gpt", " "))},
        GOOD
        | {"id": "long", "conversations": conv(("human", "<image>\nQ"), ("gpt", "x" * 40_000))},
        GOOD
        | {
            "id": "four-turns",
            "conversations": conv(
                ("human", "<image>\nQ"), ("gpt", "A"), ("human", "B"), ("gpt", "C")
            ),
        },
        llava_record(id="empty-image", image=""),
        llava_record(id="caf\u00e9 \U0001f600"),
    ]
    return base * 3  # repeats across blocks: keys plain#1, plain#2 ...


@pytest.mark.parametrize("repeat_ids", [False, True], ids=["unique", "repeated conversation"])
def test_vectorised_json_lines_equal_the_per_record_path(
    tmp_path: Path, monkeypatch, repeat_ids: bool
) -> None:
    from vlit_assets.core.formats import llava

    records = _variety()
    if repeat_ids:  # the key of the second "plain" is "plain#1": this one maps to the same id
        records.append(llava_record(id="plain#1"))
    else:
        for k, record in enumerate(records):
            if isinstance(record.get("id"), str) and record["id"].strip():
                record["id"] = f"{record['id']}-{k // 29}"
    path = _write(tmp_path / "v.jsonl", "\n".join(json.dumps(r) for r in records) + "\n")
    monkeypatch.setattr(llava, "_FAST_BLOCK", 1 << 16)  # several blocks, each > any record
    calls = []
    real = llava._llava_record
    monkeypatch.setattr(llava, "_llava_record", lambda *a: calls.append(a[1]) or real(*a))
    fast = load_instruction_file(path, source="s", limits=ImportLimits(max_turn_chars=30_000))
    used_fast = len(calls) < len(records)
    monkeypatch.setattr(llava, "_fast_jsonl", lambda p, o: None)
    slow = load_instruction_file(path, source="s", limits=ImportLimits(max_turn_chars=30_000))
    assert fast.rows.height > 20 and slow.rejects.height > 20
    assert fast.rows.equals(slow.rows)
    assert fast.rejects.equals(slow.rejects)
    assert used_fast != repeat_ids  # repeated conversation ids send the file down the slow path
