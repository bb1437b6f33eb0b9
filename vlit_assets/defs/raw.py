"""Data collection stage: a source's COCO files -> raw__* tables (its check: checks/)."""

from pathlib import Path

import dagster as dg
import polars as pl

from vlit_assets.core import sources, warehouse
from vlit_assets.core.formats import ImportLimits, InstructionFormatError
from vlit_assets.core.raw.collect import CollectConfig, SourceFormatError, collect_source
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
from vlit_assets.core.vocab import WRITER_POOL
from vlit_assets.defs.partitions import sources_partitions
from vlit_assets.resources import ProjectPaths, WarehouseResource, resolve_path

RAW_TABLES = (
    RAW_IMAGES,
    RAW_CAPTIONS,
    RAW_OBJECTS,
    RAW_CATEGORIES,
    RAW_TAGS,
    RAW_REJECTS,
    RAW_CONVERSATIONS,
)


class RawConfig(dg.Config):
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
    # Import sources: longer turns or conversations are rejected (formats.ImportLimits).
    max_turn_chars: int = ImportLimits.max_turn_chars
    max_conversation_chars: int = ImportLimits.max_conversation_chars


def resolve_source(
    con, paths: ProjectPaths, source: str, config: RawConfig
) -> sources.SourceRecord:
    """Find the directory of a partition: explicit config, then the registry, then conventions."""
    if config.source_dir:
        root = Path(config.source_dir).expanduser()
        if root.resolve() == paths.sample_dir.resolve():
            kind = "sample"
        else:
            kind = "import" if is_import_source(root) else "coco"
        return sources.register(
            con,
            source,
            root,
            split=config.split,
            kind=kind,
            annotations_source=config.annotations_source,
            replace_root=config.replace_root,
        )
    known = sources.lookup(con, source)
    if known is not None:
        return known
    if source == sources.SAMPLE_SOURCE:
        return sources.register(con, source, paths.sample_dir, split=config.split, kind="sample")
    incoming = paths.incoming_dir / source
    if incoming.is_dir():
        return sources.register(con, source, incoming, split=config.split, kind="incoming")
    raise dg.Failure(
        f"source {source!r} has no registered directory and {incoming} does not exist; "
        "materialize it once with config source_dir, or use `vlit run --source DIR`"
    )


def _collect(
    source: str,
    record: sources.SourceRecord,
    config: RawConfig,
    run_id: str,
    image_cache: Path,
) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
    """Every raw table of the source: COCO annotations, or an imported instruction dataset.

    ``image_cache`` receives image bytes of an import's Parquet rows, one file per content.
    """
    if record.kind == "import":
        imported = collect_import(
            source,
            record.root,
            images_dir=Path(config.images_dir).expanduser() if config.images_dir else None,
            image_cache=image_cache,
            limits=ImportLimits(config.max_turn_chars, config.max_conversation_chars),
            max_pixels=config.max_pixels,
            workers=config.workers,
            run_id=run_id,
        )
        tables = {t.name: t.empty_frame() for t in RAW_TABLES}
        tables[RAW_IMAGES.name] = imported.images
        tables[RAW_REJECTS.name] = imported.rejects
        tables[RAW_CONVERSATIONS.name] = imported.conversations
        return tables, imported.rejects_by_reason()
    result = collect_source(
        source,
        record.root,
        CollectConfig(
            split=config.split or record.split,
            max_pixels=config.max_pixels,
            workers=config.workers,
            absent_k=config.absent_k,
        ),
        run_id=run_id,
    )
    tables = {t.name: getattr(result, t.name.split("__", 1)[1], None) for t in RAW_TABLES}
    tables[RAW_CONVERSATIONS.name] = RAW_CONVERSATIONS.empty_frame()
    return tables, result.rejects_by_reason()


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            t.name,
            group_name="raw",
            description=t.doc,
            kinds={"duckdb", "polars"},
        )
        for t in RAW_TABLES
    ],
    partitions_def=sources_partitions,
    pool=WRITER_POOL,
)
def raw(
    context: dg.AssetExecutionContext,
    config: RawConfig,
    warehouse_db: WarehouseResource,
    paths: ProjectPaths,
):
    """One row per image, caption, object, category, tag set and reject of the source."""
    source = context.partition_key
    with warehouse_db.connect() as con:
        try:
            record = resolve_source(con, paths, source, config)
        except ValueError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
    try:
        image_cache = resolve_path(paths.output_dir) / "import_images" / source
        tables, rejects_by_reason = _collect(source, record, config, context.run_id, image_cache)
    except (SourceFormatError, InstructionFormatError, FileNotFoundError) as exc:
        # An unusable file fails the run; the message names the file and the key.
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    # One transaction for the seven tables: a failure part-way keeps the previous run's rows
    # of every table, never a mix whose captions point at images that are gone.
    with warehouse_db.connect() as con, warehouse.transaction(con):
        for table in RAW_TABLES:
            warehouse.replace_source(con, table, tables[table.name], source)
    counts = {name: frame.height for name, frame in tables.items()}
    context.log.info(f"{source} ({record.kind}): {counts} rejects={rejects_by_reason}")
    for table in RAW_TABLES:
        metadata: dict[str, object] = {
            "dagster/row_count": counts[table.name],
            "source_dir": str(record.root),
            "source_kind": record.kind,
        }
        if table is RAW_REJECTS:
            metadata |= {f"rejects/{r}": n for r, n in sorted(rejects_by_reason.items())}
        yield dg.MaterializeResult(asset_key=table.name, metadata=metadata)
