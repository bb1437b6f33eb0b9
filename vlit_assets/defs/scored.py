"""Quality control stage: generated__conversations -> scored__conversations (every metric)."""

import dagster as dg

from vlit_assets.core.metadata import Metadata
from vlit_assets.core.schemas import GENERATED_CONVERSATIONS, SCORED_CONVERSATIONS
from vlit_assets.core.scored.image_text import ImageTextConfig, build_image_text_scorer
from vlit_assets.core.scored.quality import QualityConfig
from vlit_assets.core.scored.stage import score_source
from vlit_assets.core.scored.text_quality import MinHashConfig
from vlit_assets.core.shards import compute_metadata
from vlit_assets.core.vocab import WRITER_POOL
from vlit_assets.defs.partitions import sources_partitions
from vlit_assets.resources import ComputeResource, EmbedderResource, WarehouseResource


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
    compute: ComputeResource,
) -> dg.MaterializeResult:
    """One row per generated conversation with every quality metric; no row is dropped here."""
    image_text = build_image_text_scorer(ImageTextConfig(clip_model_path=config.clip_model_path))
    with compute.mapper() as mapper, warehouse_db.connect() as con:
        try:
            outcome = score_source(
                con,
                context.partition_key,
                config=config.quality(),
                embedder=embedder.get,
                image_text=image_text,
                run_id=context.run_id,
                mapper=mapper,
            )
        except LookupError as e:
            raise dg.Failure(str(e)) from e
    context.log.info(outcome.summary())
    metadata: Metadata = {
        **outcome.metadata(),
        "image_text_scorer": "configured" if image_text is not None else "not configured",
        **compute_metadata(mapper),
    }
    return dg.MaterializeResult(metadata=metadata)
