"""Instruction generation stage: raw__* tables -> generated__conversations (check: checks/)."""

import dagster as dg
import polars as pl

from vlit_assets.core import sources, warehouse
from vlit_assets.core.generated.llm import (
    Budget,
    LLMSettings,
    ProgressLine,
    RequestCache,
    run_requests_sync,
)
from vlit_assets.core.generated.self_instruct import SelfInstructRun, generate_self_instruct
from vlit_assets.core.generated.templates import (
    TemplateConfig,
    generate_templates,
    generation_workers,
)
from vlit_assets.core.generated.verify import plan_verification, verification_rows
from vlit_assets.core.raw.collect import find_coco_files
from vlit_assets.core.schemas import (
    GENERATED_CONVERSATIONS,
    GENERATED_LLM_REQUESTS,
    GENERATED_LLM_VERIFICATION,
    RAW_CAPTIONS,
    RAW_CATEGORIES,
    RAW_CONVERSATIONS,
    RAW_IMAGES,
    RAW_OBJECTS,
    RAW_TAGS,
)
from vlit_assets.core.vocab import WRITER_POOL
from vlit_assets.defs.partitions import sources_partitions
from vlit_assets.resources import LLMResource, ProjectPaths, WarehouseResource

ALL_TYPES = ["global", "negative", "region"]


class GeneratedConfig(dg.Config):
    types: list[str] = ALL_TYPES  # template instruction types
    per_image: int = 1  # template conversations per image and type (global, negative)
    max_regions_per_image: int = 2
    region_min_area_frac: float = 0.02  # smallest box, as a share of the image, for region
    seed: int = 0
    # Processes for template writing and region rendering; None: every core (template writing
    # stays in one process below core.generate.PARALLEL_MIN_IMAGES images).
    workers: int | None = None
    use_llm: bool = True  # self-instruct as well, when an endpoint is configured
    llm_types: list[str] = ALL_TYPES
    llm_per_image: int = 1
    llm_max_images: int | None = None  # self-instruct for the first N images by id only
    max_requests: int | None = None  # budget; None = unlimited
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    # When at least this share of LLM requests got no reply, warn loudly (log and metadata).
    llm_warn_share: float = 0.5
    # When more than this share got no reply, fail the stage and keep the previous rows.
    llm_fail_share: float | None = None
    llm_progress_every_s: float = 5.0  # a progress line in the logs this often while requests run
    # Ask the LLM resource's verifier (verify_model / verify_base_url, else the same model)
    # whether each answer of every usable LLM conversation is supported by the annotations;
    # counted in the same budget.
    llm_verify: bool = False


def _llm_metadata(run: SelfInstructRun, settings: LLMSettings) -> dict[str, object]:
    stats = run.stats
    metadata: dict[str, object] = {
        "llm/requests": run.requests,
        "llm/sent": stats.sent,
        "llm/attempts": stats.attempts,
        "llm/retries": stats.retries,
        "llm/wait_s": round(stats.wait_s, 3),
        "llm/cache_hits": run.cache_hits,
        "llm/parsed": run.parsed,
        "llm/repaired": run.repaired,
        "llm/failed": run.failed,
        "llm/prompt_tokens": run.prompt_tokens,
        "llm/completion_tokens": run.completion_tokens,
        "llm/cost_usd": round(run.cost_usd, 6),
        "llm/budget_stop": run.budget_stop or "no",
        "llm/stopped": stats.stopped or "no",
        "llm/concurrency": f"{stats.concurrency_low}-{stats.concurrency_high} "
        f"(final {stats.concurrency_final}, {'auto' if settings.adaptive else 'fixed'})",
        "llm/elapsed_s": round(stats.elapsed_s, 2),
        "llm/settings": dg.MetadataValue.json(settings.public_dict()),
    }
    for cause, n in sorted(stats.failed_attempts.items()):
        metadata[f"llm/failed_attempts/{cause}"] = n
    for reason, n in sorted(run.errors.items()):
        metadata[f"drops/{reason}"] = n
    return metadata


def _type_metadata(rows: pl.DataFrame) -> dict[str, object]:
    usable = rows.filter(pl.col("drop_reason").is_null())
    counts = (
        usable.group_by("generator", "instruction_type").len().sort("generator", "instruction_type")
    )
    return {f"rows/{g}/{t}": n for g, t, n in counts.iter_rows()}


@dg.asset(
    name=GENERATED_CONVERSATIONS.name,
    group_name="generated",
    deps=[
        RAW_IMAGES.name,
        RAW_CAPTIONS.name,
        RAW_OBJECTS.name,
        RAW_CATEGORIES.name,
        RAW_TAGS.name,
        RAW_CONVERSATIONS.name,
    ],
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
) -> dg.MaterializeResult:
    """One row per generated conversation of the source (template and LLM), failures included.

    The warehouse is open only to read the raw tables, to store each LLM reply as it arrives
    (short transactions on ``llm__cache``) and to write the result: a slow or dead endpoint
    never holds the DuckDB write lock while requests are out.
    """
    source = context.partition_key
    metadata: dict[str, object] = {}
    with warehouse_db.connect() as con:
        raw = {
            t.name: warehouse.read_source(con, t, source)
            for t in (RAW_IMAGES, RAW_CAPTIONS, RAW_OBJECTS, RAW_CATEGORIES, RAW_TAGS)
        }
        record = sources.lookup(con, source)
        if record is None:
            raise dg.Failure(
                f"source {source!r} is not registered; materialize its raw stage first"
            )
        if record.kind == "import":
            # QC-only source: its conversations were imported by the raw stage, as they are.
            rows = warehouse.read_source(con, RAW_CONVERSATIONS, source)
            warehouse.replace_source(con, GENERATED_CONVERSATIONS, rows, source)
            warehouse.replace_source(con, GENERATED_LLM_REQUESTS, _no_requests(), source)
            warehouse.replace_source(
                con, GENERATED_LLM_VERIFICATION, GENERATED_LLM_VERIFICATION.empty_frame(), source
            )
            return dg.MaterializeResult(
                metadata={
                    "dagster/row_count": rows.height,
                    f"rows/{GENERATED_LLM_REQUESTS.name}": 0,
                    f"rows/{GENERATED_LLM_VERIFICATION.name}": 0,
                    "generators": "import (QC-only source)",
                    **_type_metadata(rows),
                }
            )
    image_root = find_coco_files(record.root, record.split).image_dir
    template_config = TemplateConfig(
        types=tuple(config.types),
        per_image=config.per_image,
        seed=config.seed,
        region_min_area_frac=config.region_min_area_frac,
        max_regions_per_image=config.max_regions_per_image,
        workers=config.workers,
        render_workers=config.workers,
    )
    metadata["template_processes"] = generation_workers(
        template_config, raw[RAW_IMAGES.name].height
    )
    frames = [
        generate_templates(
            *raw.values(),
            source=source,
            image_root=image_root,
            regions_dir=paths.regions_dir,
            config=template_config,
            run_id=context.run_id,
        )
    ]
    requests = _no_requests()
    verification = GENERATED_LLM_VERIFICATION.empty_frame()
    if config.use_llm and llm.configured:
        settings = llm.settings()
        budget = Budget(config.max_requests, config.max_tokens, config.max_cost_usd)
        run = generate_self_instruct(
            raw[RAW_IMAGES.name],
            raw[RAW_CAPTIONS.name],
            raw[RAW_OBJECTS.name],
            raw[RAW_TAGS.name],
            source=source,
            image_root=image_root,
            regions_dir=paths.regions_dir,
            settings=settings,
            cache=RequestCache(opener=warehouse_db.connect),
            budget=budget,
            types=config.llm_types,
            per_image=config.llm_per_image,
            seed=config.seed,
            region_min_area_frac=config.region_min_area_frac,
            run_id=context.run_id,
            max_images=config.llm_max_images,
            progress=context.log.info,
            progress_every_s=config.llm_progress_every_s,
        )
        frames.append(run.rows)
        requests = run.request_rows
        metadata |= _llm_metadata(run, settings)
        metadata["llm/warning"] = run.failure_warning(config.llm_warn_share) or "none"
        metadata["generators"] = f"template + llm ({settings.model})"
        _warn_or_fail(context, run, config)
        if config.llm_verify:
            verification = _verify(context, run.rows, raw, llm, warehouse_db, budget)
            metadata |= _verify_metadata(verification)
    else:
        why = "use_llm is off" if not config.use_llm else "no LLM endpoint configured"
        metadata["generators"] = f"template only ({why})"
    rows = pl.concat(frames, how="vertical")
    with warehouse_db.connect() as con:
        warehouse.replace_source(con, GENERATED_CONVERSATIONS, rows, source)
        warehouse.replace_source(con, GENERATED_LLM_REQUESTS, requests, source)
        warehouse.replace_source(con, GENERATED_LLM_VERIFICATION, verification, source)
    context.log.info(f"{source}: {rows.height} conversations; {metadata['generators']}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows.height,
            # the stage's other tables, so a summary needs no query (vlit's run summary)
            f"rows/{GENERATED_LLM_REQUESTS.name}": requests.height,
            f"rows/{GENERATED_LLM_VERIFICATION.name}": verification.height,
            "usable_rows": rows.filter(pl.col("drop_reason").is_null()).height,
            **_type_metadata(rows),
            **metadata,
        }
    )


def _verify(
    context: dg.AssetExecutionContext,
    rows: pl.DataFrame,
    raw: dict[str, pl.DataFrame],
    llm: LLMResource,
    warehouse_db: WarehouseResource,
    budget: Budget,
) -> pl.DataFrame:
    """The optional verification pass over the usable LLM rows (requests outside the lock)."""
    settings = llm.verifier_settings()
    plan = plan_verification(
        rows,
        raw[RAW_IMAGES.name],
        raw[RAW_CAPTIONS.name],
        raw[RAW_OBJECTS.name],
        raw[RAW_TAGS.name],
    )
    line = ProgressLine(len(plan), context.log.info)
    results = run_requests_sync(
        plan, settings, cache=RequestCache(opener=warehouse_db.connect), budget=budget,
        on_result=line,
    )  # fmt: skip
    line.finish()
    return verification_rows(plan, results, model=settings.model, run_id=context.run_id)


def _verify_metadata(verification: pl.DataFrame) -> dict[str, object]:
    done = verification.filter(pl.col("error").is_null())
    metadata: dict[str, object] = {
        "verify/requests": verification.height,
        "verify/verified": done.height,
        "verify/answers_supported": int(done["verified_supported"].sum() or 0),
        "verify/answers_contradicted": int(done["verified_contradicted"].sum() or 0),
        "verify/answers_unknown": int(done["verified_unknown"].sum() or 0),
    }
    if done.height:
        metadata["verify/share_mean"] = round(float(done["verified_share"].mean()), 4)
    for error, n in verification.group_by("error").len().drop_nulls("error").iter_rows():
        metadata[f"verify/errors/{error}"] = n
    return metadata


def _no_requests() -> pl.DataFrame:
    return GENERATED_LLM_REQUESTS.empty_frame()


def _warn_or_fail(
    context: dg.AssetExecutionContext, run: SelfInstructRun, config: GeneratedConfig
) -> None:
    """Say loudly when most LLM requests failed; fail (before any write) past fail_share."""
    warning = run.failure_warning(config.llm_warn_share)
    if warning is None:
        return
    context.log.warning(warning)
    if config.llm_fail_share is not None and run.failed_share > config.llm_fail_share:
        raise dg.Failure(
            f"{warning}; more than llm_fail_share={config.llm_fail_share:g}, so the stage "
            "fails and the previous rows of this source stay",
            metadata={"llm/failed": run.failed, "llm/requests": run.requests},
        )
