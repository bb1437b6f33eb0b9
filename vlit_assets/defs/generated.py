"""Instruction generation stage: raw__* tables -> generated__conversations (check: checks/)."""

import dagster as dg
import duckdb

from vlit_assets.core import sources, warehouse
from vlit_assets.core.generated.llm.cache import RequestCache
from vlit_assets.core.generated.stage import (
    RAW_INPUTS,
    GeneratedSource,
    GenerationOptions,
    LLMAccess,
    LLMStageFailed,
    generate_source,
    row_metadata,
)
from vlit_assets.core.metadata import Metadata, MetaValue
from vlit_assets.core.raw.annotations import find_coco_files
from vlit_assets.core.schemas import (
    GENERATED_CONVERSATIONS,
    GENERATED_LLM_REQUESTS,
    GENERATED_LLM_VERIFICATION,
    RAW_CONVERSATIONS,
)
from vlit_assets.core.vocab import INSTRUCTION_TYPES, WRITER_POOL
from vlit_assets.defs.partitions import sources_partitions
from vlit_assets.resources import ComputeResource, LLMResource, ProjectPaths, WarehouseResource

ALL_TYPES = list(INSTRUCTION_TYPES)


class GeneratedConfig(dg.Config):
    """The fields of ``core.generated.stage.GenerationOptions``, where each is explained."""

    types: list[str] = ALL_TYPES
    per_image: int = 1
    max_regions_per_image: int = 2
    region_min_area_frac: float = 0.02
    seed: int = 0
    workers: int | None = None
    use_llm: bool = True
    llm_types: list[str] = ALL_TYPES
    llm_per_image: int = 1
    llm_max_images: int | None = None
    max_requests: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    llm_warn_share: float = 0.5
    llm_fail_share: float | None = None
    llm_progress_every_s: float = 5.0
    llm_verify: bool = False


@dg.asset(
    name=GENERATED_CONVERSATIONS.name,
    group_name="generated",
    deps=[*(t.name for t in RAW_INPUTS), RAW_CONVERSATIONS.name],
    partitions_def=sources_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb", "polars"},
)
def generated__conversations(
    context: dg.AssetExecutionContext,
    config: GeneratedConfig,
    warehouse_db: WarehouseResource,
    paths: ProjectPaths,
    llm: LLMResource,
    compute: ComputeResource,
) -> dg.MaterializeResult:
    """One row per generated conversation of the source (template and LLM), failures included.

    The warehouse is open only to read the raw tables, to store each LLM reply as it arrives
    (short transactions on ``llm__cache``) and to write the result: a slow or dead endpoint
    never holds the DuckDB write lock while requests are out.
    """
    source, options = context.partition_key, GenerationOptions(**config.model_dump())
    with warehouse_db.connect() as con:
        record = _registered(con, source)
        if record.kind == "import":
            return _copy_imported(con, source)
        raw = {t.name: warehouse.read_source(con, t, source) for t in RAW_INPUTS}
    try:
        with compute.mapper() as mapper:  # None: this process and its pools
            out = generate_source(
                raw, source=source, image_root=find_coco_files(record.root, record.split).image_dir,
                regions_dir=paths.regions_dir, options=options,
                llm=_llm_access(llm, warehouse_db, options), run_id=context.run_id,
                progress=context.log.info, mapper=mapper,
            )  # fmt: skip
    except LLMStageFailed as failed:
        context.log.warning(str(failed))
        raise dg.Failure(str(failed), metadata=failed.metadata) from failed
    if out.warning is not None:
        context.log.warning(out.warning)
    _write(warehouse_db, source, out)
    context.log.info(f"{source}: {out.conversations.height} conversations; {out.generators}")
    return dg.MaterializeResult(metadata=_metadata(out))


def _registered(con: duckdb.DuckDBPyConnection, source: str) -> sources.SourceRecord:
    record = sources.lookup(con, source)
    if record is None:
        raise dg.Failure(f"source {source!r} is not registered; materialize its raw stage first")
    return record


def _metadata(out: GeneratedSource) -> dict[str, MetaValue | dg.MetadataValue]:
    return {
        "dagster/row_count": out.conversations.height,
        # the stage's other tables, so a run summary needs no query (vlit's run summary)
        f"rows/{GENERATED_LLM_REQUESTS.name}": out.requests.height,
        f"rows/{GENERATED_LLM_VERIFICATION.name}": out.verification.height,
        **row_metadata(out.conversations),
        **_json(out.metadata),
    }


def _llm_access(
    llm: LLMResource, warehouse_db: WarehouseResource, options: GenerationOptions
) -> LLMAccess | None:
    if not (options.use_llm and llm.configured):
        return None
    verifier = llm.verifier_settings() if options.llm_verify else None
    return LLMAccess(llm.settings(), RequestCache(opener=warehouse_db.connect), verifier)


def _write(warehouse_db: WarehouseResource, source: str, out: GeneratedSource) -> None:
    with warehouse_db.connect() as con:
        warehouse.replace_source(con, GENERATED_CONVERSATIONS, out.conversations, source)
        warehouse.replace_source(con, GENERATED_LLM_REQUESTS, out.requests, source)
        warehouse.replace_source(con, GENERATED_LLM_VERIFICATION, out.verification, source)


def _copy_imported(con: duckdb.DuckDBPyConnection, source: str) -> dg.MaterializeResult:
    """A QC-only source: its conversations were imported by the raw stage, as they are."""
    rows = warehouse.read_source(con, RAW_CONVERSATIONS, source)
    warehouse.replace_source(con, GENERATED_CONVERSATIONS, rows, source)
    for table in (GENERATED_LLM_REQUESTS, GENERATED_LLM_VERIFICATION):
        warehouse.replace_source(con, table, table.empty_frame(), source)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows.height,
            f"rows/{GENERATED_LLM_REQUESTS.name}": 0,
            f"rows/{GENERATED_LLM_VERIFICATION.name}": 0,
            "generators": "import (QC-only source)",
            **row_metadata(rows),
        }
    )


def _json(metadata: Metadata) -> dict[str, MetaValue | dg.MetadataValue]:
    return {k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in metadata.items()}
