"""DuckDB storage: connect (waiting out another writer's lock), create tables, replace a source.

A stage's writes for one source go inside one ``transaction(con)``: they commit together or
not at all, so a failure half-way leaves the previous state of every table whole.

With a table root (``connect(..., table_root=...)``) the large per-row tables
(``Table.file_backed``) live as Parquet files under it (core/tablestore.py) and the connection
shows them as TEMP views of the same names; the small tables stay in the DuckDB file. Their
writes still go through ``transaction``: shards are written at once, and at the end each touched
source's manifest is written to a temp name, DuckDB commits, and then the manifests are renamed
into place. A failure before the DuckDB commit publishes nothing. A kill between the DuckDB
commit and the renames leaves the DuckDB tables one run ahead of the files of those sources
until the source is re-run (the new shards are orphans that ``tablestore.vacuum`` removes).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from vlit_assets.core import tablestore
from vlit_assets.core.schemas import TABLES, Table


class WarehouseBusy(RuntimeError):
    """Another process held the DuckDB write lock for longer than we were willing to wait."""


@dataclass
class _TableFiles:
    """A connection's file-backed tables: the manifests its views show, and unpublished shards."""

    root: str
    snapshot: dict[str, tablestore.Manifest]
    pending: dict[str, dict[str, list[tablestore.ShardFile]]] = field(default_factory=dict)
    run: str | None = None  # the run id of the open transaction's shards
    staged: dict[str, Table] = field(default_factory=dict)  # tables with pending shards
    views: set[str] = field(default_factory=set)


# Connections (by id) opened with a table root; dropped when the connection closes.
_table_files: dict[int, _TableFiles] = {}


@contextmanager
def connect(
    path: str | Path,
    *,
    read_only: bool = False,
    wait_s: float = 120.0,
    table_root: str | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the DuckDB file, retrying while another process holds its lock.

    DuckDB allows one writing process per file. Writers are serialised by a Dagster concurrency
    pool; this wait covers the rest (a reader such as ``vlit`` or a notebook opening the file
    while a run writes). With ``table_root`` the file-backed tables are views over the
    manifests committed when the connection opened (and its own commits since).
    """
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                if "lock" in str(exc).lower():
                    raise WarehouseBusy(f"{path}: locked for {wait_s:.0f} s: {exc}") from exc
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)
    try:
        if table_root is not None:
            files = _TableFiles(table_root, tablestore.manifests(table_root))
            _table_files[id(con)] = files
            tablestore.register(con, table_root)
            for table in _FILE_TABLES:
                if tablestore.table_entries(files.snapshot, table.name):
                    _create_view(con, files, table)
        yield con
    finally:
        _table_files.pop(id(con), None)
        con.close()


_FILE_TABLES = [t for t in TABLES.values() if t.file_backed]


def table_root(con: duckdb.DuckDBPyConnection) -> str | None:
    """The table root the connection was opened with, or None (every table in DuckDB)."""
    files = _table_files.get(id(con))
    return files.root if files else None


def _files_of(con: duckdb.DuckDBPyConnection, table: Table) -> _TableFiles | None:
    return _table_files.get(id(con)) if table.file_backed else None


def _create_view(con: duckdb.DuckDBPyConnection, files: _TableFiles, table: Table) -> None:
    """(Re)define the table's view: the snapshot, with this connection's pending shards over it."""
    overlay = {s: shards[table.name] for s, shards in files.pending.items() if table.name in shards}
    entries = [
        m.tables[table.name]
        for source, m in files.snapshot.items()
        if table.name in m.tables and source not in overlay
    ]
    now = time.time()  # pending shards read last, as rows inserted now would
    entries += [
        tablestore.Entry(
            files.run or "", now, tuple(table.columns), tuple((f.path, f.rows) for f in shards)
        )
        for shards in overlay.values()
    ]
    sql = tablestore.view_sql(files.root, table, entries)
    con.execute(f'CREATE OR REPLACE TEMP VIEW "{table.name}" AS {sql}')
    files.views.add(table.name)


def refresh_views(con: duckdb.DuckDBPyConnection) -> None:
    """Show the manifests committed now (a long-lived connection sees newer runs of others)."""
    files = _table_files.get(id(con))
    if files is None:
        return
    if files.pending:
        raise RuntimeError("refresh_views inside a transaction with unpublished writes")
    files.snapshot = tablestore.manifests(files.root)
    for table in _FILE_TABLES:
        if table.name in files.views or tablestore.table_entries(files.snapshot, table.name):
            _create_view(con, files, table)


# Connections (by id) inside ``transaction``: the write helpers then join it instead of
# committing on their own. A connection is used by one thread at a time, as DuckDB requires.
_open_transactions: set[int] = set()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Make every write inside one transaction: all commit at the end, or none does.

    ``replace_source``, ``replace_all`` and ``upsert`` called inside join it. Nested use joins
    the outer transaction. Any exception (or a signal raised as one) rolls everything back.
    """
    if id(con) in _open_transactions:
        yield con
        return
    con.execute("BEGIN TRANSACTION")
    _open_transactions.add(id(con))
    files = _table_files.get(id(con))
    prepared: list[tablestore.PreparedCommit] = []
    try:
        yield con
        if files is not None:
            prepared = [
                tablestore.prepare_commit(files.root, source, shards)
                for source, shards in files.pending.items()
            ]
    except BaseException:
        _open_transactions.discard(id(con))
        # If the connection itself broke, DuckDB drops its uncommitted work with it.
        with suppress(duckdb.Error):
            con.execute("ROLLBACK")
        _abandon(con, files, prepared)
        raise
    _open_transactions.discard(id(con))
    try:
        con.execute("COMMIT")
    except BaseException:
        _abandon(con, files, prepared)
        raise
    if files is not None:
        _publish(con, files, prepared)


def _abandon(
    con: duckdb.DuckDBPyConnection,
    files: _TableFiles | None,
    prepared: list[tablestore.PreparedCommit],
) -> None:
    """Drop unpublished shards: the views show the snapshot again; the shards are orphans."""
    if files is None:
        return
    for commit in prepared:
        with suppress(OSError):
            commit.abandon()
    touched = _unstage(files)
    with suppress(duckdb.Error):
        for table in touched:
            if tablestore.table_entries(files.snapshot, table.name):
                _create_view(con, files, table)
            else:  # the view was new in the rolled-back transaction
                con.execute(f'DROP VIEW IF EXISTS temp.main."{table.name}"')
                files.views.discard(table.name)


def _publish(
    con: duckdb.DuckDBPyConnection, files: _TableFiles, prepared: list[tablestore.PreparedCommit]
) -> None:
    touched = _unstage(files)
    for commit in prepared:
        files.snapshot[commit.manifest.source] = commit.publish()
    for table in touched:
        _create_view(con, files, table)


def _unstage(files: _TableFiles) -> list[Table]:
    touched = list(files.staged.values())
    files.pending.clear()
    files.staged.clear()
    files.run = None
    return touched


def in_transaction(con: duckdb.DuckDBPyConnection) -> bool:
    return id(con) in _open_transactions


def ensure_table(con: duckdb.DuckDBPyConnection, table: Table) -> None:
    """Create the table, or add the columns a newer schema declared (additive migrations only).

    Does nothing to a table that is already current, so read-only connections can call it.
    A file-backed table of a connection with a table root gets its (empty) view instead.
    """
    files = _files_of(con, table)
    if files is not None:
        if table.name not in files.views:
            _create_view(con, files, table)
        return
    have = _columns(con, table.name)
    if not have:
        con.execute(table.ddl())
        return
    for column, kind in table.columns.items():
        if column not in have:
            con.execute(f'ALTER TABLE "{table.name}" ADD COLUMN "{column}" {kind}')


def _columns(con: duckdb.DuckDBPyConnection, name: str) -> set[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [name]
    ).fetchall()
    return {row[0] for row in rows}


def _column_list(table: Table) -> str:
    # Named, not positional: a table migrated by ALTER ... ADD COLUMN has its own column order.
    return "(" + ", ".join(f'"{c}"' for c in table.columns) + ")"


def _select_cast(table: Table, relation_name: str) -> str:
    cols = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in table.columns.items())
    return f"SELECT {cols} FROM {relation_name}"


def _conform(table: Table, df: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in table.columns if c not in df.columns]
    if missing:
        raise ValueError(f"{table.name}: frame lacks columns {missing}")
    return df.select(list(table.columns))


def _write(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    df: pl.DataFrame,
    delete_sql: str,
    params: list[object],
) -> int:
    """Delete what ``delete_sql`` selects and insert ``df``, in one transaction.

    Inside ``transaction(con)`` the two statements join the caller's transaction.
    """
    df = _conform(table, df)
    con.register("incoming_rows", df.to_arrow())
    try:
        with transaction(con):
            ensure_table(con, table)
            con.execute(delete_sql, params)
            if df.height:
                con.execute(
                    f'INSERT INTO "{table.name}" {_column_list(table)} '
                    f"{_select_cast(table, 'incoming_rows')}"
                )
    finally:
        con.unregister("incoming_rows")
    return df.height


def _table(table: Table | str) -> Table:
    return TABLES[table] if isinstance(table, str) else table


def _stage(
    con: duckdb.DuckDBPyConnection,
    files: _TableFiles,
    table: Table,
    frames: Mapping[str, pl.DataFrame],
) -> int:
    """Write the frames (by source) as shards, to be published when the transaction commits."""
    with transaction(con):
        files.run = files.run or tablestore.new_run_id()
        for source, frame in frames.items():
            shards = tablestore.write_frame(files.root, table, source, files.run, frame)
            files.pending.setdefault(source, {})[table.name] = shards
        files.staged[table.name] = table
        _create_view(con, files, table)
    return sum(f.height for f in frames.values())


def replace_source(
    con: duckdb.DuckDBPyConnection, table: Table | str, df: pl.DataFrame, source: str
) -> int:
    """Replace exactly the rows of ``source`` in ``table`` with ``df``, in one transaction."""
    table = _table(table)
    if not table.partitioned:
        raise ValueError(f"{table.name} is not partitioned by source")
    if df.height and (df["source"] != source).any():
        raise ValueError(f"{table.name}: frame holds rows of sources other than {source!r}")
    files = _files_of(con, table)
    if files is not None:
        return _stage(con, files, table, {source: _conform(table, df)})
    return _write(con, table, df, f'DELETE FROM "{table.name}" WHERE source = ?', [source])


def replace_all(con: duckdb.DuckDBPyConnection, table: Table | str, df: pl.DataFrame) -> int:
    """Replace the whole of an unpartitioned table (or every source of a partitioned one)."""
    table = _table(table)
    files = _files_of(con, table)
    if files is None:
        return _write(con, table, df, f'DELETE FROM "{table.name}"', [])
    df = _conform(table, df)
    if not table.partitioned:
        return _stage(con, files, table, {tablestore.ALL_SOURCES: df})
    # Every source the table has now, or gets: a source absent from df is emptied.
    sources = set(df["source"].unique().to_list()) | {
        s for s, m in files.snapshot.items() if table.name in m.tables
    }
    return _stage(con, files, table, {s: df.filter(pl.col("source") == s) for s in sorted(sources)})


def upsert(con: duckdb.DuckDBPyConnection, table: Table | str, df: pl.DataFrame) -> int:
    """Insert rows, replacing those with the same key."""
    table = _table(table)
    if _files_of(con, table) is not None:
        raise ValueError(f"{table.name} lives in table files: replace a source, not single rows")
    on = " AND ".join(f't."{k}" = a."{k}"' for k in table.key)
    return _write(
        con, table, df, f'DELETE FROM "{table.name}" t USING incoming_rows a WHERE {on}', []
    )


def read_source(
    con: duckdb.DuckDBPyConnection, table: Table | str, source: str | None = None
) -> pl.DataFrame:
    """Rows of ``source`` (or all rows) as polars; an absent table reads as an empty frame.

    Columns a newer schema added are migrated on a writable connection; on a read-only one
    they read as typed nulls, so readers never need a writer to have run first.
    """
    table = _table(table)
    files = _files_of(con, table)
    if files is not None:
        if table.name not in files.views:
            return table.empty_frame()
        where, params = ("WHERE source = ?", [source]) if source is not None else ("", [])
        return con.execute(f'SELECT * FROM "{table.name}" {where}', params).pl()
    have = _columns(con, table.name)
    if not have:
        return table.empty_frame()
    missing = [c for c in table.columns if c not in have]
    if missing:
        try:
            ensure_table(con, table)
            missing = []
        except duckdb.Error:
            pass  # read-only: fill the missing columns below
    cols = ", ".join(
        f'CAST(NULL AS {table.columns[c]}) AS "{c}"' if c in missing else f'"{c}"'
        for c in table.columns
    )
    where, params = ("WHERE source = ?", [source]) if source is not None else ("", [])
    return con.execute(f'SELECT {cols} FROM "{table.name}" {where}', params).pl()


def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    files = _files_of(con, TABLES[name]) if name in TABLES else None
    if files is not None:
        return name in files.views
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchone()
    return bool(row and row[0])
