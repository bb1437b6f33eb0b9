"""Quality control of one source: every per-sample metric joined onto its conversations.

Scoring never drops a row (thresholds belong to the final stage), and everything expensive is
cached: embeddings by text hash in DuckDB, so rescoring after a threshold change or a re-run
re-embeds nothing it has seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from vlit_assets.core.embed import (
    Embedder,
    EmbeddingCache,
    conversation_vectors,
    relevance,
)
from vlit_assets.core.image_text import ImageTextScorer
from vlit_assets.core.neardup import DEFAULT_THRESHOLD, diversity_summary, near_duplicates
from vlit_assets.core.schemas import SCORED_CONVERSATIONS
from vlit_assets.core.score import dataset_metrics, score_rules


@dataclass(frozen=True)
class QualityConfig:
    neardup_threshold: float = DEFAULT_THRESHOLD  # cosine at or above which two are near-copies


@dataclass
class QualityResult:
    scored: pl.DataFrame  # scored__conversations columns, one row per input conversation
    dataset: dict[str, float | int | None]  # dataset-level figures (diversity, balance, ...)
    encoded_texts: int  # texts embedded by this call (0 when everything came from the cache)


def exact_duplicate_of() -> pl.Expr:
    """Per row, the smallest other conversation id with the same normalized text, else null."""
    first = pl.col("conversation_id").min().over("norm_text_hash")
    return (
        pl.when(pl.col("norm_text_hash").is_not_null() & (pl.col("conversation_id") != first))
        .then(first)
        .alias("exact_duplicate_of")
    )


def _image_text_scores(conversations: pl.DataFrame, scorer: ImageTextScorer | None) -> pl.Series:
    if scorer is None or conversations.is_empty():
        return pl.Series("image_text_score", [None] * conversations.height, pl.Float64)
    from pathlib import Path

    answers = conversations.select(
        pl.col("turns")
        .list.eval(pl.element().filter(pl.element().struct.field("from") == "gpt"))
        .list.eval(pl.element().struct.field("value"))
        .list.join(" ")
    ).to_series()
    values = scorer.score([Path(p) for p in conversations["image_path"]], answers.to_list())
    return pl.Series("image_text_score", np.asarray(values, dtype=np.float64))


def score_conversations(
    conversations: pl.DataFrame,
    *,
    objects: pl.DataFrame | None,
    tags: pl.DataFrame | None,
    categories: pl.DataFrame | None,
    captions: pl.DataFrame | None,
    embedder: Embedder,
    cache: EmbeddingCache | None,
    config: QualityConfig = QualityConfig(),  # noqa: B008 (frozen)
    run_id: str = "",
    image_text: ImageTextScorer | None = None,
) -> QualityResult:
    """Score every conversation; annotation-based metrics are null where annotations are absent."""
    encoded_before = cache.encoded if cache is not None else 0
    rules = score_rules(conversations, objects, tags, categories, captions)
    vectors = conversation_vectors(conversations, embedder, cache)
    captions = (
        captions
        if captions is not None
        else pl.DataFrame(schema={"image_id": pl.String, "caption": pl.String})
    )
    rel = relevance(conversations, captions, embedder, cache, vectors=vectors)

    has = vectors.has_turns
    ids = np.asarray(vectors.conversation_ids, dtype=object)
    dup = near_duplicates(
        ids[has].tolist(), vectors.conversation[has], threshold=config.neardup_threshold
    )
    keep = {"on": "conversation_id", "how": "left", "maintain_order": "left"}
    scored = (
        conversations.join(rules.with_columns(exact_duplicate_of()), **keep)
        .join(rel.select("conversation_id", "relevance"), **keep)
        .join(dup, **keep)
        .with_columns(
            _image_text_scores(conversations, image_text),
            pl.lit(embedder.model_name).alias("embed_model"),
            pl.lit(run_id).alias("scored_run_id"),
        )
    )
    scored = scored.select(
        [pl.col(c).cast(t) for c, t in SCORED_CONVERSATIONS.polars_schema.items()]
    )
    dataset: dict[str, float | int | None] = dict(dataset_metrics(conversations, rules))
    dataset |= diversity_summary(dup, vectors.conversation[has])
    dataset["relevance_mean"] = rel["relevance"].mean()
    encoded = (cache.encoded - encoded_before) if cache is not None else len(conversations)
    return QualityResult(scored=scored, dataset=dataset, encoded_texts=encoded)
