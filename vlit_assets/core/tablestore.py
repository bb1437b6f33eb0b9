"""Table files many writers share: Parquet per table, source, run and shard, published by manifests.

Layout under a root (a local path or an fsspec URL such as ``s3://bucket/prefix``)::

    <root>/<table>/source=<S>/run=<R>/shard-00000.parquet
    <root>/_manifests/source=<S>.json      # per table of S: run, columns, files, row counts
    <root>/_retired/source=<S>/<R>.json    # files a commit superseded, and when

A worker writes shards (``write_shard``, temp name then rename) that no reader sees; a
``commit`` makes a source's new runs visible by replacing its manifest with one rename, so a
reader sees all of a run's shards or none, and never two runs of one table and source. Old files
stay until ``vacuum``: a reader may still hold the previous manifest's file list.

Commits of different sources never touch the same file. Commits of one source read, change and
replace its manifest, so the caller serialises them (the warehouse does: it holds the DuckDB
write lock while it commits). Unpartitioned tables live under the pseudo-source ``_all``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import duckdb
import fsspec
import polars as pl
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from vlit_assets.core.schemas import TABLES, Table

ALL_SOURCES = "_all"  # the pseudo-source of unpartitioned tables (final__*)
MANIFESTS = "_manifests"
RETIRED = "_retired"
SHARD_ROWS = 250_000  # rows per shard file when a whole frame is written at once
COMPRESSION = "zstd"


@dataclass(frozen=True)
class ShardFile:
    """One written (not yet committed) shard: its path relative to the root and its rows."""

    table: str
    source: str
    run: str
    path: str
    rows: int
    columns: tuple[str, ...]  # as written, so a commit needs no schema


@dataclass(frozen=True)
class Entry:
    """What a manifest says about one table of one source."""

    run: str
    committed_at: float  # epoch seconds; readers list entries in this order
    columns: tuple[str, ...]
    files: tuple[tuple[str, int], ...]  # (path relative to the root, rows)

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "committed_at": self.committed_at,
            "columns": list(self.columns),
            "files": [{"path": p, "rows": n} for p, n in self.files],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Entry:
        return cls(
            str(data["run"]),
            float(data["committed_at"]),
            tuple(data["columns"]),
            tuple((str(f["path"]), int(f["rows"])) for f in data["files"]),
        )


@dataclass(frozen=True)
class Manifest:
    """The committed state of one source: one entry per table it has."""

    source: str
    tables: dict[str, Entry] = field(default_factory=dict)

    def to_json(self) -> str:
        body = {"source": self.source, "tables": {t: e.to_json() for t, e in self.tables.items()}}
        return json.dumps(body, indent=1, sort_keys=True)


def _table(table: Table | str) -> Table:
    return TABLES[table] if isinstance(table, str) else table


def filesystem(root: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``root`` and the root as that filesystem spells it."""
    fs, path = fsspec.core.url_to_fs(root)
    return fs, str(path).rstrip("/")


def _join(base: str, *parts: str) -> str:
    return "/".join([base, *parts])


def _replace(fs: fsspec.AbstractFileSystem, tmp: str, final: str) -> None:
    """Move ``tmp`` onto ``final``; atomic on local disks (rename(2)), a copy on object stores."""
    if isinstance(fs, LocalFileSystem):
        os.replace(tmp, final)
    else:
        fs.mv(tmp, final)


def _tmp_name(path: str) -> str:
    head, _, tail = path.rpartition("/")
    return f"{head}/.{tail}.{uuid.uuid4().hex}.tmp"


def new_run_id() -> str:
    """Unique per write, ordered by time: a re-run never writes over files a reader may hold."""
    return f"{time.time_ns():x}-{uuid.uuid4().hex[:8]}"


def shard_path(table: str, source: str, run: str, shard: int) -> str:
    return f"{table}/source={source}/run={run}/shard-{shard:05d}.parquet"


def _check_name(kind: str, value: str) -> None:
    # Names become path parts; a separator or a dot-name would write outside the table's folder.
    if not value or "/" in value or "\\" in value or value in (".", "..") or "=" in value:
        raise ValueError(f"{kind} {value!r} cannot be part of a table file path")


def conform(table: Table | str, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with exactly the table's columns, cast to its types the way DuckDB casts them."""
    table = _table(table)
    missing = [c for c in table.columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{table.name}: frame lacks columns {missing}")
    casts = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in table.columns.items())
    with duckdb.connect() as con:
        con.register("incoming_rows", frame.select(list(table.columns)).to_arrow())
        out = con.execute(f"SELECT {casts} FROM incoming_rows").pl()
    return out if isinstance(out, pl.DataFrame) else pl.DataFrame(out)


def write_shard(
    root: str, table: Table | str, source: str, run: str, shard: int, frame: pl.DataFrame
) -> ShardFile:
    """Write one shard of ``table`` for ``source`` and ``run``; invisible until ``commit``.

    Pure apart from the file it writes, so a remote worker can call it. The file appears under
    its final name only once complete (temp name, then rename).
    """
    table = _table(table)
    _check_name("source", source)
    _check_name("run", run)
    if table.partitioned and frame.height and (frame["source"] != source).any():
        raise ValueError(f"{table.name}: shard of {source!r} holds rows of other sources")
    data = conform(table, frame).to_arrow()
    fs, base = filesystem(root)
    rel = shard_path(table.name, source, run, shard)
    final = _join(base, rel)
    fs.makedirs(final.rpartition("/")[0], exist_ok=True)
    tmp = _tmp_name(final)
    with fs.open(tmp, "wb") as out:
        pq.write_table(data, out, compression=COMPRESSION)
    _replace(fs, tmp, final)
    return ShardFile(table.name, source, run, rel, data.num_rows, tuple(data.column_names))


def write_frame(
    root: str, table: Table | str, source: str, run: str, frame: pl.DataFrame
) -> list[ShardFile]:
    """A whole frame as shards of at most ``SHARD_ROWS`` rows, in row order; none when empty."""
    return [
        write_shard(root, table, source, run, i, frame.slice(offset, SHARD_ROWS))
        for i, offset in enumerate(range(0, frame.height, SHARD_ROWS))
    ]


def _manifest_path(base: str, source: str) -> str:
    return _join(base, MANIFESTS, f"source={source}.json")


def _parse_manifest(text: str, where: str) -> Manifest:
    try:
        data = json.loads(text)
        return Manifest(
            str(data["source"]), {t: Entry.from_json(e) for t, e in data["tables"].items()}
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{where}: not a table-store manifest: {exc}") from exc


def read_manifest(root: str, source: str) -> Manifest:
    """The committed state of ``source``; an empty manifest when it has never been committed."""
    fs, base = filesystem(root)
    path = _manifest_path(base, source)
    try:
        text = fs.cat_file(path).decode()
    except FileNotFoundError:
        return Manifest(source)
    return _parse_manifest(text, path)


def manifests(root: str) -> dict[str, Manifest]:
    """Every source's committed manifest, by source."""
    fs, base = filesystem(root)
    folder = _join(base, MANIFESTS)
    try:
        names = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return {}
    out: dict[str, Manifest] = {}
    for name in sorted(str(n) for n in names):
        leaf = name.rpartition("/")[2]
        if not (leaf.startswith("source=") and leaf.endswith(".json")):
            continue  # temp names of a commit in flight
        try:
            text = fs.cat_file(name).decode()
        except FileNotFoundError:
            continue  # replaced between the listing and the read: ls again would find it
        manifest = _parse_manifest(text, name)
        out[manifest.source] = manifest
    return out


@dataclass
class PreparedCommit:
    """A source's next manifest, written under a temp name; ``publish`` renames it into place."""

    root: str
    manifest: Manifest
    previous: Manifest
    tmp_path: str

    def publish(self) -> Manifest:
        fs, base = filesystem(self.root)
        _replace(fs, self.tmp_path, _manifest_path(base, self.manifest.source))
        _note_retired(self.root, self.previous, self.manifest)
        return self.manifest

    def abandon(self) -> None:
        fs, _ = filesystem(self.root)
        if fs.exists(self.tmp_path):
            fs.rm_file(self.tmp_path)


def prepare_commit(
    root: str, source: str, shards: Mapping[str, Sequence[ShardFile]]
) -> PreparedCommit:
    """Write ``source``'s next manifest (those tables replaced, the others kept) to a temp name.

    Every shard must exist and belong to its table, source and one run per table.
    """
    _check_name("source", source)
    fs, base = filesystem(root)
    previous = read_manifest(root, source)
    tables = dict(previous.tables)
    now = time.time()
    for name, files in shards.items():
        runs = {f.run for f in files}
        if len(runs) > 1:
            raise ValueError(f"{name} of {source!r}: one commit holds runs {sorted(runs)}")
        for f in files:
            if f.table != name or f.source != source:
                raise ValueError(f"{f.path}: shard of {f.table}/{f.source}, not {name}/{source}")
            if not fs.exists(_join(base, f.path)):
                raise FileNotFoundError(f"{_join(base, f.path)}: shard missing (vacuumed?)")
        run = runs.pop() if runs else new_run_id()
        ordered = sorted(files, key=lambda f: f.path)
        columns = tuple(dict.fromkeys(c for f in ordered for c in f.columns))
        tables[name] = Entry(run, now, columns, tuple((f.path, f.rows) for f in ordered))
    manifest = Manifest(source, tables)
    final = _manifest_path(base, source)
    fs.makedirs(final.rpartition("/")[0], exist_ok=True)
    tmp = _tmp_name(final)
    fs.pipe_file(tmp, manifest.to_json().encode())
    return PreparedCommit(root, manifest, previous, tmp)


def commit(root: str, source: str, shards: Mapping[str, Sequence[ShardFile]]) -> Manifest:
    """Replace exactly those tables' entries of ``source`` with ``shards``, in one rename."""
    return prepare_commit(root, source, shards).publish()


def _note_retired(root: str, previous: Manifest, current: Manifest) -> None:
    """Record which files the commit superseded and when, for ``vacuum``'s age test."""
    kept = {p for e in current.tables.values() for p, _ in e.files}
    gone = sorted(
        p
        for t, e in previous.tables.items()
        if current.tables.get(t) != e
        for p, _ in e.files
        if p not in kept
    )
    if not gone:
        return
    fs, base = filesystem(root)
    path = _join(base, RETIRED, f"source={current.source}", f"{new_run_id()}.json")
    fs.makedirs(path.rpartition("/")[0], exist_ok=True)
    fs.pipe_file(path, json.dumps({"retired_at": time.time(), "files": gone}).encode())


def _modified(fs: fsspec.AbstractFileSystem, path: str) -> float | None:
    try:
        return float(fs.modified(path).timestamp())
    except (NotImplementedError, FileNotFoundError, AttributeError):
        return None


def vacuum(root: str, older_than_s: float) -> list[str]:
    """Delete data files no manifest lists any more, once superseded ``older_than_s`` ago.

    Files of a run that was never committed (a killed writer) go once they are that old, so
    ``older_than_s`` must exceed both the longest query and the longest write-to-commit time.
    Returns the removed paths, relative to the root.
    """
    fs, base = filesystem(root)
    cutoff = time.time() - older_than_s
    live = {p for m in manifests(root).values() for e in m.tables.values() for p, _ in e.files}
    notes = [str(n) for n in fs.find(_join(base, RETIRED))] if fs.exists(base) else []
    young: set[str] = set()
    old_notes = []
    for note in notes:
        data = json.loads(fs.cat_file(note))
        if float(data["retired_at"]) < cutoff:
            old_notes.append(note)
        else:
            young.update(data["files"])
    removed = []
    prefix = base + "/"
    for path in sorted(str(p) for p in fs.find(base)):
        rel = path.removeprefix(prefix)
        if rel.startswith((MANIFESTS + "/", RETIRED + "/")) or not rel.endswith(".parquet"):
            continue
        if rel in live or rel in young:
            continue
        modified = _modified(fs, path)
        if modified is None or modified >= cutoff:
            continue
        fs.rm_file(path)
        removed.append(rel)
        with suppress(OSError):  # the run's folder, once empty (object stores have none)
            fs.rmdir(path.rpartition("/")[0])
    for note in old_notes:
        fs.rm_file(note)
    return removed


def duckdb_path(root: str, rel: str) -> str:
    """How DuckDB names a file: a plain path on local disks, the URL elsewhere."""
    fs, base = filesystem(root)
    path = _join(base, rel)
    return path if isinstance(fs, LocalFileSystem) else str(fs.unstrip_protocol(path))


def register(con: duckdb.DuckDBPyConnection, root: str) -> None:
    """Let DuckDB read the root's files through fsspec when they are not on a local disk."""
    fs, _ = filesystem(root)
    if not isinstance(fs, LocalFileSystem):
        con.register_filesystem(fs)


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def view_sql(root: str, table: Table | str, entries: Iterable[Entry]) -> str:
    """A SELECT over the entries' files with the table's declared columns and types.

    Entries are read in commit order, shards in shard order, as DuckDB's own table would
    return rows written source after source. Columns no file has read as typed nulls.
    """
    table = _table(table)
    ordered = sorted(entries, key=lambda e: e.committed_at)
    files = [p for e in ordered for p, n in e.files if n]
    have = {c for e in ordered if e.files for c in e.columns}
    if not files:
        cols = ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t in table.columns.items())
        return f"SELECT {cols} WHERE false"
    cols = ", ".join(
        f'CAST("{c}" AS {t}) AS "{c}"' if c in have else f'CAST(NULL AS {t}) AS "{c}"'
        for c, t in table.columns.items()
    )
    listing = ", ".join(_sql_text(duckdb_path(root, p)) for p in files)
    # hive_partitioning off: the path part source=<S> must not override the stored column.
    options = "union_by_name = true, hive_partitioning = false"
    return f"SELECT {cols} FROM read_parquet([{listing}], {options})"


def table_entries(snapshot: Mapping[str, Manifest], table: str) -> list[Entry]:
    return [m.tables[table] for m in snapshot.values() if table in m.tables]


def read_table(root: str, table: Table | str, source: str | None = None) -> pl.DataFrame:
    """The committed rows of ``table`` (of one source, or all) without a warehouse."""
    table = _table(table)
    snapshot = manifests(root)
    if source is not None:
        key = source if table.partitioned else ALL_SOURCES
        snapshot = {key: snapshot[key]} if key in snapshot else {}
    with duckdb.connect() as con:
        register(con, root)
        sql = view_sql(root, table, table_entries(snapshot, table.name))
        if source is not None and table.partitioned:
            out = con.execute(f"SELECT * FROM ({sql}) WHERE source = ?", [source]).pl()
        else:
            out = con.execute(sql).pl()
    return out if isinstance(out, pl.DataFrame) else pl.DataFrame(out)
