"""Hostile input: bad bytes, wrong types and huge values become reject rows, never a crash.

The fuzzer at the end mutates valid COCO, LLaVA and paper-format files with a seeded
mutator (``VLIT_FUZZ_SEED`` picks another seed) and sends every mutant through the real
import function and a DuckDB write. Each outcome must be rows plus reject rows, or one typed
error (``SourceFormatError`` / ``InstructionFormatError``) that names the file.
"""

from __future__ import annotations

import copy
import io
import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from vlit_assets.core import warehouse
from vlit_assets.core.formats.records import InstructionFormatError
from vlit_assets.core.raw.coco_json import SourceFormatError
from vlit_assets.core.raw.collect import CollectConfig, collect_source
from vlit_assets.core.raw.imports import collect_import
from vlit_assets.core.schemas import (
    RAW_CAPTIONS,
    RAW_CONVERSATIONS,
    RAW_IMAGES,
    RAW_OBJECTS,
    RAW_REJECTS,
    RAW_TAGS,
)

SPLIT = "train2017"


def _jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((64, 48), seed).convert("RGB").save(out, "JPEG")
    return out.getvalue()


def _coco_docs(n: int = 3) -> tuple[dict, dict]:
    images = [
        {"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in range(1, n + 1)
    ]
    captions = [
        {"id": 100 + i, "image_id": i, "caption": f"A grey dog number {i} on a sofa."}
        for i in range(1, n + 1)
    ]
    objects = [
        {
            "id": 200 + i,
            "image_id": i,
            "category_id": 18,
            "bbox": [1.0, 2.0, 10.0, 12.0],
            "area": 120.0,
            "iscrowd": 0,
        }
        for i in range(1, n + 1)
    ]
    categories = [{"id": 18, "name": "dog", "supercategory": "animal"}]
    return (
        {"images": images, "annotations": captions},
        {"images": copy.deepcopy(images), "annotations": objects, "categories": categories},
    )


def _coco_source(root: Path, n: int = 3) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / SPLIT).mkdir()
    for i in range(1, n + 1):
        (root / SPLIT / f"{i:012d}.jpg").write_bytes(_jpeg(i))
    captions, instances = _coco_docs(n)
    _write_coco(root, captions, instances)
    return root


def _write_coco(root: Path, captions: object, instances: object) -> None:
    for name, doc in (("captions", captions), ("instances", instances)):
        data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        (root / "annotations" / f"{name}_{SPLIT}.json").write_bytes(data)


def _collect_and_store(root: Path, con) -> object:
    result = collect_source("s", root, CollectConfig(split=SPLIT, workers=1))
    for table in (RAW_IMAGES, RAW_CAPTIONS, RAW_OBJECTS, RAW_TAGS, RAW_REJECTS):
        warehouse.replace_source(con, table, getattr(result, table.name.split("__")[1]), "s")
    return result


# ---------------------------------------------------------------- COCO: one case each


def _ff_byte(captions: dict, instances: dict) -> bytes:
    text = json.dumps(captions).replace("number 2", "number @2")
    return text.encode().replace(b"@", b"\xff")


def _latin1(captions: dict, instances: dict) -> bytes:
    captions["annotations"][1]["caption"] = "Un caf\u00e9 et un chien."
    return json.dumps(captions, ensure_ascii=False).encode("latin-1")


def _surrogate(captions: dict, instances: dict) -> bytes:
    return json.dumps(captions).replace("number 2", "number \\ud800 2").encode()


def _long_name(captions: dict, instances: dict) -> dict:
    captions["images"][1]["file_name"] = "x" * 300 + ".jpg"
    return captions


def _huge_caption(captions: dict, instances: dict) -> dict:
    captions["annotations"][1]["caption"] = "word " * 1_000_000
    return captions


COCO_CAPTION_CASES: dict[str, tuple[Callable, str, str]] = {
    # case: (mutation of the captions file, field of the reject, words of its detail)
    "one 0xff byte in a caption": (_ff_byte, "annotations.caption", "not valid UTF-8"),
    "a whole Latin-1 file": (_latin1, "annotations.caption", "not valid UTF-8"),
    "a lone surrogate in a caption": (_surrogate, "annotations.caption", "lone UTF-16 surrogate"),
    "a file name over 255 bytes": (_long_name, "images.file_name", "longer than 255 bytes"),
    "a 5 MB caption": (_huge_caption, "annotations.caption", "longer than 4096 characters"),
}


@pytest.mark.parametrize("case", list(COCO_CAPTION_CASES), ids=list(COCO_CAPTION_CASES))
def test_hostile_coco_captions_become_rejects(tmp_path: Path, case: str) -> None:
    mutate, field, words = COCO_CAPTION_CASES[case]
    root = _coco_source(tmp_path / "src")
    captions, instances = _coco_docs()
    _write_coco(root, mutate(captions, instances), instances)
    with warehouse.connect(tmp_path / "w.duckdb") as con:
        result = _collect_and_store(root, con)
        stored = con.execute("SELECT count(*) FROM raw__captions").fetchone()
    bad = result.rejects.filter(pl.col("reason") == "annotation_bad_field")
    assert bad["field"].to_list() == [field]
    assert words in bad["detail"][0]
    assert result.images.height == 2 and stored == (2,)  # the other images are untouched


@pytest.mark.parametrize(
    ("bbox", "words"),
    [
        ([float("nan"), 1.0, 2.0, 3.0], "non-finite"),
        ([1.0, 1.0, float("inf"), 3.0], "non-finite"),
        ([1.0, 1.0, 2.0, float("-inf")], "non-finite"),
    ],
    ids=["NaN", "Infinity", "-Infinity"],
)
def test_non_finite_box_coordinates_are_rejected_as_such(
    tmp_path: Path, bbox: list, words: str
) -> None:
    root = _coco_source(tmp_path / "src")
    captions, instances = _coco_docs()
    instances["annotations"][1]["bbox"] = bbox
    _write_coco(root, captions, instances)
    with warehouse.connect(tmp_path / "w.duckdb") as con:
        result = _collect_and_store(root, con)
        boxes = con.execute("SELECT bbox_x, bbox_y, bbox_w, bbox_h FROM raw__objects").fetchall()
    (reject,) = result.rejects.to_dicts()
    assert (reject["field"], reject["reason"]) == ("annotations.bbox", "annotation_bad_field")
    assert words in reject["detail"] and "outside" not in reject["detail"]
    assert len(boxes) == 2 and all(v == v for box in boxes for v in box)  # no NaN stored


def test_a_llava_image_name_over_255_bytes_is_a_reject(tmp_path: Path) -> None:
    record = {
        "id": "long",
        "image": "y" * 300 + ".jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat?"},
            {"from": "gpt", "value": "Noise."},
        ],
    }
    (tmp_path / "d.json").write_text(json.dumps([record]), encoding="utf-8")
    result = collect_import("s", tmp_path, workers=1)
    assert set(result.rejects["reason"]) == {"image_missing", "parent_image_rejected"}


# ---------------------------------------------------------------- the fuzzer

FUZZ_RUNS = 300
_HOSTILE_VALUES: list[object] = [
    None,
    "",
    " ",
    "\ud800",
    "a\udfffb",
    "\x00",
    "<image>",
    "<image>\n<image>",
    "x" * 40_000,
    "caf\u00e9 \U0001f600",
    "../../etc/passwd",
    "/abs.jpg",
    "z" * 300 + ".jpg",
    0,
    -1,
    2**31,
    2**70,
    -(2**70),
    1.5,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    [],
    [1, 2],
    ["human"],
    {},
    {"from": "human"},
]


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


def _set(doc: object, path: tuple, value: object, *, delete: bool = False) -> object:
    if not path:
        return value
    parent = doc
    for step in path[:-1]:
        parent = parent[step]  # type: ignore[index]
    if delete and isinstance(parent, dict):
        parent.pop(path[-1], None)
    elif delete and isinstance(parent, list):
        parent.pop(path[-1])
    else:
        parent[path[-1]] = value  # type: ignore[index]
    return doc


def _mutate_tree(rng: random.Random, doc: object) -> object:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_paths(doc))
        if rng.random() < 0.2 and path:
            doc = _set(doc, path, None, delete=True)
        elif rng.random() < 0.1 and path and isinstance(path[-1], int):
            parent = doc
            for step in path[:-1]:
                parent = parent[step]  # type: ignore[index]
            parent.append(copy.deepcopy(parent[path[-1]]))  # type: ignore[union-attr,index]
        else:
            doc = _set(doc, path, copy.deepcopy(rng.choice(_HOSTILE_VALUES)))
    return doc


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        kind = rng.random()
        if kind < 0.3:
            data[at:at] = rng.choice([b"\xff", b"\xc3", b"\xe9", b"\x00", b"\\ud800", b"\\u"])
        elif kind < 0.5 and len(data) > 1:
            del data[min(at, len(data) - 1)]
        elif kind < 0.6:
            data = data[:at]
        elif kind < 0.8:
            data[at:at] = rng.choice([b",", b"]", b"}", b"[", b"{", b'"', b"NaN", b"\n"])
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    return bytes(data)


def _encode(rng: random.Random, doc: object) -> bytes:
    text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a raw lone surrogate: what a careless writer would emit
        return text.encode("utf-8", "surrogatepass")


def _mutant(rng: random.Random, doc: object) -> bytes:
    if rng.random() < 0.65:
        return _encode(rng, _mutate_tree(rng, doc))
    return _mutate_bytes(rng, _encode(rng, doc))


def _seed() -> int:
    return int(os.environ.get("VLIT_FUZZ_SEED", "20261130"))


def _outcome(run: Callable[[], object], file_names: tuple[str, ...], errors: tuple) -> str:
    try:
        run()
    except errors as exc:
        assert any(name in str(exc) for name in file_names), f"error names no file: {exc}"
        return "error"
    return "rows"


def _fuzz(tmp_path: Path, make: Callable, write: Callable, run: Callable, errors: tuple) -> dict:
    rng = random.Random(_seed())
    root, base, files = make(tmp_path / "src")
    outcomes = {"rows": 0, "error": 0}
    with warehouse.connect(tmp_path / "fuzz.duckdb") as con:
        for k in range(FUZZ_RUNS):
            write(root, rng, base)
            try:
                outcomes[_outcome(lambda: run(root, con), files, errors)] += 1
            except Exception as exc:  # pragma: no cover - the failure message is the point
                raise AssertionError(f"mutant {k} (seed {_seed()}) crashed: {exc!r}") from exc
    return outcomes


def _store_import(root: Path, con) -> None:
    result = collect_import("s", root, workers=1)
    warehouse.replace_source(con, RAW_CONVERSATIONS, result.conversations, "s")
    warehouse.replace_source(con, RAW_IMAGES, result.images, "s")
    warehouse.replace_source(con, RAW_REJECTS, result.rejects, "s")


def _llava_source(root: Path) -> tuple[Path, object, tuple[str, ...]]:
    (root / "images").mkdir(parents=True)
    for k in range(3):
        (root / "images" / f"img_{k}.jpg").write_bytes(_jpeg(k + 1))
    records = [
        {
            "id": f"r{k}",
            "image": f"images/img_{k % 3}.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the picture?"},
                {"from": "gpt", "value": f"Grey noise, sample {k}."},
                {"from": "human", "value": "Is there a dog?"},
                {"from": "gpt", "value": "No, there is no dog."},
            ],
        }
        for k in range(5)
    ]
    records.append(
        {
            "id": "text",
            "conversations": [
                {"from": "human", "value": "Name a prime."},
                {"from": "gpt", "value": "Seven."},
            ],
        }
    )
    return root, records, ("data.json", "data.jsonl")


def _write_llava(root: Path, rng: random.Random, records: object) -> None:
    data = _mutant(rng, records)
    (root / "data.json").write_bytes(data)
    lines = [_mutant(rng, r) if rng.random() < 0.3 else _encode(rng, r) for r in records]  # type: ignore[union-attr]
    (root / "data.jsonl").write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))


def _paper_source(root: Path) -> tuple[Path, object, tuple[str, ...]]:
    root.mkdir(parents=True)
    for k in range(2):
        (root / f"COCO_train2014_{k:012d}.jpg").write_bytes(_jpeg(k + 7))
    (root / "COCO_train2014_000000000001_0.jpg").write_bytes(_jpeg(9))
    turns = [
        {"from": "User", "value": "What is happening here?"},
        {"from": "AI", "value": "A grey field of noise."},
    ]
    doc = {
        "image_source": "test",
        "construction_time": "2026-11",
        "annotations": [
            {
                "img_ids": "000000000000",
                "image": "COCO_train2014_000000000000.jpg",
                "instruction_type": "global",
                "conversations": turns,
            },
            {
                "img_ids": "000000000001",
                "image": "COCO_train2014_000000000001.jpg",
                "instruction_type": "negative",
                "conversations": turns,
            },
            {
                "img_ids": "000000000001_0",
                "image": "COCO_train2014_000000000001_0.jpg",
                "instruction_type": "region",
                "conversations": turns,
            },
        ],
    }
    return root, doc, ("paper.json",)


def _write_paper(root: Path, rng: random.Random, doc: object) -> None:
    (root / "paper.json").write_bytes(_mutant(rng, doc))


def _coco_fuzz_source(root: Path) -> tuple[Path, object, tuple[str, ...]]:
    _coco_source(root)
    return root, _coco_docs(), (f"captions_{SPLIT}.json", f"instances_{SPLIT}.json")


def _write_coco_mutant(root: Path, rng: random.Random, docs: object) -> None:
    captions, instances = docs  # type: ignore[misc]
    if rng.random() < 0.5:
        _write_coco(root, _mutant(rng, captions), instances)
    else:
        _write_coco(root, captions, _mutant(rng, instances))


@pytest.mark.slow
def test_fuzzed_llava_files_give_rows_and_rejects_or_a_named_error(tmp_path: Path) -> None:
    outcomes = _fuzz(
        tmp_path, _llava_source, _write_llava, _store_import, (InstructionFormatError,)
    )
    assert outcomes["rows"] > FUZZ_RUNS // 4  # most mutants keep some records importable


@pytest.mark.slow
def test_fuzzed_paper_files_give_rows_and_rejects_or_a_named_error(tmp_path: Path) -> None:
    outcomes = _fuzz(
        tmp_path, _paper_source, _write_paper, _store_import, (InstructionFormatError,)
    )
    assert outcomes["rows"] > FUZZ_RUNS // 4


@pytest.mark.slow
def test_fuzzed_coco_files_give_rows_and_rejects_or_a_named_error(tmp_path: Path) -> None:
    outcomes = _fuzz(
        tmp_path, _coco_fuzz_source, _write_coco_mutant, _collect_and_store, (SourceFormatError,)
    )
    assert outcomes["rows"] > FUZZ_RUNS // 4


def test_the_mutator_is_seeded() -> None:
    captions = _coco_docs()[0]
    first, second = random.Random(5), random.Random(5)
    one = [_mutant(first, captions) for _ in range(5)]
    assert one == [_mutant(second, captions) for _ in range(5)]
    assert len(set(one)) > 1
