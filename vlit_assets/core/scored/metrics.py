"""Rule-based quality metrics per conversation: one function per metric.

Per-conversation metrics (correctness, complexity, polarity, format, duplicate key) come back as
one row per ``conversation_id`` from :func:`score_rules`; ``figures.dataset_figures`` reduces
them to dataset figures. Formulas, ranges, directions and null semantics are in
docs/metrics.md.

Scoring never drops a row. A metric whose inputs are missing is null, never zero: CHAIR needs
the image's object annotations (an image is *annotated* when it has a ``raw__tags`` row or at
least one ``raw__objects`` row), region matching needs the boxed object, and so on. Captions,
when given, add to what CHAIR counts as present, as in the original CHAIR; they never make an
image annotated, since a caption cannot prove that something is absent.

Everything is columnar (polars string kernels over an exploded turn frame) except the
exact-duplicate hash, which uses :func:`vlit_assets.core.ids.text_hash` so that keys stay
stable across polars versions.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from vlit_assets.core.ids import text_hash
from vlit_assets.core.scored.claims import grammar_checks, relation_claims
from vlit_assets.core.text.reading import (
    caption_mentions,
    mentions_long,
    qa_pairs,
    require_columns,
    stated_counts,
    turns_long,
)
from vlit_assets.core.vocab import IMAGE_TOKEN

if TYPE_CHECKING:
    from polars.expr.whenthen import ChainedThen, Then

FORMAT_ERRORS = {
    "no_turns": "the conversation has no turns",
    "too_few_turns": "fewer than 2 messages",
    "unknown_role": "a turn's `from` is neither human nor gpt",
    "empty_turn": "a turn's value is empty or whitespace",
    "first_not_human": "the first turn is not from human",
    "not_alternating": "two consecutive turns come from the same side",
    "ends_with_human": "the last question has no answer",
    "image_token_repeated": "the image token appears more than once",
    "image_token_misplaced": "the image token is not at the start or end of the first turn",
}

REASONING_PATTERN = (
    r"\b(?:why|how come|what if|what would|what might|what could|explain|reasons?|purpose|"
    r"suppose|imagine|predict|infer|likely|possibl[ey]|probably|benefits?|advantages?|risks?|"
    r"dangers?|consequences?|significance|could|might|should|would)\b"
)
HOW_PATTERN = r"^how\b"
HOW_PERCEPTION_PATTERN = r"^how (?:many|much|big|large|small|tall|old|far|long|wide|high)\b"
POLITE_PREFIX_PATTERN = r"^(?:can|could|would|will) you (?:please )?"


@dataclass(frozen=True)
class Annotations:
    """What the scorer knows about each image, built by :func:`image_annotations`."""

    annotated: pl.DataFrame  # image_id: images whose object annotations are known
    present: pl.DataFrame  # image_id, category, n (non-crowd objects), crowd (any crowd box)
    regions: pl.DataFrame  # object_id, region_category
    judged: pl.DataFrame | None  # source, category: categories a source annotates (None: all)
    captions: pl.DataFrame | None  # image_id, caption: read for CHAIR (None: not given)


def image_annotations(
    objects: pl.DataFrame | None,
    tags: pl.DataFrame | None,
    categories: pl.DataFrame | None = None,
    captions: pl.DataFrame | None = None,
) -> Annotations:
    """Per-image category presence and counts from ``raw__objects`` / ``raw__tags`` frames.

    Counts come from objects (non-crowd boxes; a crowd box makes the count unknowable); when
    only tags are given, from ``present[].count``. ``categories`` (raw__categories: source,
    name) limits judging to the categories each source annotates. ``captions``
    (raw__captions: image_id, caption) adds the categories they name to what CHAIR counts as
    present (see :func:`caption_mentions`).
    """
    ids: list[pl.DataFrame] = []
    present = pl.DataFrame(
        schema={"image_id": pl.String, "category": pl.String, "n": pl.Int64, "crowd": pl.Boolean}
    )
    regions = pl.DataFrame(schema={"object_id": pl.String, "region_category": pl.String})
    if objects is not None:
        require_columns(
            objects, "raw__objects", ("object_id", "image_id", "category_name", "iscrowd")
        )
        ids.append(objects.select(pl.col("image_id").cast(pl.String)))
        crowd = pl.col("iscrowd").fill_null(False)
        present = (
            objects.group_by("image_id", pl.col("category_name").alias("category"))
            .agg(n=(~crowd).sum().cast(pl.Int64), crowd=crowd.any())
            .select(present.columns)
        )
        regions = objects.select("object_id", region_category=pl.col("category_name"))
    if tags is not None:
        require_columns(tags, "raw__tags", ("image_id", "present"))
        ids.append(tags.select(pl.col("image_id").cast(pl.String)))
        if objects is None:
            present = (
                tags.select("image_id", "present")
                .explode("present", keep_nulls=False)
                .select(
                    "image_id",
                    category=pl.col("present").struct.field("name"),
                    n=pl.col("present").struct.field("count").cast(pl.Int64),
                    crowd=pl.lit(False),
                )
            )
    annotated = (
        pl.concat(ids).unique(maintain_order=True)
        if ids
        else pl.DataFrame(schema={"image_id": pl.String})
    )
    judged = None
    if categories is not None:
        require_columns(categories, "raw__categories", ("source", "name"))
        judged = categories.select("source", category=pl.col("name")).unique()
    if captions is not None:
        require_columns(captions, "raw__captions", ("image_id", "caption"))
        captions = captions.select(pl.col("image_id", "caption").cast(pl.String))
    return Annotations(annotated, present, regions, judged, captions)


def _judged(mentions: pl.DataFrame, conversations: pl.DataFrame, ann: Annotations) -> pl.DataFrame:
    """Keep mentions of categories the conversation's source annotates (all, by default)."""
    if ann.judged is None:
        return mentions
    sources = conversations.select("conversation_id", "source")
    return mentions.join(sources, on="conversation_id").join(
        ann.judged, on=["source", "category"], how="semi"
    )


def _with_presence(mentions: pl.DataFrame, ann: Annotations) -> pl.DataFrame:
    return mentions.join(ann.present, on=["image_id", "category"], how="left").with_columns(
        is_present=pl.col("n").is_not_null(),
        n=pl.col("n").fill_null(0),
        crowd=pl.col("crowd").fill_null(False),
    )


def _per_conversation(
    conversations: pl.DataFrame, per_conv: pl.DataFrame, ann: Annotations
) -> pl.DataFrame:
    """Left-join per-conversation aggregates onto all rows, with an ``annotated`` flag."""
    annotated_ids = ann.annotated.get_column("image_id").implode()
    return conversations.select(
        "conversation_id", annotated=pl.col("image_id").is_in(annotated_ids)
    ).join(per_conv, on="conversation_id", how="left", maintain_order="left")


def _share(num: str, den: str, metric: str) -> list[pl.Expr]:
    """num/den counts (null unless annotated) and their ratio (null also when den is 0)."""
    annotated = pl.col("annotated")
    n = pl.col(den).fill_null(0)
    k = pl.col(num).fill_null(0)
    return [
        pl.when(annotated).then(k).alias(num),
        pl.when(annotated).then(n).alias(den),
        pl.when(annotated & (n > 0)).then(k / n).alias(metric),
    ]


def hallucination(
    conversations: pl.DataFrame, mentions: pl.DataFrame, ann: Annotations
) -> pl.DataFrame:
    """CHAIR per conversation over the affirmed (non-negated) mentions in gpt turns.

    chair_i = hallucinated mentions / mentions; chair_s = any hallucinated mention. A mention
    is a hallucination when its category is neither annotated in the image nor named by one of
    the image's captions (when captions were given).
    """
    claimed = mentions.filter((pl.col("role") == "gpt") & ~pl.col("negated"))
    claimed = _with_caption_presence(
        _with_presence(_judged(claimed, conversations, ann), ann), ann.captions
    )
    per_conv = claimed.group_by("conversation_id").agg(
        n_object_mentions=pl.len().cast(pl.Int64),
        n_hallucinated=(~pl.col("is_present")).sum().cast(pl.Int64),
        hallucinated_objects=pl.col("category").filter(~pl.col("is_present")).unique().sort(),
    )
    empty = pl.lit([], dtype=pl.List(pl.String))
    return _per_conversation(conversations, per_conv, ann).select(
        "conversation_id",
        *_share("n_hallucinated", "n_object_mentions", "chair_i"),
        chair_s=pl.when("annotated").then(pl.col("n_hallucinated").fill_null(0) > 0),
        hallucinated_objects=pl.when("annotated").then(
            pl.col("hallucinated_objects").fill_null(empty)
        ),
    )


def _with_caption_presence(claimed: pl.DataFrame, captions: pl.DataFrame | None) -> pl.DataFrame:
    """``is_present`` also where the image's captions name the category.

    Only the captions of images with an unboxed claim are read: on grounded data that is a few
    percent of them, so captions cost almost nothing.
    """
    if captions is None:
        return claimed
    suspects = claimed.filter(~pl.col("is_present")).select("image_id").unique()
    if suspects.is_empty():
        return claimed
    named = caption_mentions(captions.join(suspects, on="image_id", how="semi"))
    return claimed.join(
        named.with_columns(captioned=pl.lit(True)), on=["image_id", "category"], how="left"
    ).with_columns(is_present=pl.col("is_present") | pl.col("captioned").fill_null(False))


def negative_consistency(
    conversations: pl.DataFrame, pairs: pl.DataFrame, mentions: pl.DataFrame, ann: Annotations
) -> pl.DataFrame:
    """Share of negative claims that are right.

    Judged claims are (a) polar questions about an absent object, right when the answer denies
    it, and (b) denials in an answer of an object the image's boxes hold ("No, there is no
    park bench." about a bench), always wrong: denying what is there is a hallucination too.
    ``n_negative_questions`` counts both, ``n_negative_denied`` the right ones.
    """
    asked = pairs.filter(pl.col("is_polar")).join(
        mentions.filter(pl.col("role") == "human").select(
            "conversation_id", "turn_idx", "category"
        ),
        on=["conversation_id", "turn_idx"],
    )
    asked = _with_presence(_judged(asked, conversations, ann), ann)
    about_absent = (
        asked.group_by("conversation_id", "turn_idx")
        .agg(absent=(~pl.col("is_present")).any(), denies=pl.col("answer_denies").first())
        .filter(pl.col("absent"))
    )
    denied = mentions.filter((pl.col("role") == "gpt") & pl.col("negated"))
    false_denials = (
        _with_presence(_judged(denied, conversations, ann), ann)
        .filter(pl.col("is_present"))
        .select("conversation_id", "turn_idx", "category")
        .unique()
        .group_by("conversation_id")
        .agg(n_false=pl.len().cast(pl.Int64))
    )
    per_conv = (
        about_absent.group_by("conversation_id")
        .agg(
            n_negative_questions=pl.len().cast(pl.Int64),
            n_negative_denied=pl.col("denies").sum().cast(pl.Int64),
        )
        .join(false_denials, on="conversation_id", how="full", coalesce=True)
        .with_columns(
            n_negative_questions=pl.col("n_negative_questions").fill_null(0)
            + pl.col("n_false").fill_null(0),
            n_negative_denied=pl.col("n_negative_denied").fill_null(0),
        )
    )
    return _per_conversation(conversations, per_conv, ann).select(
        "conversation_id",
        *_share("n_negative_denied", "n_negative_questions", "negative_consistency"),
    )


def count_consistency(
    conversations: pl.DataFrame, turns: pl.DataFrame, ann: Annotations
) -> pl.DataFrame:
    """Share of stated counts ("two dogs") equal to the annotated non-crowd count."""
    counts = _with_presence(_judged(stated_counts(turns), conversations, ann), ann).filter(
        ~pl.col("crowd")
    )
    per_conv = counts.group_by("conversation_id").agg(
        n_counts=pl.len().cast(pl.Int64),
        n_counts_correct=(pl.col("stated") == pl.col("n")).sum().cast(pl.Int64),
    )
    return _per_conversation(conversations, per_conv, ann).select(
        "conversation_id", *_share("n_counts_correct", "n_counts", "count_consistency")
    )


def region_name_match(
    conversations: pl.DataFrame, pairs: pl.DataFrame, mentions: pl.DataFrame, ann: Annotations
) -> pl.DataFrame:
    """Region rows: does the first answer name (affirmed) the boxed object's category?"""
    region_col = (
        pl.col("region_object_id")
        if "region_object_id" in conversations.columns
        else pl.lit(None, dtype=pl.String)
    )
    regions = (
        conversations.select("conversation_id", "instruction_type", object_id=region_col)
        .join(ann.regions, on="object_id", how="left", maintain_order="left")
        .with_columns(
            is_region=(pl.col("instruction_type") == "region")
            & pl.col("region_category").is_not_null()
        )
    )
    first_answer = pairs.filter(pl.col("conversation_id").is_first_distinct()).select(
        "conversation_id", turn_idx=pl.col("turn_idx") + 1
    )
    named = (
        mentions.filter(~pl.col("negated"))
        .join(first_answer, on=["conversation_id", "turn_idx"], how="semi")
        .join(
            regions.select("conversation_id", category="region_category"),
            on=["conversation_id", "category"],
            how="semi",
        )
        .select("conversation_id")
        .unique()
    )
    named_ids = named.get_column("conversation_id").implode()
    return regions.select(
        "conversation_id",
        "region_category",
        region_name_match=pl.when("is_region").then(pl.col("conversation_id").is_in(named_ids)),
    )


def format_check(conversations: pl.DataFrame) -> pl.DataFrame:
    """format_valid and the first format_error (a FORMAT_ERRORS code) per conversation."""
    turns = pl.col("turns")
    roles = turns.list.eval(
        pl.element()
        .struct.field("from")
        .replace_strict({"human": "h", "gpt": "g"}, default="?", return_dtype=pl.String)
    ).list.join("")
    values = turns.list.eval(pl.element().struct.field("value").fill_null(""))
    n_tokens = values.list.eval(pl.element().str.count_matches(IMAGE_TOKEN, literal=True))
    first = values.list.first().fill_null("").str.strip_chars()
    token_ok = (n_tokens.list.sum() == 0) | (
        first.str.starts_with(IMAGE_TOKEN) | first.str.ends_with(IMAGE_TOKEN)
    ) & (n_tokens.list.first() == 1)
    checks = [
        ("no_turns", turns.is_null() | (turns.list.len() == 0)),
        ("too_few_turns", turns.list.len() < 2),
        ("unknown_role", pl.col("_roles").str.contains("?", literal=True)),
        ("empty_turn", values.list.eval(pl.element().str.strip_chars() == "").list.any()),
        ("first_not_human", ~pl.col("_roles").str.starts_with("h")),
        ("not_alternating", pl.col("_roles").str.contains("hh|gg")),
        ("ends_with_human", pl.col("_roles").str.ends_with("h")),
        ("image_token_repeated", n_tokens.list.sum() > 1),
        ("image_token_misplaced", ~token_ok),
    ]
    chain: Then | ChainedThen = pl.when(checks[0][1]).then(pl.lit(checks[0][0]))
    for code, failed in checks[1:]:
        chain = chain.when(failed.fill_null(False)).then(pl.lit(code))
    error = chain.otherwise(pl.lit(None, dtype=pl.String))
    return (
        conversations.select("conversation_id", "turns", _roles=roles.fill_null(""))
        .select("conversation_id", format_error=error)
        .with_columns(format_valid=pl.col("format_error").is_null())
        .select("conversation_id", "format_valid", "format_error")
    )


def complexity(
    conversations: pl.DataFrame,
    turns: pl.DataFrame,
    pairs: pl.DataFrame,
    mentions: pl.DataFrame,
) -> pl.DataFrame:
    """Pairs, polarity, distinct categories, reasoning share and answer length per row."""
    # unique + sort on the flat frame, then an order-keeping group: half the cost of a
    # per-group unique().sort()
    mentioned = (
        mentions.select("conversation_id", "category")
        .unique()
        .sort("conversation_id", "category")
        .group_by("conversation_id", maintain_order=True)
        .agg(mentioned_categories="category")
    )
    questions = turns.filter(pl.col("role") == "human")
    reasoning = questions.group_by("conversation_id").agg(
        reasoning_share=_is_reasoning(pl.col("text")).mean()
    )
    answers = (
        turns.filter(pl.col("role") == "gpt")
        .with_columns(words=pl.col("text").str.count_matches(r"\S+"))
        .group_by("conversation_id")
        .agg(
            answer_words_mean=pl.col("words").mean(),
            answer_words_min=pl.col("words").min().cast(pl.Int64),
        )
    )
    per_pair = pairs.group_by("conversation_id").agg(
        n_turns=pl.len().cast(pl.Int64),
        n_polar=pl.col("is_polar").sum().cast(pl.Int64),
        n_polar_yes=(pl.col("is_polar") & pl.col("answer_yes")).sum().cast(pl.Int64),
        n_polar_no=(pl.col("is_polar") & pl.col("answer_no")).sum().cast(pl.Int64),
    )
    out = conversations.select("conversation_id")
    for part in (per_pair, mentioned, reasoning, answers):
        out = out.join(part, on="conversation_id", how="left", maintain_order="left")
    empty = pl.lit([], dtype=pl.List(pl.String))
    return out.with_columns(
        pl.col("n_turns", "n_polar", "n_polar_yes", "n_polar_no").fill_null(0),
        mentioned_categories=pl.col("mentioned_categories").fill_null(empty),
    ).with_columns(tags_per_conversation=pl.col("mentioned_categories").list.len().cast(pl.Int64))


def _is_reasoning(question: pl.Expr) -> pl.Expr:
    """Why/how/what-if/could/might/should/explain questions; "how many" is perception."""
    unprefixed = question.str.replace(POLITE_PREFIX_PATTERN, "")
    opens_how = question.str.contains(HOW_PATTERN)
    asks_perception = question.str.contains(HOW_PERCEPTION_PATTERN)
    return unprefixed.str.contains(REASONING_PATTERN) | (opens_how & ~asks_perception)


# Collapsed into single spaces by the duplicate key. A fixed set (Aho-Corasick replace) rather
# than the regex class [\W_]: same keys on real text at under half the cost.
_PUNCTUATION = [
    *"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\t\n\r\x0b\x0c",
    *"\u00a0\u00ab\u00bb\u00a1\u00bf\u00b7\u2013\u2014\u2018\u2019\u201c\u201d\u2026\u3000",
]


def norm_text_hash(conversations: pl.DataFrame) -> pl.DataFrame:
    """Exact-duplicate key: hash of all turns, lowercased, punctuation and spaces collapsed."""
    joined = conversations.select(
        "conversation_id",
        text=pl.col("turns")
        .list.eval(
            pl.concat_str(
                pl.element().struct.field("from").fill_null(""),
                pl.element().struct.field("value").fill_null(""),
                separator=" ",
            )
        )
        .list.join(" ")
        .fill_null("")
        .str.replace_all(IMAGE_TOKEN, " ", literal=True)
        .str.to_lowercase()
        .str.replace_many(_PUNCTUATION, [" "] * len(_PUNCTUATION))
        .str.replace_all(" {2,}", " ")
        .str.strip_chars(),
    )
    hashes = [text_hash(t) for t in joined.get_column("text").to_list()]
    return joined.select("conversation_id").with_columns(
        norm_text_hash=pl.Series(hashes, dtype=pl.String)
    )


SCORE_COLUMNS: tuple[str, ...] = (
    "conversation_id",
    "format_valid",
    "format_error",
    "n_turns",
    "n_polar",
    "n_polar_yes",
    "n_polar_no",
    "n_object_mentions",
    "n_hallucinated",
    "chair_i",
    "chair_s",
    "hallucinated_objects",
    "n_negative_questions",
    "n_negative_denied",
    "negative_consistency",
    "n_counts",
    "n_counts_correct",
    "count_consistency",
    "region_category",
    "region_name_match",
    "n_relation_claims",
    "n_relations_contradicted",
    "relation_consistency",
    "relations_contradicted",
    "n_grammar_errors",
    "grammar_errors",
    "mentioned_categories",
    "tags_per_conversation",
    "reasoning_share",
    "answer_words_mean",
    "answer_words_min",
    "norm_text_hash",
)


def check_conversations(conversations: pl.DataFrame) -> None:
    require_columns(
        conversations,
        "generated__conversations",
        ("conversation_id", "image_id", "instruction_type", "turns"),
    )
    ids = conversations.get_column("conversation_id")
    if ids.null_count():
        raise ValueError("generated__conversations: conversation_id is null in some rows")
    if ids.n_unique() != ids.len():
        dup = ids.filter(ids.is_duplicated()).first()
        raise ValueError(f"generated__conversations: conversation_id {dup!r} is not unique")


def score_rules(
    conversations: pl.DataFrame,
    objects: pl.DataFrame | None = None,
    tags: pl.DataFrame | None = None,
    categories: pl.DataFrame | None = None,
    captions: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Every rule-based per-conversation metric: one row per input row, in input order.

    ``objects``/``tags``/``categories``/``captions`` are raw__objects / raw__tags /
    raw__categories / raw__captions frames (any may be None: QC-only mode on imported data,
    where annotation metrics are null). Captions only widen what CHAIR counts as present.
    """
    check_conversations(conversations)
    ann = image_annotations(objects, tags, categories, captions)
    # Work on row numbers: grouping and joining 600k turn rows on a u32 is several times
    # cheaper than on the id strings, which are put back at the end.
    conv = conversations.with_columns(conversation_id=pl.int_range(pl.len(), dtype=pl.UInt32))
    # The parts are independent frame computations and Polars releases the GIL while it runs
    # one, so two threads keep both cores busy where a single query chain uses about one.
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = [pool.submit(format_check, conv), pool.submit(norm_text_hash, conv)]
        turns = turns_long(conv)
        pairs_future = pool.submit(qa_pairs, turns)
        mentions = mentions_long(turns)
        pairs = pairs_future.result()
        rest = [
            pool.submit(complexity, conv, turns, pairs, mentions),
            pool.submit(hallucination, conv, mentions, ann),
            pool.submit(negative_consistency, conv, pairs, mentions, ann),
            pool.submit(count_consistency, conv, turns, ann),
            pool.submit(region_name_match, conv, pairs, mentions, ann),
        ]
        claims = [
            pool.submit(relation_claims, conv, objects),
            pool.submit(grammar_checks, conv, turns),
        ]
        parts = [
            first[0].result(),
            *(f.result() for f in rest),
            *(f.result() for f in claims),
            first[1].result(),
        ]
    # Each part has one row per conversation in input order (built from `conv` by left joins
    # that keep the left order), so they line up without a join.
    out = pl.concat([parts[0], *(p.drop("conversation_id") for p in parts[1:])], how="horizontal")
    return out.with_columns(conversation_id=conversations.get_column("conversation_id")).select(
        SCORE_COLUMNS
    )
