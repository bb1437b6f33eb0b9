"""DuckDB storage: connect (waiting out another writer's lock), create tables, replace a source.

A stage's writes for one source go inside one ``transaction(con)``: they commit together or
not at all, so a failure half-way leaves the previous state of every table whole.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import polars as pl

from vlit_assets.core.schemas import TABLES, Table


class WarehouseBusy(RuntimeError):
    """Another process held the DuckDB write lock for longer than we were willing to wait."""


@contextmanager
def connect(
    path: str | Path, *, read_only: bool = False, wait_s: float = 120.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the DuckDB file, retrying while another process holds its lock.

    DuckDB allows one writing process per file. Writers are serialised by a Dagster concurrency
    pool; this wait covers the rest (a reader such as ``vlit`` or a notebook opening the file
    while a run writes).
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
        yield con
    finally:
        con.close()


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
    try:
        yield con
    except BaseException:
        _open_transactions.discard(id(con))
        # If the connection itself broke, DuckDB drops its uncommitted work with it.
        with suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
    _open_transactions.discard(id(con))
    con.execute("COMMIT")


def in_transaction(con: duckdb.DuckDBPyConnection) -> bool:
    return id(con) in _open_transactions


def ensure_table(con: duckdb.DuckDBPyConnection, table: Table) -> None:
    """Create the table, or add the columns a newer schema declared (additive migrations only).

    Does nothing to a table that is already current, so read-only connections can call it.
    """
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


def replace_source(
    con: duckdb.DuckDBPyConnection, table: Table | str, df: pl.DataFrame, source: str
) -> int:
    """Replace exactly the rows of ``source`` in ``table`` with ``df``, in one transaction."""
    table = _table(table)
    if not table.partitioned:
        raise ValueError(f"{table.name} is not partitioned by source")
    if df.height and (df["source"] != source).any():
        raise ValueError(f"{table.name}: frame holds rows of sources other than {source!r}")
    return _write(con, table, df, f'DELETE FROM "{table.name}" WHERE source = ?', [source])


def replace_all(con: duckdb.DuckDBPyConnection, table: Table | str, df: pl.DataFrame) -> int:
    """Replace the whole of an unpartitioned table (or every source of a partitioned one)."""
    table = _table(table)
    return _write(con, table, df, f'DELETE FROM "{table.name}"', [])


def upsert(con: duckdb.DuckDBPyConnection, table: Table | str, df: pl.DataFrame) -> int:
    """Insert rows, replacing those with the same key."""
    table = _table(table)
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
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchone()
    return bool(row and row[0])
