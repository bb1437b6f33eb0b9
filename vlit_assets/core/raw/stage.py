"""The raw stage of one source: which directory it reads, COCO collection or import, its tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from vlit_assets.core import sources
from vlit_assets.core.formats.records import ImportLimits, InstructionFormatError
from vlit_assets.core.metadata import Metadata
from vlit_assets.core.raw.coco_json import SourceFormatError
from vlit_assets.core.raw.collect import CollectConfig, collect_source
from vlit_assets.core.raw.imports import collect_import, is_import_source
from vlit_assets.core.schemas import (
    RAW_CAPTIONS,
    RAW_CATEGORIES,
    RAW_CONVERSATIONS,
    RAW_IMAGES,
    RAW_OBJECTS,
    RAW_REJECTS,
    RAW_TAGS,
)
from vlit_assets.core.shards import ShardMap, compute_metadata

RAW_TABLES = (
    RAW_IMAGES,
    RAW_CAPTIONS,
    RAW_OBJECTS,
    RAW_CATEGORIES,
    RAW_TAGS,
    RAW_REJECTS,
    RAW_CONVERSATIONS,
)


class SourceError(ValueError):
    """A source's directory cannot be used: not found, or its name is taken by another folder."""


# What a user can get wrong (a directory, a file): the run fails with the message, no retry.
INPUT_ERRORS = (SourceError, SourceFormatError, InstructionFormatError, FileNotFoundError)


@dataclass(frozen=True)
class RawOptions:
    """Settings of the raw stage, one per field of the asset's run config."""

    source_dir: str | None = None  # registers this directory for the partition; else looked up
    split: str | None = None  # COCO split name; detected when the source has exactly one
    max_pixels: int = 89_478_485  # larger images are rejected as decompression bombs
    workers: int = 2  # processes that decode images
    absent_k: int = 8  # plausible absent categories kept per image
    # Import (QC-only) sources: a registered COCO source whose annotations cover their images,
    # so correctness metrics can use them; without one those metrics are null.
    annotations_source: str | None = None
    # A source name keeps its folder; set this to re-point an existing source to source_dir.
    replace_root: bool = False
    # Import sources: the folder image names are relative to (LLaVA's --image_folder); unset,
    # a name is looked up under <source>/images/, then <source>.
    images_dir: str | None = None
    # Import sources: longer turns or conversations are rejected (formats.records.ImportLimits).
    max_turn_chars: int = ImportLimits.max_turn_chars
    max_conversation_chars: int = ImportLimits.max_conversation_chars


@dataclass
class RawTables:
    """Every raw table of one source, and what its materialization reports."""

    record: sources.SourceRecord
    tables: dict[str, pl.DataFrame]  # by table name, in RAW_TABLES order
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    compute: Metadata = field(default_factory=dict)  # shards.compute_metadata

    @property
    def counts(self) -> dict[str, int]:
        return {name: frame.height for name, frame in self.tables.items()}

    def summary(self) -> str:
        return (
            f"{self.record.source} ({self.record.kind}): {self.counts} "
            f"rejects={self.rejects_by_reason}"
        )

    def metadata(self) -> dict[str, Metadata]:
        """Per table: the source's directory and kind; raw__rejects adds counts per reason and
        raw__images where the image checks ran (once per step, so run totals add up)."""
        out: dict[str, Metadata] = {}
        for table in RAW_TABLES:
            meta: Metadata = {
                "source_dir": str(self.record.root),
                "source_kind": self.record.kind,
            }
            if table is RAW_REJECTS:
                meta |= {f"rejects/{r}": n for r, n in sorted(self.rejects_by_reason.items())}
            if table is RAW_IMAGES:
                meta |= self.compute
            out[table.name] = meta
        return out


def resolve_source(
    con: duckdb.DuckDBPyConnection,
    source: str,
    options: RawOptions,
    *,
    sample_dir: Path,
    incoming_dir: Path,
) -> sources.SourceRecord:
    """Find the directory of a partition: explicit config, then the registry, then conventions."""
    try:
        return _resolve(con, source, options, sample_dir, incoming_dir)
    except ValueError as exc:  # the registry refuses a name or a second folder under one name
        raise SourceError(str(exc)) from exc


def _resolve(
    con: duckdb.DuckDBPyConnection,
    source: str,
    options: RawOptions,
    sample_dir: Path,
    incoming_dir: Path,
) -> sources.SourceRecord:
    if options.source_dir:
        root = Path(options.source_dir).expanduser()
        if root.resolve() == sample_dir.resolve():
            kind = "sample"
        else:
            kind = "import" if is_import_source(root) else "coco"
        return sources.register(
            con,
            source,
            root,
            split=options.split,
            kind=kind,
            annotations_source=options.annotations_source,
            replace_root=options.replace_root,
        )
    known = sources.lookup(con, source)
    if known is not None:
        return known
    if source == sources.SAMPLE_SOURCE:
        return sources.register(con, source, sample_dir, split=options.split, kind="sample")
    incoming = incoming_dir / source
    if incoming.is_dir():
        return sources.register(con, source, incoming, split=options.split, kind="incoming")
    raise SourceError(
        f"source {source!r} has no registered directory and {incoming} does not exist; "
        "materialize it once with config source_dir, or use `vlit run --source DIR`"
    )


def collect_raw(
    record: sources.SourceRecord,
    options: RawOptions,
    *,
    run_id: str,
    image_cache: Path,
    mapper: ShardMap | None = None,
) -> RawTables:
    """Every raw table of the source: COCO annotations, or an imported instruction dataset.

    ``image_cache`` receives image bytes of an import's Parquet rows, one file per content.
    ``mapper`` (a cluster) checks the image files as shards instead of ``options.workers``
    processes; the tables are the same.
    """
    source = record.source
    tables = {t.name: t.empty_frame() for t in RAW_TABLES}
    if record.kind == "import":
        imported = collect_import(
            source,
            record.root,
            images_dir=Path(options.images_dir).expanduser() if options.images_dir else None,
            image_cache=image_cache,
            limits=ImportLimits(options.max_turn_chars, options.max_conversation_chars),
            max_pixels=options.max_pixels,
            workers=options.workers,
            run_id=run_id,
            mapper=mapper,
        )
        tables[RAW_IMAGES.name] = imported.images
        tables[RAW_REJECTS.name] = imported.rejects
        tables[RAW_CONVERSATIONS.name] = imported.conversations
        return RawTables(record, tables, imported.rejects_by_reason(), compute_metadata(mapper))
    result = collect_source(
        source,
        record.root,
        CollectConfig(
            split=options.split or record.split,
            max_pixels=options.max_pixels,
            workers=options.workers,
            absent_k=options.absent_k,
        ),
        run_id=run_id,
        mapper=mapper,
    )
    for table in RAW_TABLES:
        if table is not RAW_CONVERSATIONS:  # a COCO source has no conversations yet
            tables[table.name] = getattr(result, table.name.split("__", 1)[1])
    return RawTables(record, tables, result.rejects_by_reason(), compute_metadata(mapper))
