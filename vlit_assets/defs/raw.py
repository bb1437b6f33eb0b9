"""Data collection stage: a source's COCO files -> raw__* tables (its check: checks/)."""

import dagster as dg

from vlit_assets.core import warehouse
from vlit_assets.core.raw.stage import (
    INPUT_ERRORS,
    RAW_TABLES,
    RawOptions,
    collect_raw,
    resolve_source,
)
from vlit_assets.core.vocab import WRITER_POOL
from vlit_assets.defs.partitions import sources_partitions
from vlit_assets.resources import ComputeResource, ProjectPaths, WarehouseResource, resolve_path

_DEFAULTS = RawOptions()


class RawConfig(dg.Config):
    """Run config of the raw stage; core.raw.stage.RawOptions says what each setting does."""

    source_dir: str | None = _DEFAULTS.source_dir
    split: str | None = _DEFAULTS.split
    max_pixels: int = _DEFAULTS.max_pixels
    workers: int = _DEFAULTS.workers
    absent_k: int = _DEFAULTS.absent_k
    annotations_source: str | None = _DEFAULTS.annotations_source
    replace_root: bool = _DEFAULTS.replace_root
    images_dir: str | None = _DEFAULTS.images_dir
    max_turn_chars: int = _DEFAULTS.max_turn_chars
    max_conversation_chars: int = _DEFAULTS.max_conversation_chars


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
    compute: ComputeResource,
):
    """One row per image, caption, object, category, tag set and reject of the source."""
    source, options = context.partition_key, RawOptions(**config.model_dump())
    image_cache = resolve_path(paths.output_dir) / "import_images" / source
    try:
        with warehouse_db.connect() as con:
            record = resolve_source(
                con, source, options, sample_dir=paths.sample_dir, incoming_dir=paths.incoming_dir
            )
        with compute.mapper() as mapper:  # None: this process and its pool
            raw_tables = collect_raw(
                record, options, run_id=context.run_id, image_cache=image_cache, mapper=mapper
            )
    except INPUT_ERRORS as exc:
        # An unusable directory or file fails the run; the message names the file and the key.
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    # One transaction for the seven tables: a failure part-way keeps the previous run's rows
    # of every table, never a mix whose captions point at images that are gone.
    with warehouse_db.connect() as con, warehouse.transaction(con):
        for table in RAW_TABLES:
            warehouse.replace_source(con, table, raw_tables.tables[table.name], source)
    context.log.info(raw_tables.summary())
    for name, metadata in raw_tables.metadata().items():
        yield dg.MaterializeResult(
            asset_key=name, metadata={"dagster/row_count": raw_tables.counts[name], **metadata}
        )
