"""Data collection stage: a source's COCO files -> raw__* tables, and the raw GX suite check."""

from pathlib import Path

import dagster as dg

from vlit_assets.checks.factory import build_suite_check
from vlit_assets.checks.raw_suite import validate_raw
from vlit_assets.core import sources, warehouse
from vlit_assets.core.collect import (
    CollectConfig,
    CollectResult,
    SourceFormatError,
    collect_source,
)
from vlit_assets.core.schemas import (
    RAW_CAPTIONS,
    RAW_CATEGORIES,
    RAW_IMAGES,
    RAW_OBJECTS,
    RAW_REJECTS,
    RAW_TAGS,
)
from vlit_assets.defs.partitions import WRITER_POOL, sources_partitions
from vlit_assets.resources import ProjectPaths, WarehouseResource

RAW_TABLES = (RAW_IMAGES, RAW_CAPTIONS, RAW_OBJECTS, RAW_CATEGORIES, RAW_TAGS, RAW_REJECTS)


class RawConfig(dg.Config):
    source_dir: str | None = None  # registers this directory for the partition; else looked up
    split: str | None = None  # COCO split name; detected when the source has exactly one
    max_pixels: int = 89_478_485  # larger images are rejected as decompression bombs
    workers: int = 2  # processes that decode images
    absent_k: int = 8  # plausible absent categories kept per image


def resolve_source(
    con, paths: ProjectPaths, source: str, config: RawConfig
) -> sources.SourceRecord:
    """Find the directory of a partition: explicit config, then the registry, then conventions."""
    if config.source_dir:
        root = Path(config.source_dir).expanduser()
        kind = "sample" if root.resolve() == paths.sample_dir.resolve() else "coco"
        return sources.register(con, source, root, split=config.split, kind=kind)
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


def _metadata(result: CollectResult, table: str, root: Path) -> dict[str, object]:
    frame = getattr(result, table.split("__", 1)[1])
    metadata: dict[str, object] = {
        "dagster/row_count": frame.height,
        "table": table,
        "source_dir": str(root),
    }
    if table == RAW_REJECTS.name:
        for reason, count in sorted(result.rejects_by_reason().items()):
            metadata[f"rejects/{reason}"] = count
    return metadata


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
        record = resolve_source(con, paths, source, config)
    try:
        result = collect_source(
            source,
            record.root,
            CollectConfig(
                split=config.split or record.split,
                max_pixels=config.max_pixels,
                workers=config.workers,
                absent_k=config.absent_k,
            ),
            run_id=context.run_id,
        )
    except (SourceFormatError, FileNotFoundError) as exc:
        # An unusable file fails the run; the message names the file and the key.
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    with warehouse_db.connect() as con:
        for table in RAW_TABLES:
            warehouse.replace_source(con, table, getattr(result, table.name.split("__")[1]), source)
    context.log.info(f"{source}: {result.counts()} rejects={result.rejects_by_reason()}")
    for table in RAW_TABLES:
        yield dg.MaterializeResult(
            asset_key=table.name, metadata=_metadata(result, table.name, record.root)
        )


raw_suite_check = build_suite_check(
    name="raw_suite",
    asset=RAW_IMAGES.name,
    validate=validate_raw,
    description=(
        "GX suite: unique ids, boxes inside their image, every image captioned, "
        "categories declared, no null paths."
    ),
    partitions_def=sources_partitions,
)
