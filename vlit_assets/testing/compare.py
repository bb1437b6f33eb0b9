"""Two runs' warehouses and exports compared row for row, saying which table, key and column differ.

Two runs of the same input differ by design only in run ids, timestamps and the directory they
ran in; everything else must be equal. ``table_differences`` reads every table of both DuckDB
files, drops the run-id and timestamp columns, writes each run's directories as ``<root>``,
matches rows by the table's key and reports the first differing column of each row (a few per
table). ``export_differences`` does the same for the exported files, byte for byte apart from
timestamps.

Floats (also inside JSON columns) are equal when within a relative 1e-9 of each other: a
dataset-level figure summed over threads may change in its last bits from one run to the next,
even in one mode. (Rounding both to a fixed number of digits is not enough: two values a bit
apart can round to neighbours.)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from vlit_assets.core import warehouse
from vlit_assets.core.schemas import TABLES

# Columns that differ between two runs of the same input by design.
VOLATILE = re.compile(r"(^|_)run_id$|_at$")
# Hashes of exported files, which hold run ids and build times: ``export_differences`` compares
# the files themselves instead.
IGNORED = {"final__export_files": ("sha256",)}
ROOT = "<root>"
TIMESTAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?")
PER_TABLE = 5  # differences reported per table; the rest are counted


@dataclass(frozen=True)
class Difference:
    table: str
    key: str  # the row's key values, or "" for the table as a whole
    column: str
    detail: str

    def __str__(self) -> str:
        where = ".".join(p for p in (self.table, self.column) if p)
        return f"{where} [{self.key}]: {self.detail}" if self.key else f"{where}: {self.detail}"


def _normal(value: object, roots: Sequence[str]) -> object:
    """A value with each run's directories as ``<root>``; NaN equal to NaN."""
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, ROOT)
        return value
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else float(f"{value:.12g}")
    if isinstance(value, (list, tuple)):
        return tuple(_normal(v, roots) for v in value)
    if isinstance(value, dict):
        return tuple((k, _normal(v, roots)) for k, v in value.items())
    return value


REL_TOL = 1e-9


def _same(a: object, b: object) -> bool:
    """Equal, floats within ``REL_TOL`` of each other (also inside tuples)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _rows(
    frame: pl.DataFrame, columns: list[str], key: list[str], roots: Sequence[str], parse: set[str]
) -> dict[tuple, list[tuple]]:
    """Normalised rows (``columns`` order) grouped by key; without a key, all under ``()``.

    ``parse`` names JSON columns, compared as the values they hold rather than as text.
    """
    out: dict[tuple, list[tuple]] = {}
    index = [columns.index(k) for k in key]
    for row in frame.select(columns).iter_rows():
        row = tuple(
            json.loads(v) if c in parse and isinstance(v, str) else v
            for c, v in zip(columns, row, strict=True)
        )
        normal = tuple(_normal(v, roots) for v in row)
        out.setdefault(tuple(normal[i] for i in index), []).append(normal)
    return out


def _read(
    db: Path, table: str, source: str | None, table_root: str | None = None
) -> pl.DataFrame | None:
    """The table's rows (of ``source`` only, when given and the table has that column);
    with ``table_root`` the file-backed tables are read from its committed files."""
    with warehouse.connect(db, read_only=True, table_root=table_root) as con:
        columns = [
            name
            for (name,) in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
            ).fetchall()
        ]
        if not columns:
            return None
        if source is not None and "source" in columns:
            return con.execute(f'SELECT * FROM "{table}" WHERE source = ?', [source]).pl()
        return con.execute(f'SELECT * FROM "{table}"').pl()


def compare_table(
    table: str, a: pl.DataFrame, b: pl.DataFrame, roots: Sequence[str]
) -> list[Difference]:
    """Differences between two frames of ``table`` (run ids, timestamps and roots aside)."""
    if a.columns != b.columns:
        return [Difference(table, "", "", f"columns {a.columns} != {b.columns}")]
    ignored = IGNORED.get(table, ())
    columns = [c for c in a.columns if not VOLATILE.search(c) and c not in ignored]
    spec = TABLES.get(table)
    key = [k for k in (spec.key if spec else ()) if k in columns]
    parse = {c for c, kind in (spec.columns.items() if spec else ()) if kind == "JSON"}
    left, right = _rows(a, columns, key, roots, parse), _rows(b, columns, key, roots, parse)
    found: list[Difference] = []
    if a.height != b.height:
        found.append(Difference(table, "", "", f"{a.height} rows != {b.height} rows"))
    for k in sorted(set(left) | set(right), key=repr):
        mine, theirs = sorted(left.get(k, []), key=repr), sorted(right.get(k, []), key=repr)
        label = ", ".join(f"{c}={v}" for c, v in zip(key, k, strict=True))
        if not key:  # rows without a key: the ones only one side has, paired in order
            only_a, only_b = Counter(mine) - Counter(theirs), Counter(theirs) - Counter(mine)
            mine, theirs = sorted(only_a.elements(), key=repr), sorted(only_b.elements(), key=repr)
        if len(mine) != len(theirs):
            detail = f"{len(mine)} rows in the first, {len(theirs)} in the second"
            found.append(Difference(table, label or "rows without a match", "", detail))
            continue
        for x, y in zip(mine, theirs, strict=True):
            pairs = enumerate(zip(x, y, strict=True))
            col = next((i for i, (u, v) in pairs if not _same(u, v)), None)
            if col is not None:
                detail = f"{x[col]!r:.200} != {y[col]!r:.200}"
                found.append(Difference(table, label or "unmatched row", columns[col], detail))
                if key:
                    break
    if len(found) > PER_TABLE:
        extra = len(found) - PER_TABLE
        found = [*found[:PER_TABLE], Difference(table, "", "", f"... and {extra} more")]
    return found


def table_differences(
    a: Path,
    b: Path,
    *,
    roots: Sequence[str | Path] = (),
    tables: Iterable[str] | None = None,
    source: str | None = None,
    table_roots: tuple[str | None, str | None] = (None, None),
) -> list[Difference]:
    """Every difference between the tables of two warehouse files (all of ``TABLES`` unless
    ``tables`` names some); ``roots`` are the runs' directories, written as ``<root>``;
    ``source`` compares only that source's rows of tables that have a ``source`` column;
    ``table_roots`` are the two warehouses' table-file roots (None: all in the DuckDB file)."""
    names = list(TABLES) if tables is None else list(tables)
    # Longest first, so a root inside another root is replaced whole.
    order = sorted((str(r) for r in roots), key=len, reverse=True)
    found: list[Difference] = []
    for name in names:
        left = _read(Path(a), name, source, table_roots[0])
        right = _read(Path(b), name, source, table_roots[1])
        if left is None or right is None:
            if (left is None) != (right is None):
                where = "first" if left is None else "second"
                found.append(Difference(name, "", "", f"no such table in the {where} warehouse"))
            continue
        found += compare_table(name, left, right, order)
    return found


def _hashes(files: dict[Path, Path]) -> list[tuple[bytes, bytes]]:
    """Each file's sha256 and a name for it, so that a manifest's hash of a file differing only
    by a run id or a timestamp reads the same on both sides (the file itself is compared)."""
    return [
        (hashlib.sha256(path.read_bytes()).hexdigest().encode(), f"<sha256 of {rel}>".encode())
        for rel, path in files.items()
    ]


def _masked(data: bytes, roots: Sequence[str], hashes: list[tuple[bytes, bytes]]) -> bytes:
    for root in roots:
        data = data.replace(root.encode(), ROOT.encode())
    for digest, name in hashes:
        data = data.replace(digest, name)
    return TIMESTAMP.sub(b"<time>", data)


def export_differences(a: Path, b: Path, *, roots: Sequence[str | Path] = ()) -> list[Difference]:
    """Files of two export folders: the same names, and the same bytes once each run's
    directories, timestamps and the hashes of the other files are masked; Parquet files by
    content, run ids aside."""
    order = sorted((str(r) for r in roots), key=len, reverse=True)
    files_a = {p.relative_to(a): p for p in Path(a).rglob("*") if p.is_file()}
    files_b = {p.relative_to(b): p for p in Path(b).rglob("*") if p.is_file()}
    hashes_a, hashes_b = _hashes(files_a), _hashes(files_b)
    found = [
        Difference(
            "exports", str(rel), "", f"only in the {'first' if rel in files_a else 'second'}"
        )
        for rel in sorted(set(files_a) ^ set(files_b))
    ]
    for rel in sorted(set(files_a) & set(files_b)):
        if rel.suffix == ".parquet":
            diffs = compare_table(
                str(rel), pl.read_parquet(files_a[rel]), pl.read_parquet(files_b[rel]), order
            )
            found += diffs
            continue
        left = _masked(files_a[rel].read_bytes(), order, hashes_a)
        right = _masked(files_b[rel].read_bytes(), order, hashes_b)
        if left != right:
            pairs = enumerate(zip(left, right, strict=False))
            at = next((i for i, (x, y) in pairs if x != y), min(len(left), len(right)))
            found.append(
                Difference("exports", str(rel), "", f"masked bytes differ from offset {at}")
            )
    return found
