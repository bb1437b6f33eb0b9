"""The whole pipeline with table files: the same tables, exports and lineage as DuckDB alone."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from vlit_assets import cli
from vlit_assets.core import tablestore, warehouse
from vlit_assets.core.schemas import TABLES
from vlit_assets.runner import run_final, run_source
from vlit_assets.testing.pipeline import REPO, pipeline_env

FILE_TABLES = [t for t in TABLES.values() if t.file_backed]
RUN_COLUMNS = re.compile(r"run_id$")  # Dagster run ids differ between any two runs


def build(tmp_path: Path, monkeypatch, coco_mini: Path, capsys, table_root: str | None):
    """Run sample and coco-mini, then the final stage; return tables, exports and a lineage."""
    tmp_path.mkdir()
    with pipeline_env(tmp_path, monkeypatch, table_root=table_root) as env:
        assert run_source(env.instance, "sample", REPO / "data" / "sample").success
        assert run_source(env.instance, "coco-mini", coco_mini).success
        assert run_final(env.instance).success
        out = str(env.output_dir)
        tables: dict[str, pl.DataFrame] = {}
        with warehouse.connect(env.db_path, read_only=True, table_root=env.table_root) as con:
            for table in FILE_TABLES:
                frame = warehouse.read_source(con, table)
                tables[table.name] = normalise(frame, out).sort(list(table.key))
            conversation_id = con.execute(
                "SELECT conversation_id FROM final__conversations "
                "WHERE source = 'coco-mini' AND instruction_type = 'region' "
                "ORDER BY conversation_id LIMIT 1"
            ).fetchone()[0]
        capsys.readouterr()
        assert cli.main(["lineage", conversation_id, "--json", "--db", str(env.db_path)]) == 0
        lineage = json.loads(capsys.readouterr().out.replace(out, "OUT"))
        return tables, exports(env.output_dir), mask(lineage), env.db_path


def normalise(frame: pl.DataFrame, out: str) -> pl.DataFrame:
    frame = frame.drop([c for c in frame.columns if RUN_COLUMNS.search(c)])
    if "image_path" in frame.columns:
        frame = frame.with_columns(pl.col("image_path").str.replace(out, "OUT", literal=True))
    return frame


def exports(output_dir: Path) -> dict[str, Any]:
    """Every export file: JSON as text with the output folder masked; Parquet as a frame."""
    (folder,) = (output_dir / "exports").glob("v-*")
    out: dict[str, Any] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.suffix == ".json" and path.name != "manifest.json":  # manifest: times, hashes
            out[name] = path.read_text().replace(str(output_dir), "OUT")
        elif path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            out[name] = normalise(frame, str(output_dir))
        elif path.is_file():
            out[name] = None  # present; its bytes hold times (README) or are images
    return out


def mask(value: Any) -> Any:
    """Without run ids, times and export file hashes (the files hold run ids and times)."""
    if isinstance(value, dict):
        return {
            k: mask(v)
            for k, v in value.items()
            if not RUN_COLUMNS.search(k) and not k.endswith("_at") and k != "sha256"
        }
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


@pytest.mark.slow
def test_table_files_give_the_same_tables_exports_and_lineage_as_duckdb(
    coco_mini, tmp_path, monkeypatch, capsys
):
    root = str(tmp_path / "files" / "tables")
    duck_tables, duck_exports, duck_lineage, _ = build(
        tmp_path / "duck", monkeypatch, coco_mini, capsys, None
    )
    file_tables, file_exports, file_lineage, db_path = build(
        tmp_path / "files", monkeypatch, coco_mini, capsys, root
    )

    for table in FILE_TABLES:
        duck, files = duck_tables[table.name], file_tables[table.name]
        assert files.schema == duck.schema, table.name
        assert files.equals(duck), table.name
    assert duck_tables["scored__conversations"].height > 300  # both sources went through
    assert set(duck_tables["raw__images"]["source"]) == {"sample", "coco-mini"}

    assert file_exports.keys() == duck_exports.keys()
    for name, duck in duck_exports.items():
        files = file_exports[name]
        assert files.equals(duck) if isinstance(duck, pl.DataFrame) else files == duck, name

    assert file_lineage == duck_lineage
    assert file_lineage["annotations"]["objects"] and file_lineage["decision"]["kept"]
    assert file_lineage["image"]["image_id"] and file_lineage["exported_in"]

    # The large tables were files; DuckDB kept only the small ones.
    published = tablestore.manifests(root)
    assert set(published) == {"sample", "coco-mini", tablestore.ALL_SOURCES}
    assert set(published[tablestore.ALL_SOURCES].tables) == {
        "final__decisions",
        "final__conversations",
    }
    with duckdb.connect(str(db_path), read_only=True) as plain:
        stored = {r[0] for r in plain.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert stored.isdisjoint(t.name for t in FILE_TABLES)
    assert "meta__sources" in stored
