"""The raw stage without Dagster: which directory a source reads, and the tables it yields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vlit_assets.core import warehouse
from vlit_assets.core.raw.stage import (
    RAW_TABLES,
    RawOptions,
    RawTables,
    SourceError,
    collect_raw,
    resolve_source,
)
from vlit_assets.core.schemas import RAW_CONVERSATIONS, RAW_IMAGES, RAW_REJECTS
from vlit_assets_tests.conftest import SAMPLE_DIR


def _resolve(tmp_path: Path, source: str, **options: Any):
    with warehouse.connect(tmp_path / "w.duckdb") as con:
        return resolve_source(
            con,
            source,
            RawOptions(**options),
            sample_dir=SAMPLE_DIR,
            incoming_dir=tmp_path / "incoming",
        )


def test_an_unknown_source_names_where_it_was_looked_for(tmp_path):
    with pytest.raises(SourceError, match=r"'nowhere' has no registered directory.*incoming"):
        _resolve(tmp_path, "nowhere")


def test_conventions_give_the_kind_and_the_registry_remembers_the_folder(tmp_path):
    (tmp_path / "incoming" / "batch").mkdir(parents=True)
    assert _resolve(tmp_path, "batch").kind == "incoming"
    assert _resolve(tmp_path, "sample").kind == "sample"
    llava = tmp_path / "llava"
    llava.mkdir()
    (llava / "data.json").write_text(json.dumps([]))
    record = _resolve(tmp_path, "llava", source_dir=str(llava))
    assert (record.kind, record.root) == ("import", llava.resolve())
    assert _resolve(tmp_path, "llava") == record  # found again without source_dir
    with pytest.raises(SourceError, match="is registered to"):
        _resolve(tmp_path, "llava", source_dir=str(SAMPLE_DIR))


def test_a_coco_source_fills_every_table_but_conversations(tmp_path):
    record = _resolve(tmp_path, "sample")
    raw = collect_raw(record, RawOptions(), run_id="r1", image_cache=tmp_path / "cache")
    assert list(raw.tables) == [t.name for t in RAW_TABLES]
    assert raw.counts[RAW_IMAGES.name] == 24
    assert raw.counts[RAW_CONVERSATIONS.name] == 0
    assert set(raw.tables[RAW_IMAGES.name]["run_id"]) == {"r1"}
    assert raw.metadata()[RAW_IMAGES.name] == {
        "source_dir": str(SAMPLE_DIR.resolve()),
        "source_kind": "sample",
        "compute": "local",  # no mapper: the image checks ran in this process's pool
    }
    assert "sample (sample)" in raw.summary()


def test_reject_counts_go_to_the_rejects_table_only(tmp_path):
    record = _resolve(tmp_path, "sample")
    raw = RawTables(record, {}, {"image_missing": 2, "caption_empty": 1})
    meta = raw.metadata()
    assert list(meta) == [t.name for t in RAW_TABLES]
    assert [k for k in meta[RAW_REJECTS.name] if k.startswith("rejects/")] == [
        "rejects/caption_empty",
        "rejects/image_missing",
    ]
    assert meta[RAW_REJECTS.name]["rejects/image_missing"] == 2
    assert not any(k.startswith("rejects/") for k in meta[RAW_IMAGES.name])
