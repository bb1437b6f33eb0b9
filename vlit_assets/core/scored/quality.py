"""Quality control of one source: every per-sample metric joined onto its conversations.

Scoring never drops a row (thresholds belong to the final stage), and everything expensive is
cached: embeddings by text hash in DuckDB, so rescoring after a threshold change or a re-run
re-embeds nothing it has seen.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import polars as pl

from vlit_assets.core.schemas import SCORED_CONVERSATIONS
from vlit_assets.core.scored.embed import (
    Embedder,
    EmbeddingCache,
    conversation_vectors,
    relevance,
)
from vlit_assets.core.scored.figures import Figures, dataset_figures
from vlit_assets.core.scored.image_text import ImageTextScorer
from vlit_assets.core.scored.llm_checks import llm_checks
from vlit_assets.core.scored.metrics import check_conversations, score_rules
from vlit_assets.core.scored.neardup import DEFAULT_THRESHOLD, near_duplicates
from vlit_assets.core.scored.shards import MappedEmbedder, RowInputs, map_row_metrics
from vlit_assets.core.scored.task_kinds import infer_task_kinds
from vlit_assets.core.scored.text_quality import (
    MinHashConfig,
    minhash_clusters,
    text_statistics,
)
from vlit_assets.core.shards import ShardMap
from vlit_assets.core.vocab import UNLABELLED

SEMANTIC_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class QualityConfig:
    # Conversation embeddings: "auto" computes them only when a metric needs them (relevance,
    # when the source's images have captions); "on" always (semantic near-duplicates on data
    # without captions); "off" never. Encoding is by far the dearest step of scoring.
    semantic: str = "auto"
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    rep_len: int = 10  # words per n-gram of the repetition ratios

    def __post_init__(self) -> None:
        if self.semantic not in SEMANTIC_MODES:
            raise ValueError(f"semantic must be one of {SEMANTIC_MODES}, got {self.semantic!r}")


@dataclass
class QualityResult:
    scored: pl.DataFrame  # scored__conversations columns, one row per input conversation
    dataset: Figures  # dataset-level figures (figures.dataset_figures)
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
    # text-only rows (no image) have no image-text score: null, never a guess
    paths = conversations["image_path"].to_list()
    with_image = [k for k, p in enumerate(paths) if p is not None]
    out: list[float | None] = [None] * len(paths)
    if with_image:
        texts = answers.to_list()
        values = scorer.score([Path(paths[k]) for k in with_image], [texts[k] for k in with_image])
        for k, value in zip(with_image, np.asarray(values, dtype=np.float64).tolist(), strict=True):
            out[k] = value
    return pl.Series("image_text_score", out, pl.Float64)


def with_inferred_types(conversations: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The conversations with untyped (imported) rows typed by the text rules, and per row
    ``inferred_type``, ``type_inferred``, ``task_kinds`` and ``primary_kind``.

    A declared type is never overwritten; the inference is kept beside it for comparison.
    """
    kinds = infer_task_kinds(conversations.select("conversation_id", "turns"))
    inferred = (pl.col("instruction_type") == UNLABELLED) & pl.col("inferred_type").is_not_null()
    typed = conversations.join(
        kinds.select("conversation_id", "inferred_type"),
        on="conversation_id",
        how="left",
        maintain_order="left",
    ).select(
        *(c for c in conversations.columns if c != "instruction_type"),
        instruction_type=pl.when(inferred)
        .then(pl.col("inferred_type"))
        .otherwise(pl.col("instruction_type")),
        type_inferred=inferred,
    )
    facts = typed.select("conversation_id", "type_inferred").join(
        kinds.select("conversation_id", "inferred_type", "task_kinds", "primary_kind"),
        on="conversation_id",
        how="left",
        maintain_order="left",
    )
    return typed.drop("type_inferred").select(conversations.columns), facts


def _llm_checks(
    conversations: pl.DataFrame,
    objects: pl.DataFrame | None,
    tags: pl.DataFrame | None,
    captions: pl.DataFrame | None,
    categories: pl.DataFrame | None,
) -> pl.DataFrame:
    """llm_checks on the self-instruct rows, which they are written for (copying our prompt's
    examples means nothing for imported or template text); other rows are not judged (null)."""
    written = conversations.filter(pl.col("generator") == "llm")
    return llm_checks(written, objects, tags, captions, categories)


def _verified(conversations: pl.DataFrame, verification: pl.DataFrame | None) -> pl.DataFrame:
    """The verifier's verified_* columns (generated__llm_verification rows it judged)."""
    columns = ("verified_share", "verified_contradicted", "verifier_model",
               "verifier_prompt_version")  # fmt: skip
    if verification is None:
        return conversations.select("conversation_id").with_columns(
            *(pl.lit(None).alias(c) for c in columns)
        )
    return verification.filter(pl.col("error").is_null()).select("conversation_id", *columns)


def dedup_group() -> pl.Expr:
    """What two rows must share to be text near-copies: the image, and for region rows the box.

    Two region conversations about two bananas of one photo share most of their words but are
    about different boxes, so the box is part of what the conversation is.
    """
    return pl.concat_str(
        pl.col("image_id").fill_null(""), pl.col("region_object_id").fill_null(""), separator="|"
    ).alias("_dedup_group")


def image_facts(conversations: pl.DataFrame, images: pl.DataFrame | None) -> pl.DataFrame:
    """Per conversation, its image's width, height and file size (null for text-only rows)."""
    schema = {"image_width": pl.Int32, "image_height": pl.Int32, "image_bytes": pl.Int64}
    if images is None or images.is_empty():
        return conversations.select(
            "conversation_id", *(pl.lit(None, t).alias(c) for c, t in schema.items())
        )
    facts = images.select(
        "image_id",
        image_width=pl.col("width").cast(pl.Int32),
        image_height=pl.col("height").cast(pl.Int32),
        image_bytes=pl.col("bytes").cast(pl.Int64),
    ).unique("image_id")
    return (
        conversations.select("conversation_id", "image_id")
        .join(facts, on="image_id", how="left", maintain_order="left")
        .drop("image_id")
    )


def needs_vectors(config: QualityConfig, captions: pl.DataFrame | None) -> bool:
    """Whether scoring embeds the conversations (see ``QualityConfig.semantic``)."""
    if config.semantic != "auto":
        return config.semantic == "on"
    return captions is not None and not captions.is_empty()


def _without_vectors(conversations: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    rel = conversations.select("conversation_id", relevance=pl.lit(None, pl.Float64))
    dup = conversations.select(
        "conversation_id",
        cluster_id=pl.lit(None, pl.String),
        cluster_size=pl.lit(None, pl.Int32),
        nearest_id=pl.lit(None, pl.String),
        nearest_cosine=pl.lit(None, pl.Float64),
        novelty=pl.lit(None, pl.Float64),
    )
    return rel, dup


def row_metrics(rows: RowInputs, config: QualityConfig = QualityConfig()) -> pl.DataFrame:  # noqa: B008 (frozen)
    """The typed conversations of ``rows`` with every metric that reads only their own images.

    One row per input row, in input order; ``exact_duplicate_of`` and the vector metrics,
    which read the whole source, are added by ``score_conversations``.
    """
    conversations, kinds = with_inferred_types(rows.conversations)
    objects, tags, captions, categories = rows.objects, rows.tags, rows.captions, rows.categories
    # Independent parts; polars, numpy and rensa release the GIL in their kernels, so threads
    # keep both cores busy.
    with ThreadPoolExecutor(max_workers=2) as pool:
        texts_job = pool.submit(text_statistics, conversations, config.rep_len)
        copies_job = pool.submit(
            minhash_clusters,
            conversations.with_columns(dedup_group()),
            order="variant",
            within="_dedup_group",
            config=config.minhash,
        )
        rules = score_rules(conversations, objects, tags, categories, captions)
        texts, copies = texts_job.result(), copies_job.result()
    parts = (
        rules,
        kinds,
        texts,
        copies,
        image_facts(conversations, rows.images),
        _llm_checks(conversations, objects, tags, captions, categories),
        _verified(conversations, rows.verification),
    )
    scored = conversations
    for part in parts:
        scored = scored.join(part, on="conversation_id", how="left", maintain_order="left")
    return scored


def score_conversations(
    conversations: pl.DataFrame,
    *,
    objects: pl.DataFrame | None,
    tags: pl.DataFrame | None,
    categories: pl.DataFrame | None,
    captions: pl.DataFrame | None,
    embedder: Embedder | None,
    cache: EmbeddingCache | None,
    config: QualityConfig = QualityConfig(),  # noqa: B008 (frozen)
    run_id: str = "",
    image_text: ImageTextScorer | None = None,
    images: pl.DataFrame | None = None,
    verification: pl.DataFrame | None = None,
    mapper: ShardMap | None = None,
) -> QualityResult:
    """Score every conversation; annotation-based metrics are null where annotations are absent.

    ``embedder`` is only used (and only needs to be given) when ``needs_vectors`` says so; an
    unembedded source gets null relevance and null semantic clusters, never zeros. With a
    ``mapper``, the per-image metrics and the encoding of uncached texts run as its shards
    (core/scored/shards.py) and the rest here; the rows are the same as without one.
    """
    encoded_before = cache.encoded if cache is not None else 0
    rows = RowInputs(conversations, objects, tags, categories, captions, images, verification)
    if mapper is None:
        scored = row_metrics(rows, config)
    else:
        check_conversations(conversations)  # ids unique across shards, not only within each
        scored = map_row_metrics(mapper, partial(row_metrics, config=config), rows)
    conversations = scored.select(conversations.columns)
    embed = needs_vectors(config, captions)
    if embed and embedder is None:
        raise ValueError("score_conversations: these settings need an embedder")
    semantic_vectors: np.ndarray | None = None
    if embed:
        assert embedder is not None
        encoder = embedder if mapper is None else MappedEmbedder(embedder, mapper)
        vectors = conversation_vectors(conversations, encoder, cache)
        rel = relevance(
            conversations,
            captions
            if captions is not None
            else pl.DataFrame(schema={"image_id": pl.String, "caption": pl.String}),
            encoder,
            cache,
            vectors=vectors,
        ).select("conversation_id", "relevance")
        has = vectors.has_turns
        ids = np.asarray(vectors.conversation_ids, dtype=object)
        # Clusters at the fixed DEFAULT_THRESHOLD describe the source (near_duplicate_rate,
        # cluster_size); the final stage decides which rows are near duplicates (final/dedup.py).
        dup = near_duplicates(
            ids[has].tolist(), vectors.conversation[has], threshold=DEFAULT_THRESHOLD
        )
        semantic_vectors = vectors.conversation
    else:
        rel, dup = _without_vectors(conversations)
    scored = scored.with_columns(exact_duplicate_of())
    for part in (rel, dup):
        scored = scored.join(part, on="conversation_id", how="left", maintain_order="left")
    scored = scored.with_columns(
        _image_text_scores(conversations, image_text),
        pl.lit(embedder.model_name if embed and embedder else None, pl.String).alias("embed_model"),
        pl.lit(run_id).alias("scored_run_id"),
    )
    scored = scored.select(
        [pl.col(c).cast(t) for c, t in SCORED_CONVERSATIONS.polars_schema.items()]
    )
    dataset = dataset_figures(scored, semantic_vectors)
    encoded = (cache.encoded - encoded_before) if cache is not None else 0
    return QualityResult(scored=scored, dataset=dataset, encoded_texts=encoded)
