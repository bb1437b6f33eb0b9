"""Dataset figures of scored rows (balance, diversity, pooled correctness, relevance) and
their history in ``meta__dataset_metrics``: the one place a dataset-level figure is computed.

The scoring stage, the scored and final suites, the selection report (before and after) and the
metric history all call :func:`dataset_figures`, so a figure means the same thing everywhere.
Formulas and null semantics are in docs/metrics.md.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from datetime import UTC, datetime

import duckdb
import numpy as np
import polars as pl

from vlit_assets.core import warehouse
from vlit_assets.core.metadata import mean
from vlit_assets.core.schemas import META_DATASET_METRICS
from vlit_assets.core.scored.claims import claim_figures
from vlit_assets.core.scored.metrics import check_conversations
from vlit_assets.core.scored.neardup import mean_pairwise_cosine
from vlit_assets.core.text.objects import CATEGORY_NAMES
from vlit_assets.core.text.reading import WORD_PATTERN, normalized_text
from vlit_assets.core.vocab import INSTRUCTION_TYPES, UNLABELLED

Figures = dict[str, float | int | None]


def _entropy_bits(counts: list[int]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c)


def histogram_balance(counts: list[int], support: int) -> tuple[float | None, float | None]:
    """(normalized entropy H/log2 K, KL to uniform log2 K - H) of a histogram over K values."""
    if not counts or sum(counts) == 0 or support < 2:
        return None, None
    h = _entropy_bits(counts)
    return h / math.log2(support), math.log2(support) - h


def distinct_n(texts: pl.Series, n: int) -> float | None:
    """Distinct n-grams / n-grams over word tokens of ``texts`` (n-grams never cross texts)."""
    return _distinct_of_tokens(_word_tokens(texts), n)


def _word_tokens(texts: pl.Series) -> pl.DataFrame:
    """(text_idx, token) for every word of ``texts``, in order."""
    return (
        pl.DataFrame({"text": texts})
        .select(
            text_idx=pl.int_range(pl.len()),
            token=normalized_text(pl.col("text")).str.extract_all(WORD_PATTERN),
        )
        .explode("token", keep_nulls=False)
    )


def _distinct_of_tokens(tokens: pl.DataFrame, n: int) -> float | None:
    same_text = pl.lit(True)
    for k in range(1, n):
        same_text = same_text & (pl.col("text_idx").shift(-k) == pl.col("text_idx"))
    grams = tokens.select(
        gram=pl.concat_str([pl.col("token").shift(-k) for k in range(n)], separator=" "),
        keep=same_text,
    ).filter(pl.col("keep"))
    if grams.height == 0:
        return None
    return grams.get_column("gram").n_unique() / grams.height


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def rule_figures(
    conversations: pl.DataFrame,
    scores: pl.DataFrame,
    *,
    categories: Collection[str] = CATEGORY_NAMES,
    instruction_types: Collection[str] = INSTRUCTION_TYPES,
) -> dict[str, float | None]:
    """Diversity, balance and pooled correctness figures of a scored dataset.

    ``scores`` carries the :func:`score_rules` columns of ``conversations``. Undefined figures
    (an empty histogram, no polar questions, no annotated rows) are None.
    """
    check_conversations(conversations)
    n = scores.height
    tag_hist = (
        scores.select(category=pl.col("mentioned_categories"))
        .explode("category", keep_nulls=False)
        .group_by("category")
        .len()
    )
    tag_counts = tag_hist.get_column("len").to_list()
    k_cat = max(len(categories), tag_hist.height)
    cat_norm, cat_kl = histogram_balance(tag_counts, k_cat)
    # Untyped imported rows say nothing about the type mix: with none typed it is null, not 0.
    type_counts = (
        conversations.filter(pl.col("instruction_type") != UNLABELLED)
        .group_by("instruction_type")
        .len()
        .get_column("len")
        .to_list()
    )
    type_norm, type_kl = histogram_balance(
        type_counts, max(len(instruction_types), len(type_counts))
    )
    humans = (
        conversations.select(pl.col("turns"))
        .explode("turns", keep_nulls=False)
        .filter(pl.col("turns").struct.field("from") == "human")
        .get_column("turns")
        .struct.field("value")
    )
    tokens = _word_tokens(humans)  # once for both distinct-n figures
    sums = scores.select(
        pl.col(
            "n_polar_yes",
            "n_polar_no",
            "n_hallucinated",
            "n_object_mentions",
            "n_negative_denied",
            "n_negative_questions",
            "n_counts_correct",
            "n_counts",
        ).sum()
    ).row(0, named=True)
    return {
        "n_conversations": float(n),
        "unique_tags": float(tag_hist.height),
        "tag_entropy_bits": _entropy_bits(tag_counts) if tag_counts else None,
        "category_entropy_norm": cat_norm,
        "category_kl_uniform_bits": cat_kl,
        "instruction_type_entropy_norm": type_norm,
        "instruction_type_kl_uniform_bits": type_kl,
        "distinct_1": _distinct_of_tokens(tokens, 1),
        "distinct_2": _distinct_of_tokens(tokens, 2),
        "yes_ratio": _ratio(sums["n_polar_yes"], sums["n_polar_yes"] + sums["n_polar_no"]),
        "exact_duplicate_share": (
            1 - scores.get_column("norm_text_hash").n_unique() / n if n else None
        ),
        "chair_i": _ratio(sums["n_hallucinated"], sums["n_object_mentions"]),
        "chair_s_rate": mean(scores.get_column("chair_s").cast(pl.Float64)),
        "negative_consistency": _ratio(sums["n_negative_denied"], sums["n_negative_questions"]),
        "count_consistency": _ratio(sums["n_counts_correct"], sums["n_counts"]),
        **claim_figures(scores),
        "region_name_match_rate": mean(scores.get_column("region_name_match").cast(pl.Float64)),
        "format_valid_rate": mean(scores.get_column("format_valid").cast(pl.Float64)),
        "turns_mean": mean(scores.get_column("n_turns").cast(pl.Float64)),
        "tags_per_conversation_mean": mean(
            scores.get_column("tags_per_conversation").cast(pl.Float64)
        ),
        "reasoning_share_mean": mean(scores.get_column("reasoning_share")),
        "answer_words_mean": mean(scores.get_column("answer_words_mean")),
    }


def diversity_figures(rows: pl.DataFrame, vectors: np.ndarray | None = None) -> Figures:
    """Duplicate figures from stored per-row columns: semantic clusters (null when the rows were
    not embedded) and MinHash text clusters, over the rows given; with ``vectors`` (one per
    row, NaN rows skipped) also the semantic spread, 1 - mean pairwise cosine."""
    clustered = rows.filter(pl.col("cluster_id").is_not_null())
    m = clustered.height
    sizes = clustered.group_by("cluster_id").len()
    texted = (  # null or absent: scored before MinHash existed
        rows["text_cluster_id"].drop_nulls()
        if "text_cluster_id" in rows.columns
        else pl.Series([], dtype=pl.String)
    )
    spread = None
    if vectors is not None:
        finite = vectors[np.isfinite(vectors).all(axis=1)]
        mean_cos = mean_pairwise_cosine(finite) if finite.shape[0] else None
        spread = None if mean_cos is None else 1.0 - mean_cos
    return {
        "samples": m,
        "near_duplicate_clusters": int((sizes["len"] > 1).sum()) if m else 0,
        "samples_in_near_duplicate_clusters": int(sizes.filter(pl.col("len") > 1)["len"].sum())
        if m
        else 0,
        "near_duplicate_rate": (m - sizes.height) / m if m else None,
        "mean_novelty": mean(clustered["novelty"]) if m else None,
        "text_near_duplicate_rate": (
            (texted.len() - texted.n_unique()) / texted.len() if texted.len() else None
        ),
        "semantic_spread": spread,
    }


def dataset_figures(rows: pl.DataFrame, vectors: np.ndarray | None = None) -> Figures:
    """Every dataset figure of scored rows: :func:`rule_figures`, :func:`diversity_figures`
    and the relevance mean. ``vectors`` (conversation vectors in row order, NaN where a row was
    not embedded) add the semantic spread; without them it is None."""
    figures: Figures = dict(rule_figures(rows, rows))
    figures |= diversity_figures(rows, vectors)
    figures["relevance_mean"] = mean(rows["relevance"]) if rows.height else None
    return figures


def record_dataset_metrics(
    con: duckdb.DuckDBPyConnection, figures: Figures, *, run_id: str, asset: str, source: str
) -> None:
    """Append the defined figures of one materialization to the metric history."""
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
