"""The selection rules: their table and order, the per-row thresholds and their expressions."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from vlit_assets.core.scored.neardup import DEFAULT_THRESHOLD

# Evaluation order. A row lists every rule it fails; its first failing rule is the earliest here.
RULES: dict[str, str] = {
    "source_held_back": "the source's latest raw or generated suite failed, or its principles "
    "check did not pass as a gate for its current scores (final/gating.failing_sources)",
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
GATE_RULES = ("source_held_back",)  # decided per source, before any row is judged
ROW_RULES = tuple(r for r in RULES if r not in GATE_RULES + DEDUP_RULES + BALANCE_RULES)


REQUIRED_COLUMNS = (
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


def with_optional(scored: pl.DataFrame) -> pl.DataFrame:
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
    neardup_threshold: float | None = DEFAULT_THRESHOLD
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


def _below(column: str, bound: float | None) -> pl.Expr:
    return pl.col(column) < bound if bound is not None else pl.lit(False)


def _above(column: str, bound: float | None, value: pl.Expr | None = None) -> pl.Expr:
    if bound is None:
        return pl.lit(False)
    return (value if value is not None else pl.col(column)) > bound


def row_rule_exprs(t: Thresholds) -> dict[str, pl.Expr]:
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
