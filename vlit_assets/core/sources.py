"""Sources (= partition keys): naming them and remembering which directory each one reads."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from vlit_assets.core import warehouse
from vlit_assets.core.schemas import META_SOURCES

SAMPLE_SOURCE = "sample"
_SLUG = re.compile(r"[^a-z0-9_-]+")


def source_name(path: Path) -> str:
    """A partition-key-safe name from a directory name: lowercase, [a-z0-9_-], at most 64 chars."""
    slug = _SLUG.sub("-", path.resolve().name.lower()).strip("-")[:64]
    if not slug:
        raise ValueError(f"cannot derive a source name from {path}; pass one explicitly")
    return slug


def check_source_name(name: str) -> str:
    if not name or _SLUG.search(name) or len(name) > 64:
        raise ValueError(
            f"source name {name!r} must be 1-64 characters of lowercase letters, digits, '-' or '_'"
        )
    return name


@dataclass(frozen=True)
class SourceRecord:
    source: str
    root: Path
    split: str | None
    kind: str
    annotations_source: str | None = None


def register(
    con: duckdb.DuckDBPyConnection,
    source: str,
    root: Path,
    *,
    split: str | None,
    kind: str,
    annotations_source: str | None = None,
    replace_root: bool = False,
) -> SourceRecord:
    check_source_name(source)
    if annotations_source is not None:
        check_source_name(annotations_source)
    record = SourceRecord(source, root.resolve(), split, kind, annotations_source)
    known = lookup(con, source)
    if known is not None and known.root != record.root and not replace_root:
        # Same name, other folder: re-registering would overwrite the first dataset's rows.
        raise ValueError(
            f"source {source!r} is registered to {known.root}, not {record.root}; "
            "choose another name (vlit run --name) or set replace_root to re-point it"
        )
    frame = pl.DataFrame(
        {
            "source": [source],
            "root": [str(record.root)],
            "split": [split],
            "kind": [kind],
            "annotations_source": [annotations_source],
            "registered_at": [datetime.now(UTC).replace(tzinfo=None)],
        },
        schema_overrides={"split": pl.String, "annotations_source": pl.String},
    )
    warehouse.upsert(con, META_SOURCES, frame)
    return record


def lookup(con: duckdb.DuckDBPyConnection, source: str) -> SourceRecord | None:
    if not warehouse.table_exists(con, META_SOURCES.name):
        return None
    warehouse.ensure_table(con, META_SOURCES)
    row = con.execute(
        "SELECT source, root, split, kind, annotations_source FROM meta__sources WHERE source = ?",
        [source],
    ).fetchone()
    if row is None:
        return None
    return SourceRecord(row[0], Path(row[1]), row[2], row[3], row[4])
