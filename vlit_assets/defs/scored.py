"""Quality control stage: generated__conversations -> scored__conversations (every metric)."""

import dagster as dg

from vlit_assets.checks.factory import build_suite_check
from vlit_assets.checks.scored_suite import PrincipleThresholds, validate_scored_table
from vlit_assets.core.schemas import GENERATED_CONVERSATIONS, SCORED_CONVERSATIONS
from vlit_assets.core.scored.image_text import ImageTextConfig, build_image_text_scorer
from vlit_assets.core.scored.quality import QualityConfig
from vlit_assets.core.scored.stage import score_source
from vlit_assets.core.scored.text_quality import MinHashConfig
from vlit_assets.core.vocab import WRITER_POOL
from vlit_assets.defs.partitions import sources_partitions
from vlit_assets.resources import EmbedderResource, WarehouseResource


class ScoredConfig(dg.Config):
    clip_model_path: str | None = None  # optional local CLIP directory for image-text scores
    # Conversation embeddings (MiniLM): "auto" = only where a metric needs them (relevance, when
    # the images have captions); "on" = always, for semantic near-duplicates; "off" = never.
    # Which rows are near duplicates is decided by the final stage (FinalConfig).
    semantic: str = QualityConfig.semantic
    # Word 5-gram Jaccard at or above which two texts of one image (and region) are near copies.
    minhash_jaccard: float = MinHashConfig.threshold

    def quality(self) -> QualityConfig:
        return QualityConfig(
            semantic=self.semantic, minhash=MinHashConfig(threshold=self.minhash_jaccard)
        )


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
    image_text = build_image_text_scorer(ImageTextConfig(clip_model_path=config.clip_model_path))
    with warehouse_db.connect() as con:
        try:
            outcome = score_source(
                con,
                context.partition_key,
                config=config.quality(),
                embedder=embedder.get,
                image_text=image_text,
                run_id=context.run_id,
            )
        except LookupError as e:
            raise dg.Failure(str(e)) from e
    context.log.info(outcome.summary())
    scorer = "configured" if image_text is not None else "not configured"
    return dg.MaterializeResult(metadata={**outcome.metadata(), "image_text_scorer": scorer})


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
