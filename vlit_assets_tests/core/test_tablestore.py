"""Table files: round trips, per-source re-runs, vacuum, memory:// roots, and many writers."""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import fsspec
import polars as pl
import pytest

from vlit_assets.core import tablestore, warehouse
from vlit_assets.core.schemas import (
    FINAL_DECISIONS,
    META_DATASET_METRICS,
    RAW_CATEGORIES,
    RAW_IMAGES,
    Table,
)

EVERY_TYPE = Table(
    "test__every_type",
    {
        "source": "VARCHAR",
        "big": "BIGINT",
        "small": "INTEGER",
        "real": "DOUBLE",
        "single": "FLOAT",
        "flag": "BOOLEAN",
        "at": "TIMESTAMP",
        "doc": "JSON",
        "words": "VARCHAR[]",
        "turns": 'STRUCT("from" VARCHAR, "value" VARCHAR)[]',
        "tag": "STRUCT(category_id INTEGER, name VARCHAR, score DOUBLE)",
    },
    ("big",),
    "Every column type the schemas use, for round trips.",
    file_backed=True,
)


def every_type_rows(source: str, n: int = 3) -> pl.DataFrame:
    """Rows with values and nulls in every column; ints as Int64, as a stage would hand them."""
    return pl.DataFrame(
        {
            "source": [source] * n,
            "big": [2**40 + i for i in range(n)],
            "small": [None if i == 1 else -i for i in range(n)],
            "real": [0.1 * i if i != 2 else None for i in range(n)],
            "single": [1.5 * i for i in range(n)],
            "flag": [i % 2 == 0 if i != 1 else None for i in range(n)],
            "at": [datetime(2026, 1, 2, 3, 4, 5, 678901 + i) for i in range(n)],
            "doc": ['{"a": [1, 2]}', None, '{"b": "c"}'][:n],
            "words": [["x", "y"], [], None][:n],
            "turns": [[{"from": "human", "value": "q?"}, {"from": "gpt", "value": "a."}], [], None][
                :n
            ],
            "tag": [{"category_id": 1, "name": "dog", "score": 0.5}, None, None][:n],
        }
    )


def through_duckdb(table: Table, frame: pl.DataFrame) -> pl.DataFrame:
    """What the DuckDB path stores and returns for ``frame``."""
    with duckdb.connect() as con:
        con.execute(table.ddl())
        con.register("incoming", frame.to_arrow())
        cols = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in table.columns.items())
        con.execute(f'INSERT INTO "{table.name}" SELECT {cols} FROM incoming')
        return con.execute(f'SELECT * FROM "{table.name}"').pl()


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path) -> Iterator[str]:
    if request.param == "local":
        yield str(tmp_path / "tables")
        return
    name = f"memory://vlit-test-{uuid.uuid4().hex}"
    yield name
    fs, path = tablestore.filesystem(name)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_round_trip_reads_back_what_duckdb_returns_for_every_column_type(root):
    frame = every_type_rows("a")
    shard = tablestore.write_shard(root, EVERY_TYPE, "a", "r1", 0, frame)
    assert shard.rows == 3 and shard.path == "test__every_type/source=a/run=r1/shard-00000.parquet"
    assert tablestore.read_table(root, EVERY_TYPE).height == 0  # written, not committed
    tablestore.commit(root, "a", {EVERY_TYPE.name: [shard]})
    back = tablestore.read_table(root, EVERY_TYPE, "a")
    expected = through_duckdb(EVERY_TYPE, frame)
    assert back.schema == expected.schema
    assert back.equals(expected)


def test_a_rerun_replaces_exactly_its_sources_files_and_vacuum_removes_the_old_ones(root):
    fs, base = tablestore.filesystem(root)

    def rows(source: str, run: str, ids: range) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "source": [source] * len(ids),
                "category_id": list(ids),
                "name": [f"n{i}" for i in ids],
                "supercategory": ["s"] * len(ids),
                "run_id": [run] * len(ids),
            }
        )

    a1 = [
        tablestore.write_shard(root, RAW_CATEGORIES, "a", "r1", i, rows("a", "r1", range(i, 10, 2)))
        for i in range(2)
    ]
    b1 = [tablestore.write_shard(root, RAW_CATEGORIES, "b", "r1", 0, rows("b", "r1", range(4)))]
    images = tablestore.write_shard(root, RAW_IMAGES, "a", "r1", 0, RAW_IMAGES.empty_frame())
    tablestore.commit(root, "a", {RAW_CATEGORIES.name: a1, RAW_IMAGES.name: [images]})
    tablestore.commit(root, "b", {RAW_CATEGORIES.name: b1})
    manifest_b = fs.cat_file(f"{base}/_manifests/source=b.json")

    a2 = [tablestore.write_shard(root, RAW_CATEGORIES, "a", "r2", 0, rows("a", "r2", range(3)))]
    tablestore.commit(root, "a", {RAW_CATEGORIES.name: a2})

    got = tablestore.read_table(root, RAW_CATEGORIES).sort("source", "category_id")
    assert got.select("source", "category_id", "run_id").rows() == [
        ("a", 0, "r2"),
        ("a", 1, "r2"),
        ("a", 2, "r2"),
        ("b", 0, "r1"),
        ("b", 1, "r1"),
        ("b", 2, "r1"),
        ("b", 3, "r1"),
    ]
    assert fs.cat_file(f"{base}/_manifests/source=b.json") == manifest_b  # b untouched
    assert tablestore.read_manifest(root, "a").tables[RAW_IMAGES.name].files == (
        (images.path, 0),
    )  # the other table of a keeps its entry
    old = sorted(f.path for f in a1)
    assert all(fs.exists(f"{base}/{p}") for p in old)  # a reader may still hold them
    assert tablestore.vacuum(root, older_than_s=3600) == []
    assert sorted(tablestore.vacuum(root, older_than_s=0)) == old
    assert not any(fs.exists(f"{base}/{p}") for p in old)
    assert not fs.exists(f"{base}/raw__categories/source=a/run=r1")
    assert tablestore.read_table(root, RAW_CATEGORIES).height == 7


def test_vacuum_removes_files_never_committed_and_commit_refuses_missing_shards(root):
    orphan = tablestore.write_shard(
        root, RAW_CATEGORIES, "a", "r1", 0, RAW_CATEGORIES.empty_frame()
    )
    assert tablestore.vacuum(root, older_than_s=0) == [orphan.path]
    with pytest.raises(FileNotFoundError, match="shard missing"):
        tablestore.commit(root, "a", {RAW_CATEGORIES.name: [orphan]})
    assert tablestore.manifests(root) == {}


def test_commit_refuses_shards_of_another_table_source_or_two_runs(root):
    frame = RAW_CATEGORIES.empty_frame()
    one = tablestore.write_shard(root, RAW_CATEGORIES, "a", "r1", 0, frame)
    two = tablestore.write_shard(root, RAW_CATEGORIES, "a", "r2", 1, frame)
    with pytest.raises(ValueError, match="one commit holds runs"):
        tablestore.commit(root, "a", {RAW_CATEGORIES.name: [one, two]})
    with pytest.raises(ValueError, match="not raw__categories/b"):
        tablestore.commit(root, "b", {RAW_CATEGORIES.name: [one]})
    with pytest.raises(ValueError, match="other sources"):
        tablestore.write_shard(root, RAW_CATEGORIES, "b", "r1", 0, every_type_rows("a"))
    with pytest.raises(ValueError, match="cannot be part of a table file path"):
        tablestore.write_shard(root, RAW_CATEGORIES, "../x", "r1", 0, frame)


def categories(source: str, run: str, n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "source": [source] * n,
            "category_id": list(range(n)),
            "name": [f"c{i}" for i in range(n)],
            "supercategory": [None] * n,
            "run_id": [run] * n,
        },
        schema_overrides={"supercategory": pl.String},
    )


def test_warehouse_keeps_file_backed_tables_in_files_and_small_ones_in_duckdb(root, tmp_path):
    db = tmp_path / "w.duckdb"
    metric = pl.DataFrame(
        {
            "run_id": ["r"],
            "asset": ["raw"],
            "source": ["a"],
            "metric": ["m"],
            "value": [1.0],
            "recorded_at": [datetime(2026, 1, 1)],
        }
    )
    with warehouse.connect(db, table_root=root) as con:
        assert not warehouse.table_exists(con, RAW_CATEGORIES.name)
        with warehouse.transaction(con):
            warehouse.replace_source(con, RAW_CATEGORIES, categories("a", "r", 3), "a")
            warehouse.upsert(con, META_DATASET_METRICS, metric)
            # the transaction reads its own writes, as it would from a DuckDB table
            assert warehouse.read_source(con, RAW_CATEGORIES, "a").height == 3
            assert tablestore.manifests(root) == {}  # nothing published yet
        assert tablestore.read_manifest(root, "a").tables[RAW_CATEGORIES.name].rows == 3
        warehouse.replace_all(con, FINAL_DECISIONS, FINAL_DECISIONS.empty_frame())
        assert tablestore.read_manifest(root, tablestore.ALL_SOURCES).tables[FINAL_DECISIONS.name]
        with pytest.raises(ValueError, match="lives in table files"):
            warehouse.upsert(con, RAW_CATEGORIES, categories("a", "r", 1))
        with pytest.raises(RuntimeError, match="boom"), warehouse.transaction(con):
            warehouse.replace_source(con, RAW_CATEGORIES, categories("a", "r2", 1), "a")
            warehouse.upsert(con, META_DATASET_METRICS, metric.with_columns(value=pl.lit(2.0)))
            raise RuntimeError("boom")
        assert warehouse.read_source(con, RAW_CATEGORIES, "a")["run_id"].to_list() == ["r"] * 3
        assert con.execute("SELECT value FROM meta__dataset_metrics").fetchall() == [(1.0,)]
    with duckdb.connect(str(db), read_only=True) as plain:
        tables = {r[0] for r in plain.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert tables == {META_DATASET_METRICS.name}  # the large tables never entered the file
    with warehouse.connect(db, read_only=True, table_root=root) as con:
        assert con.execute("SELECT count(*) FROM raw__categories").fetchone() == (3,)
        assert warehouse.table_exists(con, FINAL_DECISIONS.name)
        assert warehouse.read_source(con, FINAL_DECISIONS).height == 0
        assert warehouse.table_root(con) == root
    with warehouse.connect(db, read_only=True) as con:  # default mode: no table files
        assert not warehouse.table_exists(con, RAW_CATEGORIES.name)


def test_a_connection_sees_others_commits_after_refresh_views(tmp_path):
    root = str(tmp_path / "tables")
    writer = tablestore.write_shard(root, RAW_CATEGORIES, "b", "r", 0, categories("b", "r", 4))
    with warehouse.connect(tmp_path / "w.duckdb", table_root=root) as con:
        warehouse.replace_source(con, RAW_CATEGORIES, categories("a", "r", 2), "a")
        tablestore.commit(root, "b", {RAW_CATEGORIES.name: [writer]})  # another process
        assert warehouse.read_source(con, RAW_CATEGORIES).height == 2  # its snapshot
        warehouse.refresh_views(con)
        assert warehouse.read_source(con, RAW_CATEGORIES).height == 6


def test_replace_all_of_a_partitioned_file_table_replaces_every_source(tmp_path):
    root = str(tmp_path / "tables")
    with warehouse.connect(tmp_path / "w.duckdb", table_root=root) as con:
        warehouse.replace_source(con, RAW_CATEGORIES, categories("a", "r", 2), "a")
        warehouse.replace_source(con, RAW_CATEGORIES, categories("b", "r", 2), "b")
        warehouse.replace_all(con, RAW_CATEGORIES, categories("b", "r2", 1))
        got = warehouse.read_source(con, RAW_CATEGORIES)
    assert got.select("source", "run_id").rows() == [("b", "r2")]
    assert tablestore.read_manifest(root, "a").tables[RAW_CATEGORIES.name].files == ()


# Many writers. Each writer process commits `RUNS` runs of its own source, each run `SHARDS`
# shards of `ROWS` rows tagged with the run and shard; a reader queries throughout.
SHARDS, ROWS, RUNS = 3, 40, 4


def _writer(root: str, source: str, start: mp.synchronize.Barrier) -> None:
    start.wait()
    for run_no in range(RUNS):
        run = f"{source}-run{run_no}"
        shards = []
        for shard in range(SHARDS):
            frame = categories(source, run, ROWS).with_columns(
                pl.col("category_id") + shard * ROWS, name=pl.lit(f"shard{shard}")
            )
            shards.append(tablestore.write_shard(root, RAW_CATEGORIES, source, run, shard, frame))
        tablestore.commit(root, source, {RAW_CATEGORIES.name: shards})


def _snapshot(root: str) -> list[tuple[str, str, str, int]]:
    snapshot = tablestore.manifests(root)
    sql = tablestore.view_sql(
        root, RAW_CATEGORIES, tablestore.table_entries(snapshot, RAW_CATEGORIES.name)
    )
    with duckdb.connect() as con:
        return con.execute(
            f"SELECT source, run_id, name, count(*) FROM ({sql}) GROUP BY ALL ORDER BY ALL"
        ).fetchall()


def _reader(root: str, stop: mp.synchronize.Event, out: mp.Queue) -> None:
    snapshots = torn = errors = 0
    while not stop.is_set():
        try:
            rows = _snapshot(root)
        except Exception as exc:  # a reader error is a failure the test reports
            errors += 1
            out.put(("error", repr(exc)))
            continue
        snapshots += 1
        runs: dict[str, set[str]] = {}
        for source, run, _shard, n in rows:
            runs.setdefault(source, set()).add(run)
            torn += n != ROWS
        shards: dict[str, int] = {}
        for source, _run, _shard, _n in rows:
            shards[source] = shards.get(source, 0) + 1
        torn += sum(len(r) > 1 for r in runs.values())
        torn += sum(n != SHARDS for n in shards.values())
    out.put(("done", (snapshots, torn, errors)))


@pytest.mark.slow
def test_a_reader_never_sees_a_torn_snapshot_while_writers_commit_sources_in_parallel(tmp_path):
    root = str(tmp_path / "tables")
    writers = ["w0", "w1", "w2"]
    ctx = mp.get_context("spawn")
    start, stop, out = ctx.Barrier(len(writers)), ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(root, stop, out))
    reader.start()
    procs = [ctx.Process(target=_writer, args=(root, w, start)) for w in writers]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    time.sleep(0.2)  # let the reader see the final state too
    stop.set()
    results = [out.get(timeout=120)]
    while results[-1][0] != "done":
        results.append(out.get(timeout=120))
    reader.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * len(writers)  # no lock error, no failure
    snapshots, torn, errors = results[-1][1]
    assert results[:-1] == [] and errors == 0
    assert snapshots > 0 and torn == 0
    final = _snapshot(root)
    assert final == [
        (w, f"{w}-run{RUNS - 1}", f"shard{s}", ROWS) for w in writers for s in range(SHARDS)
    ]
    removed = tablestore.vacuum(root, older_than_s=0)
    assert len(removed) == len(writers) * (RUNS - 1) * SHARDS
    assert _snapshot(root) == final


def test_a_memory_root_is_readable_through_warehouse_views(tmp_path):
    root = f"memory://vlit-test-{uuid.uuid4().hex}"
    try:
        with warehouse.connect(tmp_path / "w.duckdb", table_root=root) as con:
            warehouse.replace_source(con, RAW_CATEGORIES, categories("a", "r", 2), "a")
            assert con.execute("SELECT sum(category_id) FROM raw__categories").fetchone() == (1,)
        fs = fsspec.filesystem("memory")
        assert fs.exists(f"{tablestore.filesystem(root)[1]}/_manifests/source=a.json")
    finally:
        fs, path = tablestore.filesystem(root)
        fs.rm(path, recursive=True)


def test_a_local_root_as_file_url_is_the_same_store(tmp_path):
    shard = tablestore.write_shard(
        f"file://{tmp_path}", RAW_CATEGORIES, "a", "r", 0, categories("a", "r", 2)
    )
    tablestore.commit(str(tmp_path), "a", {RAW_CATEGORIES.name: [shard]})
    assert Path(tmp_path, shard.path).is_file()
    assert tablestore.read_table(f"file://{tmp_path}", RAW_CATEGORIES).height == 2
