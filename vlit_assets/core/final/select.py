"""Final-stage selection: thresholds over scored metrics, dedup, balancing caps and the split.

Scoring keeps every row; this module decides. :func:`decide` runs the rules of :data:`RULES` in
their documented order over ``scored__conversations`` rows of any number of sources and returns
one decision per row (kept or not, every rule it fails, the first one, its split and its
near-duplicate cluster), the kept rows, and a JSON-ready report with drops per rule and the
dataset figures before and after. :func:`assign_split` hashes ids into train/val so that adding a
batch never moves an existing conversation. See docs/selection.md.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from vlit_assets.core.scored.metrics import dataset_metrics
from vlit_assets.core.scored.neardup import (
    check_unit_vectors,
    cluster_labels,
    find_neighbours,
    mean_pairwise_cosine,
)
from vlit_assets.core.vocab import TRAIN, VAL

# Evaluation order. A row lists every rule it fails; its first failing rule is the earliest here.
RULES: dict[str, str] = {
    "generation_failed": "the generator produced no usable sample (drop_reason is set)",
    "format_invalid": "format_valid is false",
    "hallucination": "chair_i > max_chair_i",
    "negative_inconsistent": "negative_consistency < min_negative_consistency",
    "count_inconsistent": "count_consistency < min_count_consistency",
    "region_name_mismatch": "region_name_match is false",
    "relation_contradicted": "n_relations_contradicted > 0 (the boxes say the reverse of a "
    "stated left/right/above/below)",
    "denies_present_object": "n_denied_present > 0 (an answer denies an annotated object)",
    "example_copy": "example_copy is true (a turn copies the prompt's in-context examples)",
    "annotation_leak": "annotation_leak is true (mention, caption, bounding box, box numbers)",
    "repeated_question": "n_repeated_questions > max_repeated_questions",
    "grammar_error": "n_grammar_errors > max_grammar_errors (article, number agreement, "
    "Yes/No to a non-polar question, Sure to a non-request); imported rows only with "
    "grammar_imported",
    "verifier_contradicted": "verified_contradicted > 0 (the optional verifier found an answer "
    "contradicted)",
    "answers_too_short": "answer_words_min < min_answer_words_min",
    "too_few_turns": "n_turns < min_turns",
    "text_too_short": "text_chars < min_text_chars or text_words < min_text_words",
    "text_too_long": "text_chars > max_text_chars",
    "repetitive_text": "word_rep_ratio > max_word_rep_ratio",
    "repetitive_answer": "answer_rep_ratio > max_answer_rep_ratio",
    "special_characters": "special_char_ratio > max_special_char_ratio",
    "image_too_small": "image_width or image_height < min_image_side",
    "image_aspect_ratio": "max(w/h, h/w) > max_aspect_ratio",
    "image_too_large": "image_bytes > max_image_bytes",
    "low_relevance": "relevance < min_relevance, or far below its instruction type (robust z)",
    "exact_duplicate": "another row with the same norm_text_hash ranks higher",
    "near_copy_text": "another row of the same MinHash text cluster ranks higher",
    "near_duplicate": "another row of the same near-duplicate cluster ranks higher",
    "category_cap": "a mentioned category already has max_per_category kept rows",
    "type_mix": "the instruction type is over its share of target_type_mix",
    "type_share_cap": "the instruction type would exceed max_share_per_type of the kept rows",
}
DEDUP_RULES = ("exact_duplicate", "near_copy_text", "near_duplicate")
BALANCE_RULES = ("category_cap", "type_mix", "type_share_cap")
ROW_RULES = tuple(r for r in RULES if r not in DEDUP_RULES + BALANCE_RULES)  # the row alone

# Principle -> dataset figures shown before/after selection (keys of selection_metrics).
PRINCIPLE_METRICS: dict[str, tuple[str, ...]] = {
    "correctness": (
        "chair_i",
        "chair_s_rate",
        "negative_consistency",
        "count_consistency",
        "relation_consistency",
        "grammar_error_rate",
        "region_name_match_rate",
        "format_valid_rate",
    ),
    "diversity": (
        "unique_tags",
        "tag_entropy_bits",
        "distinct_1",
        "distinct_2",
        "exact_duplicate_share",
        "semantic_spread",
        "novelty_mean",
    ),
    "complexity": (
        "turns_mean",
        "tags_per_conversation_mean",
        "reasoning_share_mean",
        "answer_words_mean",
    ),
    "balance": (
        "category_entropy_norm",
        "category_kl_uniform_bits",
        "instruction_type_entropy_norm",
        "instruction_type_kl_uniform_bits",
        "yes_ratio",
    ),
    "relevance": ("relevance_mean",),
}

# Fixed bins so that before/after (and runs) are comparable; values outside fall in the end bins.
DISTRIBUTIONS: dict[str, tuple[float, float, int]] = {
    "relevance": (-0.2, 1.0, 24),
    "novelty": (0.0, 0.5, 25),
    "answer_words_mean": (0.0, 100.0, 20),
}

DECISIONS_SCHEMA: dict[str, pl.DataType] = {
    "conversation_id": pl.String(),
    "source": pl.String(),
    "kept": pl.Boolean(),
    "first_failing_rule": pl.String(),
    "failing_rules": pl.List(pl.String()),
    "split": pl.String(),
    "cluster_id": pl.String(),
    "representative_id": pl.String(),
    "exact_representative_id": pl.String(),
}

_REQUIRED = (
    "conversation_id",
    "source",
    "image_id",
    "instruction_type",
    "turns",
    "drop_reason",
    "format_valid",
    "chair_i",
    "negative_consistency",
    "count_consistency",
    "region_name_match",
    "answer_words_min",
    "n_turns",
    "relevance",
    "norm_text_hash",
    "mentioned_categories",
)

# Columns of the text and image filters. Rows scored before they existed carry nulls, which no
# threshold fails (a frame without them is treated the same way).
_OPTIONAL: dict[str, pl.DataType] = {
    "n_denied_present": pl.Int32(),
    "n_relations_contradicted": pl.Int32(),
    "n_grammar_errors": pl.Int32(),
    "generator": pl.String(),
    "example_copy": pl.Boolean(),
    "annotation_leak": pl.Boolean(),
    "n_repeated_questions": pl.Int32(),
    "verified_contradicted": pl.Int32(),
    "variant": pl.Int32(),
    "text_chars": pl.Int32(),
    "text_words": pl.Int32(),
    "word_rep_ratio": pl.Float64(),
    "answer_rep_ratio": pl.Float64(),
    "special_char_ratio": pl.Float64(),
    "text_cluster_id": pl.String(),
    "image_width": pl.Int32(),
    "image_height": pl.Int32(),
    "image_bytes": pl.Int64(),
}


def _with_optional(scored: pl.DataFrame) -> pl.DataFrame:
    return scored.with_columns(
        pl.lit(None, dtype).alias(c) for c, dtype in _OPTIONAL.items() if c not in scored.columns
    )


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class Thresholds:
    """Per-row thresholds and dedup settings. A null metric never fails a threshold."""

    # Drop when the share of object mentions absent from the annotations exceeds this.
    max_chair_i: float = 0.0
    # Drop rows whose turns are malformed (format_valid false).
    require_format_valid: bool = True
    # Drop when fewer than this share of questions about absent objects are denied.
    min_negative_consistency: float = 1.0
    # Drop when fewer than this share of stated counts match the annotation.
    min_count_consistency: float = 1.0
    # Drop region conversations whose first answer does not name the boxed object.
    require_region_name_match: bool = True
    # Relevance (answers' mean cosine to the image's captions) is judged within each
    # instruction type, because region and negative conversations score low by construction:
    # a row fails when it lies more than relevance_max_z robust deviations (1.4826 * MAD)
    # below the median of its type in the batch; None = off. Types with fewer than
    # relevance_min_rows judged rows are not judged this way. See docs/selection.md.
    relevance_max_z: float | None = 3.5
    relevance_min_rows: int = 30
    # And, whatever the type, when it is below this absolute floor; None = off.
    min_relevance: float | None = 0.0
    # Drop when some answer has fewer words than this (a one-word "Yes." teaches nothing).
    min_answer_words_min: int = 2
    # Drop when the conversation has fewer question/answer pairs than this. One: single-round
    # conversations (LLaVA's detailed descriptions and complex reasoning) are not defects;
    # turns_mean in the suites reports the complexity of a set.
    min_turns: int = 1
    # What real small models get wrong (core/llm_checks.py, self-instruct rows; null on others)
    # and the optional verifier's verdicts: each drops a row when it judged it.
    drop_denied_present: bool = True
    drop_example_copies: bool = True
    drop_annotation_leaks: bool = True
    max_repeated_questions: int | None = 0
    drop_verifier_contradicted: bool = True
    # Relations and grammar (core/scored/claims.py, every row scored). Template rows state
    # only relations the boxes support and trip no grammar rule (0 of 295 on coco-mini), so
    # both are on: a reversed relation or "a oven" in training data is taught as it stands.
    # Imported rows meet the grammar rule only with grammar_imported: a quarter of the QC
    # bench's rows labelled clean carry an error ("one skateboards", "Yes" to "What might
    # ..."), and dropping a quarter of a dataset is the user's call, not a default.
    drop_relation_contradicted: bool = True
    max_grammar_errors: int | None = 0
    grammar_imported: bool = False
    # Text filters with Data-Juicer's meanings (docs/selection.md); None switches one off.
    # Length bounds of all turns' text: the seven-filter recipe's text_length_filter and the
    # default minimum of its words_num_filter.
    min_text_chars: int | None = 10
    max_text_chars: int | None = 10_000
    min_text_words: int | None = 10
    # Repeated word 10-grams over the whole text (word_repetition_filter's default maximum)
    # and inside the most repetitive answer, where a looping model shows itself.
    max_word_rep_ratio: float | None = 0.5
    max_answer_rep_ratio: float | None = 0.3
    max_special_char_ratio: float | None = 0.25
    # Keep one row per MinHash text cluster (word 5-gram Jaccard >= the scoring threshold,
    # within an image and region): the first in source order among those passing the rules.
    drop_text_near_copies: bool = True
    # Image bounds read from the header; off by default, since a small or panoramic image is
    # not wrong in itself. The seven-filter recipe uses 100 px and 3.0.
    min_image_side: int | None = None
    max_aspect_ratio: float | None = None
    max_image_bytes: int | None = None
    # Keep one row per norm_text_hash (case/spacing/punctuation-insensitive copies).
    drop_exact_duplicates: bool = True
    # Keep one row per near-duplicate cluster (conversation cosine >= this); None = off.
    neardup_threshold: float | None = 0.95
    # Two rows are near duplicates only if they also agree on this column (None = text alone).
    # "image_id" keeps template conversations about different images, which share most of
    # their words; a column of image content hashes makes the test hold across sources.
    neardup_within: str | None = "image_id"

    def __post_init__(self) -> None:
        _check_unit_interval("max_chair_i", self.max_chair_i)
        _check_unit_interval("min_negative_consistency", self.min_negative_consistency)
        _check_unit_interval("min_count_consistency", self.min_count_consistency)
        if self.min_relevance is not None and not -1.0 <= self.min_relevance <= 1.0:
            raise ValueError(f"min_relevance must be a cosine in [-1, 1], got {self.min_relevance}")
        if self.relevance_max_z is not None and self.relevance_max_z <= 0:
            raise ValueError(f"relevance_max_z must be > 0, got {self.relevance_max_z}")
        if self.relevance_min_rows < 2:
            raise ValueError(f"relevance_min_rows must be >= 2, got {self.relevance_min_rows}")
        if self.min_answer_words_min < 0 or self.min_turns < 0:
            raise ValueError("min_answer_words_min and min_turns must be >= 0")
        if self.neardup_threshold is not None and not -1.0 <= self.neardup_threshold <= 1.0:
            raise ValueError(
                f"neardup_threshold must be a cosine in [-1, 1], got {self.neardup_threshold}"
            )


@dataclass(frozen=True)
class Balance:
    """Caps applied to the rows that pass every other rule; None switches a cap off."""

    # No instruction type may exceed this share of the kept rows.
    max_share_per_type: float | None = None
    # Keep the largest subset whose type counts follow these weights (normalized; types not
    # named get weight 0 and are dropped).
    target_type_mix: dict[str, float] | None = None
    # At most this many kept rows may mention any one category.
    max_per_category: int | None = None
    # Which rows a cap drops: rows are ranked by a hash of (seed, conversation_id).
    seed: int = 0

    def __post_init__(self) -> None:
        share = self.max_share_per_type
        if share is not None and not 0.0 < share <= 1.0:
            raise ValueError(f"max_share_per_type must be in (0, 1], got {share}")
        if self.target_type_mix is not None:
            weights = self.target_type_mix
            bad = {k: w for k, w in weights.items() if not (w >= 0 and math.isfinite(w))}
            if bad or not weights or sum(weights.values()) <= 0:
                raise ValueError(
                    f"target_type_mix needs finite weights >= 0 with a positive sum, got {weights}"
                )
        if self.max_per_category is not None and self.max_per_category < 1:
            raise ValueError(f"max_per_category must be >= 1, got {self.max_per_category}")


@dataclass(frozen=True)
class SplitConfig:
    """Validation share and hash salt; changing either reshuffles every split."""

    val_ratio: float = 0.05
    salt: str = "vlit-split-v1"
    # Column hashed for the split. "image_id" (the default) is a group split: an image and
    # all its conversations land on one side. When the frame has an ``image_sha256`` column
    # (raw__images.sha256, joined by the final stage) the image's content hash is hashed
    # instead, so the same picture under two names or in two sources stays together.
    key: str = "image_id"

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_ratio < 1.0:
            raise ValueError(f"val_ratio must be in [0, 1), got {self.val_ratio}")
        if not self.salt:
            raise ValueError("salt must be a non-empty string")


@dataclass
class Selection:
    decisions: pl.DataFrame  # DECISIONS_SCHEMA, one row per scored row, in input order
    kept: pl.DataFrame  # the kept scored rows, every column, plus `split`
    report: dict = field(default_factory=dict)  # JSON-ready; see docs/selection.md


# ---------------------------------------------------------------- hashing


def _unit_hashes(prefix: str, values: list[str]) -> np.ndarray:
    """BLAKE2b of ``prefix + value`` mapped to [0, 1): a uniform draw fixed by the value."""
    base = hashlib.blake2b(prefix.encode("utf-8"), digest_size=8)
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        h = base.copy()
        h.update(value.encode("utf-8"))
        out[i] = int.from_bytes(h.digest(), "big") / 2.0**64
    return out


def assign_split(conversation_ids: pl.Series, cfg: SplitConfig) -> pl.Series:
    """``"val"`` when the hash of (salt, id) falls below ``val_ratio``, else ``"train"``.

    Nothing but the id and the salt enters the hash, so a row's split never depends on which
    other rows exist.
    """
    if conversation_ids.null_count():
        raise ValueError(f"assign_split: {conversation_ids.name or 'ids'} has null values")
    draws = _unit_hashes(f"{cfg.salt}\x1f", conversation_ids.cast(pl.String).to_list())
    return pl.Series("split", np.where(draws < cfg.val_ratio, VAL, TRAIN), dtype=pl.String)


IMAGE_HASH_COLUMN = "image_sha256"


def split_group_expr(key: str, columns: list[str] | tuple[str, ...]) -> pl.Expr:
    """What the split hashes for ``key``: the image content hash when known (key image_id)."""
    if key == "image_id" and IMAGE_HASH_COLUMN in columns:
        return (
            pl.when(pl.col(IMAGE_HASH_COLUMN).is_not_null())
            .then(pl.lit("sha256:") + pl.col(IMAGE_HASH_COLUMN))
            .otherwise(pl.col("image_id").cast(pl.String))
        )
    return pl.col(key).cast(pl.String)


def images_in_both_splits(rows: pl.DataFrame) -> int:
    """Images (by content hash when known, else image_id) with rows in both train and val."""
    if rows.is_empty():
        return 0
    group = split_group_expr("image_id", rows.columns).alias("_image")
    sides = (
        rows.filter(pl.col("split").is_not_null())
        .group_by(group)
        .agg(pl.col("split").n_unique().alias("_sides"))
    )
    return int((sides["_sides"] > 1).sum())


# ---------------------------------------------------------------- per-row rules


def _below(column: str, bound: float | None) -> pl.Expr:
    return pl.col(column) < bound if bound is not None else pl.lit(False)


def _above(column: str, bound: float | None, value: pl.Expr | None = None) -> pl.Expr:
    if bound is None:
        return pl.lit(False)
    return (value if value is not None else pl.col(column)) > bound


def _row_rule_exprs(t: Thresholds) -> dict[str, pl.Expr]:
    """One boolean per row rule; null comparisons (metric not judged) become False."""
    off = pl.lit(False)
    exprs = {
        "generation_failed": pl.col("drop_reason").is_not_null(),
        "format_invalid": ~pl.col("format_valid") if t.require_format_valid else off,
        "hallucination": pl.col("chair_i") > t.max_chair_i,
        "negative_inconsistent": pl.col("negative_consistency") < t.min_negative_consistency,
        "count_inconsistent": pl.col("count_consistency") < t.min_count_consistency,
        "region_name_mismatch": ~pl.col("region_name_match")
        if t.require_region_name_match
        else off,
        "relation_contradicted": (pl.col("n_relations_contradicted") > 0)
        & t.drop_relation_contradicted,
        "grammar_error": _above("n_grammar_errors", t.max_grammar_errors)
        & ((pl.col("generator") != "import").fill_null(True) | t.grammar_imported),
        "answers_too_short": pl.col("answer_words_min") < t.min_answer_words_min,
        "too_few_turns": pl.col("n_turns") < t.min_turns,
        "denies_present_object": (pl.col("n_denied_present") > 0) & t.drop_denied_present,
        "example_copy": pl.col("example_copy") & t.drop_example_copies,
        "annotation_leak": pl.col("annotation_leak") & t.drop_annotation_leaks,
        "repeated_question": _above("n_repeated_questions", t.max_repeated_questions),
        "verifier_contradicted": (pl.col("verified_contradicted") > 0)
        & t.drop_verifier_contradicted,
        "text_too_short": _below("text_chars", t.min_text_chars)
        | _below("text_words", t.min_text_words),
        "text_too_long": _above("text_chars", t.max_text_chars),
        "repetitive_text": _above("word_rep_ratio", t.max_word_rep_ratio),
        "repetitive_answer": _above("answer_rep_ratio", t.max_answer_rep_ratio),
        "special_characters": _above("special_char_ratio", t.max_special_char_ratio),
        "image_too_small": _below("image_width", t.min_image_side)
        | _below("image_height", t.min_image_side),
        "image_aspect_ratio": _above(
            "_aspect",
            t.max_aspect_ratio,
            pl.max_horizontal(
                pl.col("image_width") / pl.col("image_height"),
                pl.col("image_height") / pl.col("image_width"),
            ),
        ),
        "image_too_large": _above("image_bytes", t.max_image_bytes),
        "low_relevance": (
            pl.col("relevance") < t.min_relevance if t.min_relevance is not None else off
        )
        | (pl.col("relevance") < pl.col("_relevance_floor")).fill_null(False),
    }
    return {name: expr.fill_null(False).alias(name) for name, expr in exprs.items()}


def answer_word_frequencies(scored: pl.DataFrame) -> pl.DataFrame:
    """(``_row``, ``_df``): each distinct answer word of each row, with the number of rows in
    the batch whose answers use it (its document frequency). Words are counted by hash."""
    words = (
        scored.select(
            pl.int_range(pl.len()).alias("_row"),
            pl.col("turns")
            .list.eval(
                pl.element()
                .filter(pl.element().struct.field("from") == "gpt")
                .struct.field("value")
            )
            .list.join(" ")
            .str.to_lowercase()
            .str.extract_all(r"[a-z][a-z']*")
            .list.eval(pl.element().hash(seed=5))
            .alias("_word"),
        )
        .explode("_word")
        .drop_nulls("_word")
        .unique(["_row", "_word"])
    )
    df = words.group_by("_word").len("_df")
    return words.join(df, on="_word").select("_row", "_df")


def typicality(scored: pl.DataFrame) -> pl.Series:
    """Mean log document frequency, within the batch, of the words of a row's answers.

    A near copy with one word garbled or swapped carries a word the rest of the batch rarely
    uses, so it is less typical than its original, whose words the batch shares. Null for a
    row without answer words.
    """
    per_row = (
        answer_word_frequencies(scored)
        .group_by("_row")
        .agg(pl.col("_df").cast(pl.Float64).log().mean().alias("typicality"))
    )
    rows = pl.DataFrame({"_row": pl.int_range(scored.height, eager=True)})
    joined = rows.join(per_row, on="_row", how="left", maintain_order="left")
    return joined["typicality"]


def semantic_dedup_possible(vectors: np.ndarray | None, t: Thresholds) -> bool:
    """Whether semantic near duplicates can pair any rows: on, and two rows have vectors."""
    if t.neardup_threshold is None or vectors is None or vectors.shape[0] < 2:
        return False
    return int(np.isfinite(vectors[:, 0]).sum()) >= 2


def relevance_floors(scored: pl.DataFrame, t: Thresholds) -> dict[str, float]:
    """Per instruction type, the relevance below which a row is an outlier of its type:
    median - relevance_max_z * 1.4826 * MAD over the type's rows with a relevance. Types
    with fewer than ``relevance_min_rows`` such rows get no floor (too few to calibrate)."""
    if t.relevance_max_z is None:
        return {}
    rel = pl.col("relevance").fill_nan(None)
    stats = (
        scored.filter(rel.is_not_null())
        .group_by("instruction_type")
        .agg(
            rel.median().alias("median"),
            (rel - rel.median()).abs().median().alias("mad"),
            pl.len().alias("n"),
        )
        .filter(pl.col("n") >= t.relevance_min_rows)
        .sort("instruction_type")
    )
    z = t.relevance_max_z * 1.4826
    return {
        itype: float(median - z * mad)
        for itype, median, mad in stats.select("instruction_type", "median", "mad").iter_rows()
    }


def _rank(frame: pl.DataFrame, failed: list[str]) -> pl.Series:
    """Representative order: fewest failed rules, most typical words (see :func:`typicality`),
    highest relevance, most turns, earliest in source order (``variant``: a copy comes after
    what it copies), smallest id.

    Typicality comes before relevance: on planted near copies of coco-mini, ranking by
    relevance kept the garbled copy over its original in 42 of 90 pairs (see
    docs/selection.md for the measured figures).
    """
    typ = pl.col("typicality") if "typicality" in frame.columns else pl.lit(None, pl.Float64)
    order = frame.select(
        pl.sum_horizontal([pl.col(r).cast(pl.Int32) for r in failed]).alias("_fails"),
        typ.fill_nan(None).round(9).alias("_typ"),
        pl.col("relevance").fill_nan(None).alias("_rel"),
        pl.col("n_turns").alias("_turns"),
        pl.col("variant").alias("_order")
        if "variant" in frame.columns
        else pl.lit(0).alias("_order"),
        "conversation_id",
    ).with_row_index("_row")
    ranked = order.sort(
        ["_fails", "_typ", "_rel", "_turns", "_order", "conversation_id"],
        descending=[False, True, True, True, False, False],
        nulls_last=True,
    )
    rank = np.empty(frame.height, dtype=np.int64)
    rank[ranked["_row"].to_numpy()] = np.arange(frame.height)
    return pl.Series("_rank", rank)


def _best_of(group: str) -> pl.Expr:
    return pl.col("conversation_id").sort_by("_rank").first().over(group)


def _exact_duplicates(work: pl.DataFrame, t: Thresholds) -> pl.DataFrame:
    work = work.with_columns(_rank(work, list(ROW_RULES)))
    rep = (
        pl.when(pl.col("norm_text_hash").is_not_null())
        .then(_best_of("norm_text_hash"))
        .otherwise(pl.col("conversation_id"))
    )
    work = work.with_columns(rep.alias("exact_representative_id"))
    dup = pl.col("exact_representative_id") != pl.col("conversation_id")
    return work.with_columns(
        (dup if t.drop_exact_duplicates else pl.lit(False)).alias("exact_duplicate")
    ).drop("_rank")


def _text_near_copies(work: pl.DataFrame, t: Thresholds) -> pl.DataFrame:
    """Within each MinHash cluster the first row in source order that passes the row rules and
    is no exact copy stays; the rest are near copies. Source order, not a quality score, picks
    the survivor: a one-word edit can look as good as its original to every metric."""
    fails = pl.sum_horizontal([pl.col(r).cast(pl.Int32) for r in [*ROW_RULES, "exact_duplicate"]])
    group = pl.coalesce("text_cluster_id", "conversation_id")
    best = (
        pl.col("conversation_id")
        .sort_by([fails, pl.col("variant"), pl.col("conversation_id")], nulls_last=True)
        .first()
        .over(group)
    )
    copy = (best != pl.col("conversation_id")) & t.drop_text_near_copies
    return work.with_columns(copy.alias("near_copy_text"))


# ---------------------------------------------------------------- near duplicates


def neardup_labels(
    ids: list[str], vectors: np.ndarray, threshold: float, groups: list | None = None
) -> tuple[np.ndarray, int]:
    """Connected-component label per row over pairs with cosine >= threshold, and pair count.

    Rows with non-finite vectors (conversations without turns) are never paired. With
    ``groups``, a pair counts only when both rows have the same non-null group value.
    """
    n = len(ids)
    finite = np.flatnonzero(np.isfinite(vectors).all(axis=1)) if n else np.empty(0, np.int64)
    pi = pj = np.empty(0, np.int64)
    if finite.size >= 2:
        sub = check_unit_vectors(vectors[finite], [ids[i] for i in finite])
        found = find_neighbours(sub, threshold)
        pi, pj = finite[found.pair_i], finite[found.pair_j]
    if groups is not None and pi.size:
        keys = np.asarray(groups, dtype=object)
        same = np.fromiter(
            (a is not None and a == b for a, b in zip(keys[pi], keys[pj], strict=True)),
            bool,
            pi.size,
        )
        pi, pj = pi[same], pj[same]
    return cluster_labels(n, pi, pj), int(pi.size)


def _neardup_groups(work: pl.DataFrame, t: Thresholds) -> list | None:
    """Rows that may be near duplicates share this key: ``neardup_within`` and, for a region
    row, its box (``region_object_id``): two region conversations about two bananas of one
    photo read alike but are about different things."""
    if not t.neardup_within:
        return None
    key = pl.col(t.neardup_within).cast(pl.String)
    if "region_object_id" in work.columns:
        box = pl.col("region_object_id")
        key = pl.when(box.is_not_null()).then(key + pl.lit("\x1fbox:") + box).otherwise(key)
    return work.select(key.alias("_group"))["_group"].to_list()


def _near_duplicates(
    work: pl.DataFrame, vectors: np.ndarray | None, t: Thresholds
) -> tuple[pl.DataFrame, dict]:
    info: dict = {"threshold": t.neardup_threshold, "within": t.neardup_within}
    if t.neardup_threshold is None:
        labels, pairs = np.arange(work.height, dtype=np.int64), 0
    else:
        assert vectors is not None
        ids = work["conversation_id"].to_list()
        groups = _neardup_groups(work, t)
        labels, pairs = neardup_labels(ids, vectors, t.neardup_threshold, groups)
    work = work.with_columns(
        pl.Series("_label", labels),
        _rank(work, [*ROW_RULES, "exact_duplicate", "near_copy_text"]),
    )
    work = work.with_columns(
        pl.col("conversation_id").min().over("_label").alias("cluster_id"),
        _best_of("_label").alias("representative_id"),
        pl.len().over("_label").alias("_size"),
    )
    dup = pl.col("representative_id") != pl.col("conversation_id")
    work = work.with_columns(
        (dup if t.neardup_threshold is not None else pl.lit(False)).alias("near_duplicate")
    )
    info |= {
        "pairs": pairs,
        "clusters_with_copies": work.filter(pl.col("_size") > 1)["cluster_id"].n_unique(),
        "rows_in_clusters_with_copies": int((work["_size"] > 1).sum()),
    }
    return work.drop("_label", "_rank", "_size"), info


# ---------------------------------------------------------------- balancing


def _category_cap(cands: pl.DataFrame, cap: int) -> set[str]:
    """Greedy in priority order: a row is dropped when one of its categories is full."""
    counts: Counter[str] = Counter()
    dropped: set[str] = set()
    for cid, cats in cands.select("conversation_id", "mentioned_categories").iter_rows():
        cats = cats or []
        if any(counts[c] >= cap for c in cats):
            dropped.add(cid)
            continue
        counts.update(cats)
    return dropped


def _keep_first_per_type(cands: pl.DataFrame, quota: dict[str, int]) -> set[str]:
    """Ids beyond each type's quota, dropping the lowest-priority rows (cands are sorted)."""
    position = pl.int_range(pl.len()).over("instruction_type")
    limit = pl.col("instruction_type").replace_strict(quota, default=0, return_dtype=pl.Int64)
    over = cands.filter(position >= limit)
    return set(over["conversation_id"].to_list())


def _mix_quota(counts: dict[str, int], mix: dict[str, float]) -> dict[str, int]:
    total = sum(mix.values())
    weights = {k: w / total for k, w in mix.items() if w > 0}
    missing = sorted(k for k in weights if counts.get(k, 0) == 0)
    if missing:
        raise ValueError(
            f"target_type_mix asks for {missing} but no row that passed the other rules has "
            f"that instruction_type (available: {dict(sorted(counts.items()))})"
        )
    scale = min(counts[k] / w for k, w in weights.items())
    # The epsilon keeps the limiting type's own quota from rounding down to n - 1.
    return {k: min(counts[k], math.floor(w * scale + 1e-9)) for k, w in weights.items()}


def _share_quota(counts: dict[str, int], share: float) -> int:
    """Largest per-type count c with c <= share * sum_t min(n_t, c): the share cap's quota."""
    if share * len(counts) < 1.0 - 1e-12 and len(counts) > 0:
        raise ValueError(
            f"max_share_per_type {share} is unreachable with {len(counts)} instruction "
            f"types {sorted(counts)}: every type would be dropped"
        )

    def feasible(c: int) -> bool:
        return c <= share * sum(min(n, c) for n in counts.values()) + 1e-9

    lo, hi = 0, max(counts.values(), default=0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if feasible(mid) else (lo, mid - 1)
    return lo


def _type_counts(frame: pl.DataFrame) -> dict[str, int]:
    return dict(frame.group_by("instruction_type").len().sort("instruction_type").iter_rows())


def balance_drops(cands: pl.DataFrame, b: Balance) -> tuple[dict[str, str], dict]:
    """Rule per dropped id, applying category cap, then type mix, then type share cap.

    ``cands`` are the rows that passed every other rule. Rows are ranked by a hash of
    (seed, conversation_id), so a cap drops the same rows whatever the input order.
    """
    priority = _unit_hashes(f"balance\x1f{b.seed}\x1f", cands["conversation_id"].to_list())
    cands = cands.with_columns(pl.Series("_priority", priority)).sort(
        "_priority", "conversation_id"
    )
    drops: dict[str, str] = {}
    info: dict = {}

    def drop(ids: set[str], rule: str) -> None:
        nonlocal cands
        drops.update(dict.fromkeys(ids, rule))
        cands = cands.filter(~pl.col("conversation_id").is_in(list(ids)))

    if b.max_per_category is not None:
        drop(_category_cap(cands, b.max_per_category), "category_cap")
    if b.target_type_mix is not None and cands.height:
        quota = _mix_quota(_type_counts(cands), b.target_type_mix)
        info["type_mix_quota"] = quota
        drop(_keep_first_per_type(cands, quota), "type_mix")
    if b.max_share_per_type is not None:
        counts = _type_counts(cands)
        cap = _share_quota(counts, b.max_share_per_type)
        info["type_share_quota"] = cap
        drop(_keep_first_per_type(cands, dict.fromkeys(counts, cap)), "type_share_cap")
    return drops, info


# ---------------------------------------------------------------- report


def type_histogram(frame: pl.DataFrame) -> dict[str, int]:
    return _type_counts(frame)


def category_histogram(frame: pl.DataFrame) -> dict[str, int]:
    """Rows mentioning each category, most frequent first (ties by name)."""
    hist = (
        frame.select(pl.col("mentioned_categories").alias("category"))
        .explode("category", keep_nulls=False)
        .group_by("category")
        .len()
        .sort(["len", "category"], descending=[True, False])
    )
    return dict(hist.iter_rows())


def _clean(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.floating | np.integer):
        return _clean(value.item())
    return value


def selection_metrics(frame: pl.DataFrame, vectors: np.ndarray | None) -> dict[str, object]:
    """``dataset_metrics`` of the rows plus relevance, novelty and semantic spread."""
    figures: dict[str, object] = dict(dataset_metrics(frame, frame))
    figures["n_sources"] = frame["source"].n_unique()
    figures["relevance_mean"] = frame["relevance"].mean()
    figures["novelty_mean"] = frame["novelty"].mean() if "novelty" in frame.columns else None
    spread = None
    if vectors is not None:
        finite = vectors[np.isfinite(vectors).all(axis=1)]
        mean_cos = mean_pairwise_cosine(finite) if finite.shape[0] else None
        spread = None if mean_cos is None else 1.0 - mean_cos
    figures["semantic_spread"] = spread
    return {k: _clean(v) for k, v in figures.items()}


def distribution(values: pl.Series, lo: float, hi: float, bins: int) -> dict:
    """Counts over fixed bins (values outside [lo, hi] go to the end bins) and nulls."""
    arr = values.cast(pl.Float64).fill_nan(None).drop_nulls().to_numpy()
    edges = np.linspace(lo, hi, bins + 1)
    counts, _ = np.histogram(np.clip(arr, lo, hi), bins=edges)
    return {
        "edges": [round(float(e), 6) for e in edges],
        "counts": counts.astype(int).tolist(),
        "nulls": int(values.len() - arr.size),
    }


def _distributions(before: pl.DataFrame, after: pl.DataFrame) -> dict:
    out = {}
    for column, (lo, hi, bins) in DISTRIBUTIONS.items():
        if column not in before.columns:
            continue
        out[column] = {
            "before": distribution(before[column], lo, hi, bins),
            "after": distribution(after[column], lo, hi, bins),
        }
    return out


# ---------------------------------------------------------------- decide


def _check_input(
    scored: pl.DataFrame, vectors: np.ndarray | None, t: Thresholds, split: SplitConfig
) -> None:
    needed = [*_REQUIRED, *([t.neardup_within] if t.neardup_within else []), split.key]
    needed = list(dict.fromkeys(needed))
    missing = [c for c in needed if c not in scored.columns]
    if missing:
        raise ValueError(f"scored__conversations frame lacks columns {missing}")
    ids = scored["conversation_id"]
    if ids.null_count():
        raise ValueError("scored__conversations: conversation_id is null in some rows")
    if ids.n_unique() != ids.len():
        dup = ids.filter(ids.is_duplicated()).first()
        raise ValueError(f"scored__conversations: conversation_id {dup!r} is not unique")
    if t.neardup_threshold is None:
        return
    if vectors is None:
        raise ValueError(
            "near-duplicate selection needs the conversation vectors; pass them "
            "(embed.conversation_vectors(...).conversation) or set neardup_threshold=None"
        )
    if vectors.ndim != 2 or vectors.shape[0] != scored.height:
        raise ValueError(
            f"vectors have shape {vectors.shape}; expected one row per scored row "
            f"({scored.height}), in scored-row order"
        )


def _failing_lists(work: pl.DataFrame) -> pl.DataFrame:
    names = [pl.when(pl.col(r)).then(pl.lit(r)) for r in RULES]
    return work.with_columns(
        pl.concat_list(names).list.drop_nulls().alias("failing_rules")
    ).with_columns(pl.col("failing_rules").list.first().alias("first_failing_rule"))


def _settings(t: Thresholds, b: Balance, s: SplitConfig) -> dict:
    return {"thresholds": asdict(t), "balance": asdict(b), "split": asdict(s)}


def decide(
    scored: pl.DataFrame,
    vectors: np.ndarray | None,
    thresholds: Thresholds = Thresholds(),  # noqa: B008 (frozen)
    balance: Balance = Balance(),  # noqa: B008 (frozen)
    split: SplitConfig = SplitConfig(),  # noqa: B008 (frozen)
) -> Selection:
    """Apply every rule of :data:`RULES` in order and split the kept rows.

    ``vectors`` are the conversation vectors (``ConversationVectors.conversation``) in
    scored-row order; rows of NaN (no turns) are never near duplicates.
    """
    _check_input(scored, vectors, thresholds, split)
    if vectors is not None:
        vectors = np.asarray(vectors, dtype=np.float32)
    keep_cols = ["conversation_id", "source", "instruction_type", "norm_text_hash"]
    scored = _with_optional(scored)
    extra = [thresholds.neardup_within] if thresholds.neardup_within else []
    extra += ["region_object_id"] if "region_object_id" in scored.columns else []
    floors = relevance_floors(scored, thresholds)
    floor_of = pl.col("instruction_type").replace_strict(
        floors, default=None, return_dtype=pl.Float64
    )
    work = (
        scored.with_columns(floor_of.alias("_relevance_floor"))
        .select(
            *dict.fromkeys(
                [
                    *keep_cols,
                    *extra,
                    "relevance",
                    "n_turns",
                    "mentioned_categories",
                    "variant",
                    "text_cluster_id",
                ]
            ),
            *_row_rule_exprs(thresholds).values(),
        )
        .with_columns(
            # only the semantic near-duplicate representative uses it (copies and MinHash
            # groups tie on it or go by source order): skip it when no row can be paired
            typicality(scored)
            if semantic_dedup_possible(vectors, thresholds)
            else pl.lit(None, pl.Float64).alias("typicality")
        )
    )
    work = _exact_duplicates(work, thresholds)
    work = _text_near_copies(work, thresholds)
    work, neardup_info = _near_duplicates(work, vectors, thresholds)
    passed = ~pl.any_horizontal([pl.col(r) for r in RULES if r not in BALANCE_RULES])
    cands = work.filter(passed)
    drops, balance_info = balance_drops(cands, balance)
    rule_of = pl.col("conversation_id").replace_strict(drops, default=None, return_dtype=pl.String)
    work = work.with_columns(rule_of.alias("_balance"))
    work = work.with_columns(
        (pl.col("_balance") == r).fill_null(False).alias(r) for r in BALANCE_RULES
    )
    work = _failing_lists(work).with_columns(pl.col("first_failing_rule").is_null().alias("kept"))
    split_of = assign_split(
        scored.select(split_group_expr(split.key, scored.columns).alias(split.key)).to_series(),
        split,
    )
    work = work.with_columns(pl.when(pl.col("kept")).then(split_of).otherwise(None).alias("split"))
    decisions = work.select([pl.col(c).cast(t) for c, t in DECISIONS_SCHEMA.items()])
    mask = decisions["kept"]
    kept = scored.filter(mask).with_columns(decisions["split"].filter(mask))
    kept_vectors = vectors[mask.to_numpy()] if vectors is not None else None
    report = _report(scored, kept, cands, decisions, vectors, kept_vectors)
    report["settings"] = _settings(thresholds, balance, split)
    report["neardup"] = neardup_info
    report["relevance_floors"] = floors
    report["balance"] = balance_info
    return Selection(decisions=decisions, kept=kept, report=report)


def _report(
    scored: pl.DataFrame,
    kept: pl.DataFrame,
    cands: pl.DataFrame,
    decisions: pl.DataFrame,
    vectors: np.ndarray | None,
    kept_vectors: np.ndarray | None,
) -> dict:
    first = Counter(decisions["first_failing_rule"].drop_nulls().to_list())
    listed = Counter(decisions["failing_rules"].explode().drop_nulls().to_list())
    return {
        "counts": {
            "scored": scored.height,
            "kept": kept.height,
            "dropped": scored.height - kept.height,
            "split": {s: int((kept["split"] == s).sum()) for s in (TRAIN, VAL)},
            "sources": dict(kept.group_by("source").len().sort("source").iter_rows()),
        },
        "drops_by_first_rule": {r: first.get(r, 0) for r in RULES},
        "rows_failing_rule": {r: listed.get(r, 0) for r in RULES},
        "histograms": {
            "instruction_type": {
                "before": type_histogram(scored),
                "before_balance": type_histogram(cands),
                "after": type_histogram(kept),
            },
            "category": {
                "before": category_histogram(scored),
                "before_balance": category_histogram(cands),
                "after": category_histogram(kept),
            },
        },
        "metrics": {
            "before": selection_metrics(scored, vectors),
            "after": selection_metrics(kept, kept_vectors),
        },
        "distributions": _distributions(scored, kept),
    }
