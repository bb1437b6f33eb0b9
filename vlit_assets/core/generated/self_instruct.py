"""Self-instruct glue: raw annotation frames -> LLM requests, LLM results -> conversation rows.

A request's ``key`` is the conversation id it will produce, and its ``meta`` carries the row's
provenance (image, type, variant, image path, annotation ids), so ``rows_from_results`` needs
nothing but the plan and the results. Region selection and region image names follow the
template generator's rule (largest non-crowd boxes above the area threshold, distinct
categories first; ``<regions_dir>/<source>/<image stem>_<k>.jpg``), so both generators agree
on which object ``_k`` is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import polars as pl

from vlit_assets.core.generated.llm.cache import RequestCache
from vlit_assets.core.generated.llm.client import run_requests_sync
from vlit_assets.core.generated.llm.pacing import ProgressLine, RunStats
from vlit_assets.core.generated.llm.settings import (
    BUDGET_EXHAUSTED,
    Budget,
    LLMRequest,
    LLMResult,
    LLMSettings,
)
from vlit_assets.core.generated.llm.sharded import run_requests_mapped
from vlit_assets.core.generated.prompts import PROMPT_VERSION, build_messages
from vlit_assets.core.generated.regions import (
    RenderJob,
    choose_regions,
    region_stems,
    render_regions,
)
from vlit_assets.core.generated.replies import ParsedReply, parse_reply
from vlit_assets.core.ids import stable_id
from vlit_assets.core.schemas import GENERATED_CONVERSATIONS, GENERATED_LLM_REQUESTS
from vlit_assets.core.shards import ShardMap
from vlit_assets.core.vocab import INSTRUCTION_TYPES

GENERATOR = "llm"
MAX_PROMPT_OBJECTS = 30  # largest boxes kept; crowded scenes would otherwise flood the prompt
ABSENT_POOL = 5  # absent categories offered, from the top of the ranking

ROW_SCHEMA = GENERATED_CONVERSATIONS.polars_schema
REQUEST_SCHEMA = GENERATED_LLM_REQUESTS.polars_schema

_NEEDS = {
    "raw__images": ("image_id", "source", "file_name", "width", "height"),
    "raw__captions": ("caption_id", "image_id", "caption"),
    "raw__objects": (
        "object_id",
        "image_id",
        "category_name",
        "bbox_x",
        "bbox_y",
        "bbox_w",
        "bbox_h",
        "iscrowd",
    ),
    "raw__tags": ("image_id", "present", "absent"),
}


@dataclass(frozen=True)
class _Object:
    object_id: str
    name: str
    box: tuple[float, float, float, float]  # normalised x0, y0, x1, y1
    area_frac: float
    crowd: bool

    def prompt(self) -> dict:
        name = f"{self.name} (crowd)" if self.crowd else self.name
        return {"category": name, "bbox": self.box}


@dataclass(frozen=True)
class _Image:
    image_id: str
    source: str
    file_name: str
    captions: list[tuple[str, str]]  # (caption_id, text)
    objects: list[_Object]
    present: list[str]
    absent: list[str]


def _require(frame: pl.DataFrame, table: str) -> None:
    missing = [c for c in _NEEDS[table] if c not in frame.columns]
    if missing:
        raise ValueError(f"{table} frame lacks columns {missing} (has {frame.columns})")


def _normalise(row: dict, width: int, height: int) -> _Object:
    x, y, w, h = row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"]
    box = (
        round(min(max(x / width, 0.0), 1.0), 3),
        round(min(max(y / height, 0.0), 1.0), 3),
        round(min(max((x + w) / width, 0.0), 1.0), 3),
        round(min(max((y + h) / height, 0.0), 1.0), 3),
    )
    if not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError(
            f"raw__objects {row['object_id']}: bbox ({x}, {y}, {w}, {h}) has no area inside "
            f"the {width}x{height} image {row['image_id']} at 3-decimal precision"
        )
    return _Object(row["object_id"], row["category_name"], box, w * h / (width * height),
                   bool(row["iscrowd"]))  # fmt: skip


def _load(
    images: pl.DataFrame, captions: pl.DataFrame, objects: pl.DataFrame, tags: pl.DataFrame
) -> list[_Image]:
    for frame, table in ((images, "raw__images"), (captions, "raw__captions"),
                         (objects, "raw__objects"), (tags, "raw__tags")):  # fmt: skip
        _require(frame, table)
    caps: dict[str, list[tuple[str, str]]] = {}
    for r in captions.sort("caption_id").iter_rows(named=True):
        caps.setdefault(r["image_id"], []).append((r["caption_id"], r["caption"]))
    objs: dict[str, list[dict]] = {}
    for r in objects.sort("object_id").iter_rows(named=True):
        objs.setdefault(r["image_id"], []).append(r)
    tag_rows = {r["image_id"]: r for r in tags.iter_rows(named=True)}
    out = []
    for img in images.sort("image_id").iter_rows(named=True):
        iid, width, height = img["image_id"], img["width"], img["height"]
        if not width or not height or width <= 0 or height <= 0:
            raise ValueError(f"raw__images {iid}: width/height {width}x{height} not positive")
        if iid not in tag_rows:
            raise ValueError(f"raw__tags has no row for image {iid} (every valid image has one)")
        tag = tag_rows[iid]
        present = [t["name"] for t in tag["present"] or []]
        absent = [t["name"] for t in tag["absent"] or [] if t["name"] not in present]
        out.append(
            _Image(
                iid,
                img["source"],
                img["file_name"],
                caps.get(iid, []),
                [_normalise(o, width, height) for o in objs.get(iid, [])],
                present,
                absent[:ABSENT_POOL],
            )
        )
    return out


def load_images(
    images: pl.DataFrame, captions: pl.DataFrame, objects: pl.DataFrame, tags: pl.DataFrame
) -> list[_Image]:
    """Each image with its captions, normalised boxes and tags, as the prompts show them."""
    return _load(images, captions, objects, tags)


def _sampling_seed(seed: int, conversation_id: str) -> int:
    return int(stable_id("seed", seed, conversation_id)[5:], 16) % (2**31)


def _request(
    img: _Image,
    itype: str,
    variant: int,
    *,
    seed: int,
    image_path: str,
    region: _Object | None,
) -> LLMRequest:
    conv_id = stable_id("conv", img.source, img.image_id, itype, GENERATOR, PROMPT_VERSION, variant)
    shown = sorted(img.objects, key=lambda o: -o.area_frac)[:MAX_PROMPT_OBJECTS]
    if region is not None and region not in shown:
        shown.append(region)
    messages = build_messages(
        itype,
        captions=[text for _, text in img.captions],
        objects=[o.prompt() for o in shown],
        present=img.present,
        absent=img.absent,
        region=region.prompt() if region is not None else None,
    )
    ids = [cid for cid, _ in img.captions] + sorted(o.object_id for o in shown)
    meta = {
        "conversation_id": conv_id,
        "source": img.source,
        "image_id": img.image_id,
        "instruction_type": itype,
        "variant": variant,
        "image_path": image_path,
        "region_object_id": region.object_id if region is not None else None,
        "source_annotation_ids": ids,
    }
    # A per-conversation seed makes variants distinct requests (and distinct cache keys).
    params = {"seed": _sampling_seed(seed, conv_id)}
    return LLMRequest(conv_id, messages, PROMPT_VERSION, params, meta)


def plan_requests(
    images: pl.DataFrame,
    captions: pl.DataFrame,
    objects: pl.DataFrame,
    tags: pl.DataFrame,
    *,
    types: list[str],
    per_image: int,
    seed: int,
    region_min_area_frac: float,
    image_root: Path,
    regions_dir: Path,
) -> list[LLMRequest]:
    """One request per (image, type, variant); frames are raw__images/captions/objects/tags.

    Global and negative get ``per_image`` variants; region gets up to ``per_image`` regions
    (variant = region index k), none for an image without an eligible box. Global and negative
    rows point at ``image_root/<file_name>``; region rows at the region image the caller
    renders, ``regions_dir/<source>/<stem>_<k>.jpg``.
    """
    unknown = [t for t in types if t not in INSTRUCTION_TYPES]
    if unknown:
        raise ValueError(f"types: unknown instruction types {unknown}; use {INSTRUCTION_TYPES}")
    if per_image < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    if not 0.0 <= region_min_area_frac < 1.0:
        raise ValueError(f"region_min_area_frac must be in [0, 1), got {region_min_area_frac}")
    imgs = _load(images, captions, objects, tags)
    root, region_root = Path(image_root).resolve(), Path(regions_dir).resolve()
    stems = region_stems((img.image_id, img.file_name) for img in imgs)
    plan: list[LLMRequest] = []
    for img in imgs:
        for itype in types:
            if itype == "region":
                picked = choose_regions(
                    [(o.object_id, o.name, o.area_frac, o.crowd) for o in img.objects],
                    region_min_area_frac,
                    per_image,
                )
                for k, obj in enumerate(img.objects[i] for i in picked):
                    path = str(region_root / img.source / f"{stems[img.image_id]}_{k}.jpg")
                    plan.append(_request(img, itype, k, seed=seed, image_path=path, region=obj))
                continue
            for v in range(per_image):
                path = str(root / img.file_name)
                plan.append(_request(img, itype, v, seed=seed, image_path=path, region=None))
    return plan


def _parsed(result: LLMResult) -> ParsedReply | None:
    """The parsed reply, or None for a request that got no reply."""
    if result.error is not None:
        return None
    return parse_reply(result.text, finish_reason=result.finish_reason)


def _drop_reason(result: LLMResult) -> tuple[list[dict[str, str]], str | None, str | None]:
    """Turns, drop reason (a ``DROP_REASONS`` code) and its detail."""
    parsed = _parsed(result)
    if parsed is None:
        return [], "llm_error", result.error
    if not parsed.ok:
        return [], "llm_parse", parsed.failure
    return parsed.turns, None, None


def request_rows(
    plan: list[LLMRequest], results: list[LLMResult], *, source: str, run_id: str, model: str
) -> pl.DataFrame:
    """One ``generated__llm_requests`` row per planned request: what it cost on the wire and
    why it failed or what was mended, in words (``detail``)."""
    by_key = {r.key: r for r in results}
    records = []
    for request in plan:
        result = by_key[request.key]
        parsed = _parsed(result)
        records.append(
            {
                "conversation_id": request.key,
                "source": source,
                "request_hash": result.request_hash,
                "model": model,
                "prompt_version": request.prompt_version,
                "cache_hit": result.cache_hit,
                "attempts": result.attempts,
                "wait_ms": result.wait_ms,
                "latency_ms": result.latency_ms,
                "finish_reason": result.finish_reason,
                "error": result.error,
                "parse_failure": parsed.failure if parsed is not None else None,
                "detail": result.error_detail if parsed is None else parsed.detail,
                "repaired": parsed.repaired if parsed is not None else None,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "run_id": run_id,
            }
        )
    return (
        pl.DataFrame(records, schema=REQUEST_SCHEMA, orient="row")
        if records
        else (pl.DataFrame(schema=REQUEST_SCHEMA))
    )


def rows_from_results(
    plan: list[LLMRequest], results: list[LLMResult], *, source: str, run_id: str, model: str
) -> pl.DataFrame:
    """One ``generated__conversations`` row per planned request, failures included.

    A request error becomes ``drop_reason="llm_error"`` with the cause as ``drop_detail``, an
    unusable reply ``"llm_parse"`` with the parse failure; both keep provenance, empty turns.
    """
    by_key = {r.key: r for r in results}
    columns: dict[str, list] = {c: [] for c in ROW_SCHEMA}
    for request in plan:
        meta = request.meta
        if meta.get("source") != source:
            raise ValueError(
                f"request {request.key}: planned for source {meta.get('source')!r}, "
                f"rows requested for {source!r}"
            )
        result = by_key.get(request.key)
        if result is None:
            raise ValueError(f"request {request.key}: no result (every planned request needs one)")
        turns, reason, detail = _drop_reason(result)
        values = {
            "conversation_id": request.key,
            "source": source,
            "image_id": meta["image_id"],
            "instruction_type": meta["instruction_type"],
            "generator": GENERATOR,
            "variant": meta["variant"],
            "turns": turns,
            "image_path": meta["image_path"],
            "region_object_id": meta["region_object_id"],
            "source_annotation_ids": list(meta["source_annotation_ids"]),
            "model": model,
            "prompt_version": request.prompt_version,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "latency_ms": result.latency_ms,
            "cache_hit": result.cache_hit,
            "drop_reason": reason,
            "drop_detail": detail,
            "run_id": run_id,
        }
        for column, value in values.items():
            columns[column].append(value)
    return pl.DataFrame(columns, schema=ROW_SCHEMA)


@dataclass
class SelfInstructRun:
    rows: pl.DataFrame
    requests: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    drops: dict[str, int]  # rows per drop_reason code
    no_reply: dict[str, int]  # llm_error rows per cause (drop_detail)
    budget_stop: str | None
    request_rows: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=REQUEST_SCHEMA))
    stats: RunStats = field(default_factory=RunStats)

    @property
    def parsed(self) -> int:
        return self.rows.filter(pl.col("drop_reason").is_null()).height

    @property
    def failed(self) -> int:
        """Planned requests that got no reply: request errors, not parse failures, and not the
        ones a spent budget kept from being sent."""
        return sum(n for cause, n in self.no_reply.items() if cause != BUDGET_EXHAUSTED)

    @property
    def failed_share(self) -> float:
        return self.failed / self.requests if self.requests else 0.0

    def failure_warning(self, warn_share: float) -> str | None:
        """A loud one-line warning when at least ``warn_share`` of the requests failed."""
        if not self.requests or self.failed == 0 or self.failed_share < warn_share:
            return None
        causes = ", ".join(
            f"{cause} {n}"
            for cause, n in sorted(self.no_reply.items())
            if cause != BUDGET_EXHAUSTED
        )
        every = "EVERY" if self.failed == self.requests else f"{self.failed_share:.0%} of"
        return (
            f"LLM: {every} {self.requests} requests failed ({self.failed} without a reply: "
            f"{causes}); the LLM rows of this run are drops"
        )

    @property
    def repaired(self) -> int:
        return self.request_rows["repaired"].drop_nulls().len()


def generate_self_instruct(
    images: pl.DataFrame,
    captions: pl.DataFrame,
    objects: pl.DataFrame,
    tags: pl.DataFrame,
    *,
    source: str,
    image_root: Path,
    regions_dir: Path,
    settings: LLMSettings,
    cache: RequestCache,
    budget: Budget | None,
    types: list[str],
    per_image: int,
    seed: int,
    region_min_area_frac: float,
    run_id: str,
    render_workers: int | None = None,
    max_images: int | None = None,
    progress: Callable[[str], None] | None = None,
    progress_every_s: float = 5.0,
    mapper: ShardMap | None = None,
) -> SelfInstructRun:
    """Plan, send (cached, budgeted), parse, and render the region images of usable rows.

    ``max_images`` keeps the first images by id; ``progress`` receives a progress line every
    ``progress_every_s`` seconds while requests run, and a closing one. ``mapper`` sends the
    uncached requests from its shards (the cache and the budget stay here).
    """
    if max_images is not None:
        if max_images < 0:
            raise ValueError(f"max_images must be >= 0 or None, got {max_images}")
        images = images.sort("image_id").head(max_images)
    plan = plan_requests(
        images,
        captions,
        objects,
        tags,
        types=types,
        per_image=per_image,
        seed=seed,
        region_min_area_frac=region_min_area_frac,
        image_root=image_root,
        regions_dir=regions_dir,
    )
    stats = RunStats()
    line = ProgressLine(len(plan), progress, every_s=progress_every_s) if progress else None
    send = run_requests_sync if mapper is None else partial(run_requests_mapped, mapper=mapper)
    results = send(plan, settings, cache=cache, budget=budget, on_result=line, stats=stats)
    if line is not None:
        line.finish()
    rows = rows_from_results(plan, results, source=source, run_id=run_id, model=settings.model)
    requests = request_rows(plan, results, source=source, run_id=run_id, model=settings.model)
    rows = _render_llm_regions(rows, images, objects, image_root, render_workers)
    dropped = rows.filter(pl.col("drop_reason").is_not_null())
    drops = dict(dropped.group_by("drop_reason").len().sort("drop_reason").iter_rows())
    no_reply = dropped.filter(pl.col("drop_reason") == "llm_error")
    causes = dict(no_reply.group_by("drop_detail").len().sort("drop_detail").iter_rows())
    return SelfInstructRun(
        rows=rows,
        requests=len(plan),
        cache_hits=sum(r.cache_hit for r in results),
        prompt_tokens=sum(r.prompt_tokens or 0 for r in results),
        completion_tokens=sum(r.completion_tokens or 0 for r in results),
        cost_usd=sum(r.cost_usd or 0.0 for r in results),
        drops=drops,
        no_reply=causes,
        budget_stop=budget.exhausted() if budget is not None else None,
        request_rows=requests,
        stats=stats,
    )


def _render_llm_regions(
    rows: pl.DataFrame,
    images: pl.DataFrame,
    objects: pl.DataFrame,
    image_root: Path,
    workers: int | None,
) -> pl.DataFrame:
    """Render the region image of every usable region row; a failed render drops its row."""
    wanted = rows.filter(
        (pl.col("instruction_type") == "region") & pl.col("drop_reason").is_null()
    ).select("image_id", "image_path", "region_object_id")
    if wanted.is_empty():
        return rows
    boxes = wanted.join(
        objects.select(
            pl.col("object_id").alias("region_object_id"), "bbox_x", "bbox_y", "bbox_w", "bbox_h"
        ),
        on="region_object_id",
    ).join(images.select("image_id", "file_name"), on="image_id")
    jobs = [
        RenderJob(
            image_path=str(Path(image_root) / r["file_name"]),
            bbox=(r["bbox_x"], r["bbox_y"], r["bbox_w"], r["bbox_h"]),
            out_path=r["image_path"],
        )
        for r in boxes.iter_rows(named=True)
    ]
    errors = {
        r.out_path: r.error for r in render_regions(jobs, workers=workers) if r.status == "failed"
    }
    if not errors:
        return rows
    failed = pl.col("image_path").is_in(list(errors))
    error = pl.col("image_path").replace_strict(errors, default=None, return_dtype=pl.String)
    return rows.with_columns(
        pl.when(failed)
        .then(pl.lit("region_render_failed"))
        .otherwise("drop_reason")
        .alias("drop_reason"),
        pl.when(failed).then(error).otherwise("drop_detail").alias("drop_detail"),
    )
