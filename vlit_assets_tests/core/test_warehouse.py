"""DuckDB storage helpers: per-source replacement, upserts, additive migrations."""

from __future__ import annotations

import polars as pl

from vlit_assets.core import warehouse
from vlit_assets.core.schemas import META_SOURCES, RAW_CATEGORIES


def _categories(source: str, ids: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "source": [source] * len(ids),
            "category_id": ids,
            "name": [f"c{i}" for i in ids],
            "supercategory": ["x"] * len(ids),
            "run_id": ["r"] * len(ids),
        }
    )


def test_replace_source_touches_only_that_source(tmp_path):
    with warehouse.connect(tmp_path / "w.duckdb") as con:
        warehouse.replace_source(con, RAW_CATEGORIES, _categories("a", [1, 2, 3]), "a")
        warehouse.replace_source(con, RAW_CATEGORIES, _categories("b", [1]), "b")
        warehouse.replace_source(con, RAW_CATEGORIES, _categories("a", [7]), "a")
        rows = con.execute(
            "SELECT source, category_id FROM raw__categories ORDER BY 1, 2"
        ).fetchall()
    assert rows == [("a", 7), ("b", 1)]


def test_an_old_table_gains_new_columns_and_inserts_by_name(tmp_path):
    with warehouse.connect(tmp_path / "w.duckdb") as con:
        con.execute(
            "CREATE TABLE meta__sources (source VARCHAR, root VARCHAR, split VARCHAR, "
            "kind VARCHAR, registered_at TIMESTAMP)"
        )
        frame = pl.DataFrame(
            {
                "source": ["s"],
                "root": ["/r"],
                "split": [None],
                "kind": ["import"],
                "annotations_source": ["coco"],
                "registered_at": [None],
            },
            schema=META_SOURCES.polars_schema,
        )
        warehouse.upsert(con, META_SOURCES, frame)
        row = con.execute("SELECT kind, annotations_source FROM meta__sources").fetchone()
    assert row == ("import", "coco")


def test_reading_an_absent_table_on_a_read_only_connection_gives_an_empty_frame(tmp_path):
    path = tmp_path / "w.duckdb"
    with warehouse.connect(path) as con:
        con.execute("CREATE TABLE other (x INTEGER)")
    with warehouse.connect(path, read_only=True) as con:
        frame = warehouse.read_source(con, RAW_CATEGORIES, "a")
    assert frame.height == 0 and frame.columns == list(RAW_CATEGORIES.columns)


def test_a_read_only_reader_of_an_older_table_gets_nulls_for_new_columns(tmp_path):
    path = tmp_path / "w.duckdb"
    with warehouse.connect(path) as con:
        con.execute(
            "CREATE TABLE meta__sources (source VARCHAR, root VARCHAR, split VARCHAR, "
            "kind VARCHAR, registered_at TIMESTAMP)"
        )
        con.execute("INSERT INTO meta__sources VALUES ('s', '/r', NULL, 'coco', NULL)")
    with warehouse.connect(path, read_only=True) as con:
        frame = warehouse.read_source(con, META_SOURCES)
    assert frame.columns == list(META_SOURCES.columns)
    assert frame["annotations_source"].to_list() == [None]
    assert frame["kind"].to_list() == ["coco"]
