"""The generated stage of one source: template rows, then self-instruct and verification rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import polars as pl

from vlit_assets.core.generated.llm.cache import RequestCache
from vlit_assets.core.generated.llm.client import run_requests_sync
from vlit_assets.core.generated.llm.pacing import ProgressLine
from vlit_assets.core.generated.llm.settings import Budget, LLMSettings
from vlit_assets.core.generated.llm.sharded import run_requests_mapped
from vlit_assets.core.generated.self_instruct import SelfInstructRun, generate_self_instruct
from vlit_assets.core.generated.templates.run import (
    TemplateConfig,
    generate_templates,
    generation_workers,
)
from vlit_assets.core.generated.verify import plan_verification, verification_rows
from vlit_assets.core.metadata import Metadata, mean
from vlit_assets.core.schemas import (
    GENERATED_LLM_REQUESTS,
    GENERATED_LLM_VERIFICATION,
    RAW_CAPTIONS,
    RAW_CATEGORIES,
    RAW_IMAGES,
    RAW_OBJECTS,
    RAW_TAGS,
)
from vlit_assets.core.shards import ShardMap, compute_metadata
from vlit_assets.core.vocab import INSTRUCTION_TYPES

RAW_INPUTS = (RAW_IMAGES, RAW_CAPTIONS, RAW_OBJECTS, RAW_CATEGORIES, RAW_TAGS)


@dataclass(frozen=True)
class GenerationOptions:
    """What to generate for a source; the Dagster config of the stage has the same fields."""

    types: list[str] = field(default_factory=lambda: list(INSTRUCTION_TYPES))  # templates
    per_image: int = 1  # template conversations per image and type (global, negative)
    max_regions_per_image: int = 2
    region_min_area_frac: float = 0.02  # smallest box, as a share of the image, for region
    seed: int = 0
    # Processes for template writing and region rendering; None: every core (template writing
    # stays in one process below templates.run.PARALLEL_MIN_IMAGES images).
    workers: int | None = None
    use_llm: bool = True  # self-instruct as well, when an endpoint is configured
    llm_types: list[str] = field(default_factory=lambda: list(INSTRUCTION_TYPES))
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
    # Ask the verifier (verify_model / verify_base_url, else the same model) whether each answer
    # of every usable LLM conversation is supported by the annotations; same budget.
    llm_verify: bool = False

    def template_config(self) -> TemplateConfig:
        return TemplateConfig(
            types=tuple(self.types),
            per_image=self.per_image,
            seed=self.seed,
            region_min_area_frac=self.region_min_area_frac,
            max_regions_per_image=self.max_regions_per_image,
            workers=self.workers,
            render_workers=self.workers,
        )


@dataclass(frozen=True)
class LLMAccess:
    """An endpoint to generate with, the cache its replies go to, and the verifier's settings."""

    settings: LLMSettings
    cache: RequestCache
    verifier: LLMSettings | None = None


class LLMStageFailed(RuntimeError):
    """More LLM requests failed than ``llm_fail_share`` allows; nothing should be written."""

    def __init__(self, message: str, metadata: Metadata) -> None:
        super().__init__(message)
        self.metadata = metadata


@dataclass
class GeneratedSource:
    """The rows of the three generated tables for one source, and what the run reports."""

    conversations: pl.DataFrame
    requests: pl.DataFrame
    verification: pl.DataFrame
    generators: str  # "template only (why)" or "template + llm (model)"
    warning: str | None = None  # most LLM requests failed
    metadata: Metadata = field(default_factory=dict)


def generate_source(
    raw: Mapping[str, pl.DataFrame],
    *,
    source: str,
    image_root: Path,
    regions_dir: Path,
    options: GenerationOptions,
    llm: LLMAccess | None,
    run_id: str,
    progress: Callable[[str], None] | None = None,
    mapper: ShardMap | None = None,
) -> GeneratedSource:
    """Template rows of ``raw`` (``RAW_INPUTS`` tables by name) plus, when ``options.use_llm``
    and ``llm`` is given, self-instruct rows and the optional verification pass. ``mapper``
    (a cluster) runs the heavy per-row work as shards; the rows are the same.

    Raises ``LLMStageFailed`` before verification when more than ``llm_fail_share`` of the LLM
    requests got no reply. ``mapper`` sends the uncached LLM requests from its shards.
    """
    images, captions, objects, categories, tags = (raw[t.name] for t in RAW_INPUTS)
    template_config = options.template_config()
    # On a cluster the shards are reported instead (shards.runs_metadata).
    metadata: Metadata = (
        {"template_processes": generation_workers(template_config, images.height)}
        if mapper is None
        else {}
    )
    frames = [
        generate_templates(
            images, captions, objects, categories, tags,
            source=source, image_root=image_root, regions_dir=regions_dir,
            config=template_config, run_id=run_id, mapper=mapper,
        )
    ]  # fmt: skip
    out = GeneratedSource(
        conversations=frames[0],
        requests=GENERATED_LLM_REQUESTS.empty_frame(),
        verification=GENERATED_LLM_VERIFICATION.empty_frame(),
        generators="template only "
        + ("(use_llm is off)" if not options.use_llm else "(no LLM endpoint configured)"),
    )
    if options.use_llm and llm is not None:
        budget = Budget(options.max_requests, options.max_tokens, options.max_cost_usd)
        run = generate_self_instruct(
            images, captions, objects, tags,
            source=source, image_root=image_root, regions_dir=regions_dir,
            settings=llm.settings, cache=llm.cache, budget=budget,
            types=options.llm_types, per_image=options.llm_per_image, seed=options.seed,
            region_min_area_frac=options.region_min_area_frac, run_id=run_id,
            max_images=options.llm_max_images,
            progress=progress, progress_every_s=options.llm_progress_every_s, mapper=mapper,
        )  # fmt: skip
        frames.append(run.rows)
        out.requests = run.request_rows
        out.generators = f"template + llm ({llm.settings.model})"
        out.warning = run.failure_warning(options.llm_warn_share)
        metadata |= llm_metadata(run, llm.settings)
        metadata["llm/warning"] = out.warning or "none"
        if (
            out.warning is not None
            and options.llm_fail_share is not None
            and run.failed_share > options.llm_fail_share
        ):
            raise LLMStageFailed(
                f"{out.warning}; more than llm_fail_share={options.llm_fail_share:g}, so the "
                "stage fails and the previous rows of this source stay",
                {"llm/failed": run.failed, "llm/requests": run.requests},
            )
        if options.llm_verify and llm.verifier is not None:
            out.verification = verify_llm_rows(run.rows, raw, llm, budget, run_id, progress, mapper)
            metadata |= verify_metadata(out.verification)
    out.conversations = pl.concat(frames, how="vertical")
    metadata["generators"] = out.generators
    out.metadata = metadata | compute_metadata(mapper)
    return out


def verify_llm_rows(
    rows: pl.DataFrame,
    raw: Mapping[str, pl.DataFrame],
    llm: LLMAccess,
    budget: Budget,
    run_id: str,
    progress: Callable[[str], None] | None,
    mapper: ShardMap | None = None,
) -> pl.DataFrame:
    """The verification pass over the usable LLM rows, in the generation's budget."""
    assert llm.verifier is not None
    plan = plan_verification(
        rows, *(raw[t.name] for t in (RAW_IMAGES, RAW_CAPTIONS, RAW_OBJECTS, RAW_TAGS))
    )
    line = ProgressLine(len(plan), progress) if progress else None
    send = run_requests_sync if mapper is None else partial(run_requests_mapped, mapper=mapper)
    results = send(plan, llm.verifier, cache=llm.cache, budget=budget, on_result=line)
    if line is not None:
        line.finish()
    return verification_rows(plan, results, model=llm.verifier.model, run_id=run_id)


def row_metadata(rows: pl.DataFrame) -> Metadata:
    """Usable rows per generator and type, and dropped rows per generator and reason code."""
    usable = rows.filter(pl.col("drop_reason").is_null())
    metadata: Metadata = {"usable_rows": usable.height}
    counts = usable.group_by("generator", "instruction_type").len()
    for g, t, n in counts.sort("generator", "instruction_type").iter_rows():
        metadata[f"rows/{g}/{t}"] = n
    drops = rows.filter(pl.col("drop_reason").is_not_null()).group_by("generator", "drop_reason")
    for g, reason, n in drops.len().sort("generator", "drop_reason").iter_rows():
        metadata[f"drops/{g}/{reason}"] = n
    return metadata


def llm_metadata(run: SelfInstructRun, settings: LLMSettings) -> Metadata:
    """What the self-instruct run did on the wire and what it cost."""
    stats = run.stats
    metadata: Metadata = {
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
        "llm/settings": settings.public_dict(),
    }
    for cause, n in sorted(stats.failed_attempts.items()):
        metadata[f"llm/failed_attempts/{cause}"] = n
    for cause, n in sorted(run.no_reply.items()):
        metadata[f"llm/no_reply/{cause}"] = n
    return metadata


def verify_metadata(verification: pl.DataFrame) -> Metadata:
    """Answers the verifier found supported, contradicted or unknown, and its errors."""
    done = verification.filter(pl.col("error").is_null())
    metadata: Metadata = {
        "verify/requests": verification.height,
        "verify/verified": done.height,
        "verify/answers_supported": int(done["verified_supported"].sum() or 0),
        "verify/answers_contradicted": int(done["verified_contradicted"].sum() or 0),
        "verify/answers_unknown": int(done["verified_unknown"].sum() or 0),
    }
    share = mean(done["verified_share"])
    if share is not None:
        metadata["verify/share_mean"] = round(share, 4)
    for error, n in verification.group_by("error").len().drop_nulls("error").iter_rows():
        metadata[f"verify/errors/{error}"] = n
    return metadata
