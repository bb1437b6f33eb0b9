"""Table storage that many writers can share: Parquet + manifest, Delta Lake and Iceberg, measured.

Run: ``.venv/bin/python benchmarks/storage_formats.py --db WAREHOUSE.duckdb [--writers 4]``
(needs the ``[scale]`` extra: ``deltalake``, ``pyiceberg[sql-sqlite]``). The input is a real
per-row table (``scored__conversations`` of a ``vlit run``, 87 columns with lists and structs);
each writer process writes one shard of it, a copy with shard-unique conversation ids.

Per format, under a temp directory:

1. Source ``b`` is written once (one shard, untimed): the neighbour a re-run must not touch.
2. Parallel write: ``--writers`` processes, started together behind a barrier after their
   imports, each write one shard of source ``a`` and commit it. Wall time is first start to
   last commit; commit retries (optimistic concurrency conflicts) are counted.
3. Re-run of source ``a``: its shards are replaced by a new run tag, atomically.
4. All along steps 2-3 a reader process queries the table through DuckDB in a loop and counts
   snapshots that break atomicity: a (source, shard) with a row count other than a full shard,
   or a source mixing two run tags.
5. Reads: resolving the snapshot into a DuckDB view, a group-by over all rows, a point lookup
   (median of 5), then files and bytes on disk.

The formats:

- ``parquet``: ``<root>/source=S/run=R/shard-NNNN.parquet``, each written to a temp name and
  renamed; a source's run becomes visible when the coordinator renames its manifest
  ``_manifests/source=S.json`` into place (one rename = one atomic commit per source; a re-run
  is a new run directory plus a manifest swap). Superseded run directories stay until a vacuum
  (readers may still hold the old file list), as Delta and Iceberg also keep old files.
- ``delta``: ``deltalake.write_deltalake`` appends, partitioned by source; the re-run is one
  ``mode="overwrite", predicate="source = 'a'"`` commit by the coordinator (it holds every shard:
  delta-rs has no public "many writers' files, one commit" call that this script uses).
  Read through ``DeltaTable.to_pyarrow_dataset()`` registered in DuckDB (``delta_scan`` needs
  DuckDB's delta extension, a download).
- ``iceberg``: pyiceberg with a SQL catalog on SQLite; appends retried on
  ``CommitFailedException`` (pyiceberg retries 4 times itself; both kinds are counted); the
  re-run is ``overwrite(overwrite_filter=source == 'a')``.
  Read with ``read_parquet`` over the data files that the snapshot plans (no delete files:
  pyiceberg rewrites rather than writing deletes, and the script asserts it).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FORMATS = ("parquet", "delta", "iceberg")
TABLE = "scored__conversations"
AGG_SQL = (
    "SELECT source, instruction_type, count(*) AS n, avg(relevance) AS relevance, "
    "avg(chair_i) AS chair_i, sum(n_grammar_errors) AS grammar FROM t GROUP BY ALL"
)
POINT_SQL = "SELECT conversation_id, turns FROM t WHERE conversation_id = ?"
CHECK_SQL = "SELECT source, shard, run_tag, count(*) AS n FROM t GROUP BY ALL"


def shard_table(base: pa.Table, source: str, shard: int, run_tag: str) -> pa.Table:
    """One shard: the base rows under new ids, tagged with source, shard and run."""
    n = base.num_rows
    ids = pc.binary_join_element_wise(base["conversation_id"], f"#{source}{shard}", "")
    out = base.set_column(base.schema.get_field_index("conversation_id"), "conversation_id", ids)
    out = out.set_column(out.schema.get_field_index("source"), "source", pa.array([source] * n))
    out = out.append_column("shard", pa.array([shard] * n, pa.int32()))
    return out.append_column("run_tag", pa.array([run_tag] * n))


# --- the three formats: write one shard, commit a source's run, open a DuckDB view ---------------


def _parquet_write_shard(root: Path, table: pa.Table, source: str, shard: int, run_tag: str):
    run_dir = root / f"source={source}" / f"run={run_tag}"
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"shard-{shard:04d}.parquet"
    tmp = run_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, final)
    return str(final)


def _parquet_commit(root: Path, source: str, run_tag: str, files: list[str]) -> None:
    manifests = root / "_manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    tmp = manifests / f".source={source}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps({"source": source, "run": run_tag, "files": sorted(files)}))
    os.replace(tmp, manifests / f"source={source}.json")


def _parquet_files(root: Path) -> list[str]:
    files: list[str] = []
    for manifest in sorted((root / "_manifests").glob("source=*.json")):
        files.extend(json.loads(manifest.read_text())["files"])
    return files


def _iceberg_catalog(root: Path):
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(
        "bench", uri=f"sqlite:///{root}/catalog.db", warehouse=f"file://{root}/warehouse"
    )


class _RetryCounter(logging.Handler):
    """Counts pyiceberg's own commit retries, which it only logs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "concurrent update" in record.getMessage()


def _iceberg_append(root: Path, table: pa.Table) -> int:
    from pyiceberg.exceptions import CommitFailedException

    counter = _RetryCounter()
    logging.getLogger("pyiceberg.table").addHandler(counter)
    catalog = _iceberg_catalog(root)
    for attempt in range(50):
        try:
            catalog.load_table("bench.t").append(table)
            return attempt + counter.count
        except CommitFailedException:
            time.sleep(0.05 * (attempt + 1))
    raise RuntimeError("iceberg append: 50 commit conflicts in a row")


def _delta_append(root: Path, table: pa.Table) -> int:
    from deltalake import write_deltalake

    write_deltalake(str(root), table, mode="append", partition_by=["source"])
    return 0


def write_shard(fmt: str, root: Path, table: pa.Table, source: str, shard: int, run_tag: str):
    """Write and (except parquet, whose coordinator commits the manifest) commit one shard."""
    if fmt == "parquet":
        return _parquet_write_shard(root, table, source, shard, run_tag), 0
    if fmt == "delta":
        return None, _delta_append(root, table)
    return None, _iceberg_append(root, table)


def create_empty(fmt: str, root: Path, schema: pa.Schema) -> None:
    if fmt == "iceberg":
        catalog = _iceberg_catalog(root)
        catalog.create_namespace("bench")
        catalog.create_table("bench.t", schema=schema)


def replace_source(fmt: str, root: Path, tables: list[pa.Table], source: str) -> None:
    """The coordinator's atomic re-run of one source (parquet shards are already written)."""
    data = pa.concat_tables(tables)
    if fmt == "delta":
        from deltalake import write_deltalake

        quoted = source.replace("'", "''")
        write_deltalake(
            str(root), data, mode="overwrite", predicate=f"source = '{quoted}'",
            partition_by=["source"],
        )  # fmt: skip
    elif fmt == "iceberg":
        from pyiceberg.expressions import EqualTo

        _iceberg_catalog(root).load_table("bench.t").overwrite(
            data, overwrite_filter=EqualTo("source", source)
        )


def open_view(fmt: str, root: Path, con: duckdb.DuckDBPyConnection) -> None:
    """Resolve the current snapshot into view ``t`` on ``con``."""
    if fmt == "delta":
        from deltalake import DeltaTable

        con.register("t", DeltaTable(str(root)).to_pyarrow_dataset())
        return
    if fmt == "parquet":
        files = _parquet_files(root)
    else:
        tasks = list(_iceberg_catalog(root).load_table("bench.t").scan().plan_files())
        assert all(not task.delete_files for task in tasks), "iceberg snapshot has delete files"
        files = [task.file.file_path.removeprefix("file://") for task in tasks]
    if not files:
        con.execute("CREATE OR REPLACE TEMP VIEW t AS SELECT NULL AS source LIMIT 0")
        return
    con.read_parquet(files).create_view("t", replace=True)


# --- processes ---------------------------------------------------------------------------------


def _writer(fmt, root, base_path, shard, run_tag, barrier, results):
    base = pq.read_table(base_path)
    table = shard_table(base, "a", shard, run_tag)
    if fmt == "delta":
        import deltalake  # noqa: F401  (import before the barrier: timed work is writing only)
    elif fmt == "iceberg":
        _iceberg_catalog(Path(root))
    barrier.wait()
    start = time.time()
    path, retries = write_shard(fmt, Path(root), table, "a", shard, run_tag)
    results.put((shard, start, time.time(), path, retries))


def _reader(fmt, root, rows_per_shard, stop, results):
    reads = bad = errors = 0
    first_error = ""
    while not stop.is_set():
        con = duckdb.connect()
        try:
            open_view(fmt, Path(root), con)
            if con.execute("SELECT count(*) FROM (SELECT * FROM t LIMIT 1)").fetchone()[0]:
                rows = con.execute(CHECK_SQL).fetchall()
                if any(n != rows_per_shard for *_, n in rows):
                    bad += 1
                tags = con.execute(
                    "SELECT source, count(DISTINCT run_tag) FROM t GROUP BY ALL"
                ).fetchall()
                if any(k > 1 for _, k in tags):
                    bad += 1
            reads += 1
        except Exception as exc:  # a reader must report, not hide, a torn snapshot
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"[:200]
        finally:
            con.close()
    results.put((reads, bad, errors, first_error))


def bench_format(fmt: str, work: Path, base_path: Path, writers: int) -> dict:
    ctx = mp.get_context("spawn")
    root = work / fmt
    root.mkdir(parents=True)
    base = pq.read_table(base_path)
    rows = base.num_rows
    b_table = shard_table(base, "b", 0, "b-1")
    create_empty(fmt, root, b_table.schema)
    path, _ = write_shard(fmt, root, b_table, "b", 0, "b-1")
    if fmt == "parquet":
        _parquet_commit(root, "b", "b-1", [path])

    stop, reader_out = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(fmt, str(root), rows, stop, reader_out))
    reader.start()

    barrier, results = ctx.Barrier(writers), ctx.Queue()
    args = (fmt, str(root), str(base_path))
    procs = [
        ctx.Process(target=_writer, args=(*args, s, "a-1", barrier, results))
        for s in range(writers)
    ]
    for p in procs:
        p.start()
    done = [results.get() for _ in procs]
    for p in procs:
        p.join()
    t_commit = time.time()
    if fmt == "parquet":
        _parquet_commit(root, "a", "a-1", [d[3] for d in done])
    write_s = time.time() - min(d[1] for d in done)
    commit_s = time.time() - t_commit
    retries = sum(d[4] for d in done)

    new_shards = [shard_table(base, "a", s, "a-2") for s in range(writers)]
    t0 = time.time()
    if fmt == "parquet":
        files = [_parquet_write_shard(root, t, "a", s, "a-2") for s, t in enumerate(new_shards)]
        _parquet_commit(root, "a", "a-2", files)
    else:
        replace_source(fmt, root, new_shards, "a")
    replace_s = time.time() - t0
    time.sleep(0.5)  # give the reader a few snapshots after the re-run too
    stop.set()
    reads, bad, errors, first_error = reader_out.get()
    reader.join()

    con = duckdb.connect()
    lookup_id = f"{base['conversation_id'][0].as_py()}#a1"  # a row of the re-run, shard 1
    open_times, agg_times, point_times = [], [], []
    for _ in range(5):
        t0 = time.perf_counter()
        open_view(fmt, root, con)
        open_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        con.execute(AGG_SQL).fetchall()
        agg_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert con.execute(POINT_SQL, [lookup_id]).fetchall(), lookup_id
        point_times.append(time.perf_counter() - t0)
    counts = dict(con.execute("SELECT run_tag, count(*) FROM t GROUP BY ALL").fetchall())
    expected = {"a-2": writers * rows, "b-1": rows}
    files_on_disk = [p for p in root.rglob("*") if p.is_file()]
    return {
        "format": fmt,
        "write_s": write_s,
        "commit_s": commit_s,
        "retries": retries,
        "replace_s": replace_s,
        "open_ms": 1000 * statistics.median(open_times),
        "agg_ms": 1000 * statistics.median(agg_times),
        "point_ms": 1000 * statistics.median(point_times),
        "rows_ok": counts == expected,
        "reads": reads,
        "torn": bad,
        "read_errors": errors,
        "first_error": first_error,
        "files": len(files_on_disk),
        "data_files": sum(p.suffix == ".parquet" for p in files_on_disk),
        "mb": sum(p.stat().st_size for p in files_on_disk) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a vlit warehouse (DuckDB file)")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--formats", default=",".join(FORMATS))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vlit-storage-") as tmp:
        work = Path(tmp)
        base_path = work / "base.parquet"
        with duckdb.connect(args.db, read_only=True) as con:
            base = con.execute(f'SELECT * FROM "{TABLE}"').arrow().read_all()
        pq.write_table(base, base_path)
        print(
            f"{TABLE}: {base.num_rows} rows x {base.num_columns} columns per shard; "
            f"{args.writers} writers -> {args.writers * base.num_rows} rows in source a"
        )
        results = [
            bench_format(fmt, work, base_path, args.writers) for fmt in args.formats.split(",")
        ]

    cols = [
        ("format", "{:<8}"), ("write_s", "{:>8.2f}"), ("commit_s", "{:>8.3f}"),
        ("retries", "{:>7}"), ("replace_s", "{:>9.2f}"), ("open_ms", "{:>8.1f}"),
        ("agg_ms", "{:>7.1f}"), ("point_ms", "{:>8.1f}"), ("rows_ok", "{!s:>7}"),
        ("reads", "{:>5}"), ("torn", "{:>4}"), ("read_errors", "{:>11}"),
        ("files", "{:>5}"), ("data_files", "{:>10}"), ("mb", "{:>6.1f}"),
    ]  # fmt: skip
    print(" ".join(f"{name:>{len(fmt.format(results[0][name]))}}" for name, fmt in cols))
    for row in results:
        print(" ".join(fmt.format(row[name]) for name, fmt in cols))
    for row in results:
        if row["first_error"]:
            print(f"{row['format']}: first reader error: {row['first_error']}")


if __name__ == "__main__":
    main()
