"""Exports: LLaVA/paper round trip, manifest hashes, dataset card charts, atomic version folders."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from vlit_assets.core.final import export
from vlit_assets.core.final.export import export_image_paths, write_export
from vlit_assets.core.final.rules import Thresholds
from vlit_assets.core.final.select import Selection, decide
from vlit_assets.core.final.split import SplitConfig
from vlit_assets.core.formats.files import load_instruction_file
from vlit_assets.core.schemas import SCORE_COLUMNS
from vlit_assets_tests.core.final.test_select import frame, row, unit_vectors

TYPES = ("global", "negative", "region", "unlabelled")
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _turns(cid: str, itype: str) -> list[dict]:
    return [
        {"from": "human", "value": f"Tell me about image {cid} ({itype})."},
        {"from": "gpt", "value": f"It shows a dog on a couch, sample {cid}."},
        {"from": "human", "value": "Is there a cat?"},
        {"from": "gpt", "value": "No, there is no cat in the picture."},
    ]


@pytest.fixture
def selection(tmp_path: Path) -> tuple[Selection, dict[str, Path]]:
    roots = {"s1": tmp_path / "images" / "s1", "s2": tmp_path / "images" / "s2"}
    rows = []
    for i in range(40):
        itype = TYPES[i % 4]
        source = "s1" if i % 2 else "s2"
        cid = f"conv_{i:03d}"
        # s1 stores absolute paths, s2 paths relative to its root
        image = str(roots["s1"] / f"{i}.jpg") if source == "s1" else f"sub/{i}.jpg"
        rows.append(
            row(
                cid,
                source=source,
                instruction_type=itype,
                turns=_turns(cid, itype),
                image_path=image,
                mentioned_categories=["dog", "couch"] if i % 3 else ["cat"],
                relevance=0.3 + i / 100,
            )
        )
    rows.append(row("conv_bad", chair_i=0.5))
    sel = decide(frame(rows), unit_vectors(len(rows)), Thresholds(), split=SplitConfig(0.3))
    assert set(sel.kept["split"]) == {"train", "val"}
    return sel, roots


def _export(tmp_path: Path, sel: Selection, roots: dict[str, Path], **kw) -> export.ExportResult:
    return write_export(
        sel.kept,
        sel.decisions,
        out_dir=tmp_path / "out",
        version=kw.pop("version", "v1"),
        image_root_by_source=roots,
        manifest_extra=kw.pop(
            "manifest_extra",
            {"sources": {"s1": {"sha256": "aa"}}, "code_version": "abc123"},
        ),
        report=sel.report,
        created_at=WHEN,
        **kw,
    )


def _original_image(r: dict, roots: dict[str, Path]) -> Path:
    path = Path(r["image_path"])
    return path if path.is_absolute() else roots[r["source"]] / path


def test_llava_and_paper_files_load_back_as_the_kept_conversations(tmp_path, selection) -> None:
    sel, roots = selection
    result = _export(tmp_path, sel, roots)
    image_root = Path(result.manifest["images"]["image_root"])
    assert result.manifest["images"]["mode"] == "relative_to_image_root"
    assert image_root == tmp_path / "images"
    for split in ("train", "val"):
        expected = {
            r["conversation_id"]: r for r in sel.kept.filter(pl.col("split") == split).to_dicts()
        }
        llava = load_instruction_file(result.version_dir / f"llava_{split}.json", source="x")
        assert llava.rejects.height == 0
        back = {
            r["source_annotation_ids"][0].removeprefix("llava_id:"): r
            for r in llava.rows.to_dicts()
        }
        assert back.keys() == expected.keys()
        for cid, r in back.items():
            assert r["turns"] == expected[cid]["turns"]
            assert r["instruction_type"] == expected[cid]["instruction_type"]
            assert image_root / r["image_path"] == _original_image(expected[cid], roots)

        paper = load_instruction_file(result.version_dir / f"paper_{split}.json", source="x")
        assert paper.rejects.height == 0

        def key(r: dict) -> tuple:
            return (r["instruction_type"], json.dumps(r["turns"]))

        labelled = [r for r in expected.values() if r["instruction_type"] != "unlabelled"]
        want = {key(r): _original_image(r, roots) for r in labelled}
        got = {key(r): image_root / r["image_path"] for r in paper.rows.to_dicts()}
        assert got == want
        skipped = len(expected) - len(labelled)
        assert skipped > 0
        assert result.manifest["paper_skipped"][split] == skipped


def test_manifest_hashes_every_file_and_records_the_settings(tmp_path, selection) -> None:
    sel, roots = selection
    result = _export(tmp_path, sel, roots)
    on_disk = {
        p.relative_to(result.version_dir).as_posix()
        for p in result.version_dir.rglob("*")
        if p.is_file()
    }
    manifest = json.loads((result.version_dir / "manifest.json").read_text())
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    for name, entry in manifest["files"].items():
        data = (result.version_dir / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
    assert (
        result.manifest_sha256
        == hashlib.sha256((result.version_dir / "manifest.json").read_bytes()).hexdigest()
    )
    assert manifest["selection"]["thresholds"] == asdict(Thresholds())
    assert manifest["selection"]["split"]["val_ratio"] == 0.3
    assert manifest["code_version"] == "abc123" and manifest["sources"]["s1"]["sha256"] == "aa"
    counts = manifest["counts"]
    assert counts["conversations"] == sel.kept.height
    for split in ("train", "val"):
        rows = sel.kept.filter(pl.col("split") == split)
        assert counts["by_split"][split]["conversations"] == rows.height
        assert sum(counts["by_split"][split]["instruction_type"].values()) == rows.height
        dogs = rows.filter(pl.col("mentioned_categories").list.contains("dog")).height
        assert counts["by_split"][split]["category"].get("dog", 0) == dogs
    assert (
        manifest["files"]["llava_train.json"]["records"]
        == counts["by_split"]["train"]["conversations"]
    )
    assert manifest["drops_by_first_rule"]["hallucination"] == 1


def test_parquet_holds_every_kept_row_with_split_and_metrics(tmp_path, selection) -> None:
    sel, roots = selection
    result = _export(tmp_path, sel, roots)
    table = pl.read_parquet(result.version_dir / "conversations.parquet")
    assert sorted(table["conversation_id"]) == sorted(sel.kept["conversation_id"])
    assert {"split", *SCORE_COLUMNS} <= set(table.columns)
    decisions = pl.read_parquet(result.version_dir / "decisions.parquet")
    assert decisions.height == sel.decisions.height
    assert decisions.filter(pl.col("conversation_id") == "conv_bad")["failing_rules"].to_list() == [
        ["hallucination"]
    ]


def test_card_embeds_charts_that_exist(tmp_path, selection) -> None:
    sel, roots = selection
    result = _export(tmp_path, sel, roots)
    card = (result.version_dir / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card)
    assert len(images) == 3
    for rel in images:
        png = (result.version_dir / rel).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert "| correctness | `chair_i` |" in card
    assert "| `hallucination` |" in card


def test_a_version_is_never_overwritten_unless_asked(tmp_path, selection) -> None:
    sel, roots = selection
    first = _export(tmp_path, sel, roots)
    marker = first.version_dir / "llava_train.json"
    with pytest.raises(FileExistsError, match="overwrite"):
        _export(tmp_path, sel, roots)
    marker.write_text("tampered")
    _export(tmp_path, sel, roots, overwrite=True)
    assert marker.read_text() != "tampered"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v1"]


def test_a_failed_export_leaves_no_folder(tmp_path, selection, monkeypatch) -> None:
    sel, roots = selection

    def broken(tmp: Path, report: dict) -> dict:
        raise RuntimeError("chart backend exploded")

    monkeypatch.setattr(export, "_write_charts", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        _export(tmp_path, sel, roots)
    assert list((tmp_path / "out").iterdir()) == []
    # a failed overwrite keeps the previous version intact
    monkeypatch.undo()
    good = _export(tmp_path, sel, roots)
    before = (good.version_dir / "manifest.json").read_bytes()
    monkeypatch.setattr(export, "_write_charts", broken)
    with pytest.raises(RuntimeError):
        _export(tmp_path, sel, roots, overwrite=True)
    assert (good.version_dir / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v1"]


def test_same_inputs_give_identical_files(tmp_path, selection) -> None:
    sel, roots = selection
    a = _export(tmp_path, sel, roots, version="a")
    b = _export(tmp_path, sel, roots, version="b")
    strip = {"version"}
    files_a = {k: v for k, v in a.manifest["files"].items() if k != "README.md"}
    files_b = {k: v for k, v in b.manifest["files"].items() if k != "README.md"}
    assert files_a == files_b
    assert {k: v for k, v in a.manifest.items() if k not in strip | {"files"}} == {
        k: v for k, v in b.manifest.items() if k not in strip | {"files"}
    }


def test_image_path_modes() -> None:
    rows = frame(
        [
            row("conv_a", source="s1", image_path="/data/coco/train/1.jpg"),
            row("conv_b", source="s2", image_path="x/2.jpg"),
        ]
    )
    values, info = export_image_paths(rows, {"s2": Path("/data/coco/regions")})
    assert info["mode"] == "relative_to_image_root" and info["image_root"] == "/data/coco"
    assert values.to_list() == ["train/1.jpg", "regions/x/2.jpg"]
    values, info = export_image_paths(rows, None)
    assert info["mode"] == "absolute_except_unresolved_sources"
    assert info["unresolved_sources"] == {"s2": 1}
    assert values.to_list() == ["/data/coco/train/1.jpg", "x/2.jpg"]
    apart = frame([row("conv_a", image_path="/a/1.jpg"), row("conv_b", image_path="/b/2.jpg")])
    values, info = export_image_paths(apart, None)
    assert info == {"mode": "absolute", "image_root": None, "unresolved_sources": {}}
    assert values.to_list() == ["/a/1.jpg", "/b/2.jpg"]


def test_bad_export_requests_are_refused(tmp_path, selection) -> None:
    sel, roots = selection
    with pytest.raises(ValueError, match="collide"):
        _export(tmp_path, sel, roots, manifest_extra={"counts": 1})
    with pytest.raises(ValueError, match="version"):
        _export(tmp_path, sel, roots, version="../escape")
    other = sel.decisions.with_columns(pl.lit(False).alias("kept"))
    with pytest.raises(ValueError, match="disagree"):
        write_export(
            sel.kept,
            other,
            out_dir=tmp_path / "out",
            version="v2",
            image_root_by_source=roots,
            manifest_extra={},
            report=sel.report,
        )
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
