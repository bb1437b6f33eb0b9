"""Quality control stage: generated__conversations -> scored__conversations (every metric)."""

from datetime import UTC, datetime

import dagster as dg
import duckdb
import polars as pl

from vlit_assets.checks.factory import build_suite_check
from vlit_assets.checks.scored_suite import PrincipleThresholds, validate_scored_table
from vlit_assets.core import sources, warehouse
from vlit_assets.core.raw.imports import link_annotations
from vlit_assets.core.schemas import (
    GENERATED_CONVERSATIONS,
    GENERATED_LLM_VERIFICATION,
    META_DATASET_METRICS,
    RAW_CAPTIONS,
    RAW_CATEGORIES,
    RAW_IMAGES,
    RAW_OBJECTS,
    RAW_TAGS,
    SCORED_CONVERSATIONS,
)
from vlit_assets.core.scored.embed import EmbeddingCache
from vlit_assets.core.scored.image_text import ImageTextConfig, build_image_text_scorer
from vlit_assets.core.scored.quality import QualityConfig, needs_vectors, score_conversations
from vlit_assets.core.scored.text_quality import MinHashConfig
from vlit_assets.core.vocab import WRITER_POOL
from vlit_assets.defs.partitions import sources_partitions
from vlit_assets.resources import EmbedderResource, WarehouseResource

ANNOTATION_TABLES = (RAW_CAPTIONS, RAW_OBJECTS, RAW_TAGS, RAW_CATEGORIES)


class ScoredConfig(dg.Config):
    neardup_threshold: float = 0.95  # cosine at or above which two conversations are near-copies
    clip_model_path: str | None = None  # optional local CLIP directory for image-text scores
    # Conversation embeddings (MiniLM): "auto" = only where a metric needs them (relevance, when
    # the images have captions); "on" = always, for semantic near-duplicates; "off" = never.
    semantic: str = QualityConfig.semantic
    # Word 5-gram Jaccard at or above which two texts of one image (and region) are near copies.
    minhash_jaccard: float = MinHashConfig.threshold

    def quality(self) -> QualityConfig:
        return QualityConfig(
            neardup_threshold=self.neardup_threshold,
            semantic=self.semantic,
            minhash=MinHashConfig(threshold=self.minhash_jaccard),
        )


def annotations_for(
    con: duckdb.DuckDBPyConnection, record: sources.SourceRecord
) -> dict[str, pl.DataFrame] | None:
    """The annotation frames that judge a source's conversations, or None when it has none."""
    if record.kind != "import":
        return {t.name: warehouse.read_source(con, t, record.source) for t in ANNOTATION_TABLES}
    if not record.annotations_source:
        return None
    other = record.annotations_source
    frames = {t.name: warehouse.read_source(con, t, other) for t in ANNOTATION_TABLES}
    return link_annotations(
        warehouse.read_source(con, RAW_IMAGES, record.source),
        warehouse.read_source(con, RAW_IMAGES, other),
        frames,
        source=record.source,
    )


def record_dataset_metrics(
    con: duckdb.DuckDBPyConnection,
    figures: dict[str, float | int | None],
    *,
    run_id: str,
    asset: str,
    source: str,
) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        {"run_id": run_id, "asset": asset, "source": source, "metric": k, "value": float(v)}
        for k, v in figures.items()
        if v is not None
    ]
    frame = pl.DataFrame(
        rows,
        schema={
            "run_id": pl.String,
            "asset": pl.String,
            "source": pl.String,
            "metric": pl.String,
            "value": pl.Float64,
        },
    ).with_columns(pl.lit(now).alias("recorded_at"))
    warehouse.upsert(con, META_DATASET_METRICS, frame)


@dg.asset(
    name=SCORED_CONVERSATIONS.name,
    group_name="scored",
    deps=[GENERATED_CONVERSATIONS.name],
    partitions_def=sources_partitions,
    pool=WRITER_POOL,
    kinds={"duckdb", "polars"},
)
def scored__conversations(
    context: dg.AssetExecutionContext,
    config: ScoredConfig,
    warehouse_db: WarehouseResource,
    embedder: EmbedderResource,
) -> dg.MaterializeResult:
    """One row per generated conversation with every quality metric; no row is dropped here."""
    source = context.partition_key
    image_text = build_image_text_scorer(
        ImageTextConfig(clip_model_path=config.clip_model_path)
        if config.clip_model_path
        else ImageTextConfig()
    )
    with warehouse_db.connect() as con:
        record = sources.lookup(con, source)
        if record is None:
            raise dg.Failure(
                f"source {source!r} is not registered; materialize its raw stage first"
            )
        conversations = warehouse.read_source(con, GENERATED_CONVERSATIONS, source)
        annotations = annotations_for(con, record) or {}
        captions = annotations.get(RAW_CAPTIONS.name)
        quality = config.quality()
        cache = EmbeddingCache(con)
        result = score_conversations(
            conversations,
            objects=annotations.get(RAW_OBJECTS.name),
            tags=annotations.get(RAW_TAGS.name),
            categories=annotations.get(RAW_CATEGORIES.name),
            captions=captions,
            embedder=embedder.get() if needs_vectors(quality, captions) else None,
            cache=cache,
            config=quality,
            run_id=context.run_id,
            image_text=image_text,
            images=warehouse.read_source(con, RAW_IMAGES, source),
            verification=warehouse.read_source(con, GENERATED_LLM_VERIFICATION, source),
        )
        with warehouse.transaction(con):  # the scores and their dataset figures, or neither
            warehouse.replace_source(con, SCORED_CONVERSATIONS, result.scored, source)
            record_dataset_metrics(
                con,
                result.dataset,
                run_id=context.run_id,
                asset=SCORED_CONVERSATIONS.name,
                source=source,
            )
    figures = {f"metric/{k}": float(v) for k, v in result.dataset.items() if v is not None}
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": result.scored.height,
            "texts_embedded": result.encoded_texts,
            "embeddings": "computed"
            if needs_vectors(quality, captions)
            else (
                "skipped: no metric needs them (no captions; semantic='auto')"
                if quality.semantic == "auto"
                else "off"
            ),
            "annotations": (
                "own"
                if record.kind != "import"
                else record.annotations_source or "none: correctness metrics are null"
            ),
            "image_text_scorer": "configured" if image_text is not None else "not configured",
            **figures,
        }
    )


class PrincipleThresholdsConfig(dg.Config):
    """The scored suite's pass bands (checks/scored_suite.PrincipleThresholds); None = off.

    Defaults are PrincipleThresholds' own, where each band's measured values are noted.
    """

    max_chair_s_rate: float = PrincipleThresholds.max_chair_s_rate
    min_negative_consistency: float = PrincipleThresholds.min_negative_consistency
    min_count_consistency: float = PrincipleThresholds.min_count_consistency
    min_region_name_match: float = PrincipleThresholds.min_region_name_match
    min_format_valid_rate: float = PrincipleThresholds.min_format_valid_rate
    min_type_entropy_norm: float = PrincipleThresholds.min_type_entropy_norm
    min_category_entropy_norm: float | None = PrincipleThresholds.min_category_entropy_norm
    yes_ratio_min: float = PrincipleThresholds.yes_ratio_min
    yes_ratio_max: float = PrincipleThresholds.yes_ratio_max
    max_near_duplicate_rate: float = PrincipleThresholds.max_near_duplicate_rate
    max_exact_duplicate_share: float = PrincipleThresholds.max_exact_duplicate_share
    min_relevance_mean: float | None = PrincipleThresholds.min_relevance_mean
    min_answer_words_mean: float = PrincipleThresholds.min_answer_words_mean
    min_turns_mean: float = PrincipleThresholds.min_turns_mean
    min_tags_per_conversation_mean: float = PrincipleThresholds.min_tags_per_conversation_mean
    max_one_word_answer_share: float = PrincipleThresholds.max_one_word_answer_share
    min_samples_for_distribution: int = PrincipleThresholds.min_samples_for_distribution
    # False (default): the suite measures a source's input and reports a failure as a warning;
    # the final stage filters the source and final_suite guards what ships. True: the old strict
    # behaviour, where a failure fails the run and holds the whole source back.
    blocking: bool = False

    def thresholds(self) -> PrincipleThresholds:
        return PrincipleThresholds(**self.model_dump(exclude={"blocking"}))


def _validate_principles(con, source: str, config: PrincipleThresholdsConfig):
    return validate_scored_table(con, source, config.thresholds())


scored_suite_check = build_suite_check(
    name="principles_suite",
    asset=SCORED_CONVERSATIONS.name,
    validate=_validate_principles,
    description=(
        "GX suite of the quality principles on a source's scored input: correctness (CHAIR, "
        "negative, count, region), balance (type entropy, yes-ratio), diversity (duplicates), "
        "relevance, complexity. Reports by default (WARN); `blocking: true` makes it a gate."
    ),
    partitions_def=sources_partitions,
    config_cls=PrincipleThresholdsConfig,
    gate_field="blocking",
)
