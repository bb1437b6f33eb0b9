"""Reading conversation text: turns, question/answer pairs, object mentions and stated counts.

Shared by the stages that write text (templates check their own wording with it) and the stage
that scores it. Everything is columnar polars over lowercased, normalized turn text.
"""

from __future__ import annotations

from collections.abc import Collection

import polars as pl

from vlit_assets.core.text.inflect import NUMBER_WORDS
from vlit_assets.core.text.objects import (
    COUNT_GAP_STOPWORDS,
    COUNT_PATTERN,
    COUNTABLE_FORMS,
    FORM_TO_CATEGORY,
    MENTION_PATTERN,
    NEGATION_SCOPE_PATTERN,
    category_of,
)
from vlit_assets.core.vocab import IMAGE_TOKEN

# Polar (yes/no) questions open with an auxiliary verb, after at most one linking word
# ("And is there a truck?"); requests phrased as questions ("Can you describe ...?") are not
# polar.
_LEAD = r"^(?:(?:and|so|but|then|also|now|okay|ok|well),? )?"


POLAR_PATTERN = (
    _LEAD + r"(?:is|are|was|were|do|does|did|can|could|will|would|has|have|had|should|shall|"
    r"may|might|must|isn't|aren't|wasn't|weren't|doesn't|don't|didn't|can't|won't|hasn't|"
    r"haven't)\b"
)


REQUEST_PATTERN = (
    _LEAD + r"(?:can|could|would|will) you (?:please )?(?:describe|tell|explain|list|give|provide|"
    r"identify|name|show|point|count|share|summarize|write|detail|elaborate|help|talk|analyze)\b"
)


YES_PATTERN = r"^(?:yes|yeah|yep|yup)\b"


NO_PATTERN = r"^(?:no|nope|nah)\b"


AFFIRM_START_PATTERN = r"^(?:yes|yeah|yep|yup|sure|indeed|correct|certainly|absolutely)\b"


WORD_PATTERN = r"[a-z0-9']+"


_MAX_FORM_WORDS = max(f.count(" ") + 1 for f in COUNTABLE_FORMS)


def rx(pattern: str) -> str:
    """A vocab pattern for polars (Rust regex): ASCII word boundaries.

    Unicode ``\\b`` keeps the regex crate off its fast DFA; the text is lowercased English, so
    the only difference is at non-ASCII letters next to a form ("cafédog" would match "dog").
    """
    return pattern.replace(r"\b", r"(?-u:\b)")


_STOPWORD_GAP_PATTERN = r"\s(?:" + "|".join(sorted(COUNT_GAP_STOPWORDS)) + r")\s"


def require_columns(df: pl.DataFrame, name: str, columns: Collection[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing columns {missing} (has {df.columns})")


def caption_mentions(captions: pl.DataFrame) -> pl.DataFrame:
    """image_id, category: each category an image's captions name outside negation, once.

    The same vocabulary and negation scopes as the mentions in conversations: "a man walks a
    dog" names person and dog, "a street with no cars" names no car.
    """
    require_columns(captions, "raw__captions", ("image_id", "caption"))
    affirmed = normalized_text(pl.col("caption").cast(pl.String)).str.replace_all(
        rx(NEGATION_SCOPE_PATTERN), " . "
    )
    forms = captions.select(
        image_id=pl.col("image_id").cast(pl.String),
        form=affirmed.str.extract_all(rx(MENTION_PATTERN)),
    ).explode("form", keep_nulls=False)
    return with_category(forms, "form").select("image_id", "category").unique(maintain_order=True)


def normalized_text(value: pl.Expr) -> pl.Expr:
    return (
        value.fill_null("")
        .str.replace_all(IMAGE_TOKEN, " ", literal=True)
        .str.to_lowercase()
        .str.replace_all("[\u2019\u2018\u02bc]", "'")
        .str.strip_chars()
    )


def with_category(frame: pl.DataFrame, form: str) -> pl.DataFrame:
    """Add ``category`` for the matched surface forms in column ``form``; drop blockers.

    vocab.category_of is the one mapping; it runs once per distinct form, not per row.
    """
    forms = frame.get_column(form).unique().drop_nulls().to_list()
    mapping = {f: category_of(f) for f in forms}
    return frame.with_columns(
        category=pl.col(form).replace_strict(mapping, default=None, return_dtype=pl.String)
    ).filter(pl.col("category").is_not_null())


def turns_long(conversations: pl.DataFrame) -> pl.DataFrame:
    """One row per turn: ids, position, role, normalized text and affirmed text.

    ``affirmed_text`` is the text with every negation scope cut out; mentions and stated counts
    found in it are claims, those inside the scopes are denials.
    """
    return (
        conversations.select(
            "conversation_id",
            "image_id",
            "turns",
            turn_idx=pl.int_ranges(0, pl.col("turns").list.len()),
        )
        .explode("turns", "turn_idx", keep_nulls=False)
        .select(
            "conversation_id",
            "image_id",
            "turn_idx",
            role=pl.col("turns").struct.field("from"),
            text=normalized_text(pl.col("turns").struct.field("value")),
        )
        .with_columns(
            affirmed_text=pl.col("text").str.replace_all(rx(NEGATION_SCOPE_PATTERN), " . ")
        )
    )


def mentions_long(turns: pl.DataFrame) -> pl.DataFrame:
    """One row per category mention: conversation, image, turn, role, category, negated."""
    keys = ("conversation_id", "image_id", "turn_idx", "role")
    affirmed = turns.select(
        *keys, form=pl.col("affirmed_text").str.extract_all(rx(MENTION_PATTERN))
    ).with_columns(negated=pl.lit(False))
    negated = (
        turns.filter(pl.col("affirmed_text") != pl.col("text"))
        .select(
            *keys,
            form=pl.col("text")
            .str.extract_all(rx(NEGATION_SCOPE_PATTERN))
            .list.join(" . ")
            .str.extract_all(rx(MENTION_PATTERN)),
        )
        .with_columns(negated=pl.lit(True))
    )
    both = pl.concat([affirmed, negated]).explode("form", keep_nulls=False)
    return with_category(both, "form").select(*keys, "category", "negated")


def qa_pairs(turns: pl.DataFrame) -> pl.DataFrame:
    """One row per question/answer pair: a human turn immediately followed by a gpt turn."""
    return (
        turns.with_columns(
            next_conversation=pl.col("conversation_id").shift(-1),
            next_role=pl.col("role").shift(-1),
            answer=pl.col("text").shift(-1),
        )
        .filter(
            (pl.col("role") == "human")
            & (pl.col("next_role") == "gpt")
            & (pl.col("next_conversation") == pl.col("conversation_id"))
        )
        .select("conversation_id", "image_id", "turn_idx", question="text", answer="answer")
        .with_columns(
            is_polar=pl.col("question").str.contains(POLAR_PATTERN)
            & ~pl.col("question").str.contains(REQUEST_PATTERN),
            answer_yes=pl.col("answer").str.contains(YES_PATTERN),
            answer_no=pl.col("answer").str.contains(NO_PATTERN),
            answer_denies=denies(pl.col("answer")),
        )
    )


def denies(answer: pl.Expr) -> pl.Expr:
    first_sentence = answer.str.extract(r"^([^.!?;\n]*)", 1).fill_null("")
    return answer.str.contains(NO_PATTERN) | (
        ~answer.str.contains(AFFIRM_START_PATTERN)
        & first_sentence.str.contains(rx(NEGATION_SCOPE_PATTERN))
    )


def stated_counts(turns: pl.DataFrame) -> pl.DataFrame:
    """One row per count stated in an answer outside negation: conversation, category, number.

    The form is the longest suffix of the match that is a countable form; capture groups
    would push every match through the regex crate's slow capturing engine.
    """
    words = pl.col("match").str.replace_all(r"[\s-]+", " ").str.split(" ")
    countable = {f: FORM_TO_CATEGORY[f] for f in COUNTABLE_FORMS}

    def suffix(k: int) -> pl.Expr:
        return (
            words.list.slice(-k, k)
            .list.join(" ")
            .replace_strict(countable, default=None, return_dtype=pl.String)
        )

    fruit = pl.when(pl.col("match").str.contains("orange")).then(pl.lit("orange"))
    number = words.list.first()
    return (
        turns.filter(pl.col("role") == "gpt")
        .select(
            "conversation_id",
            "image_id",
            match=pl.col("affirmed_text").str.extract_all(rx(COUNT_PATTERN)),
        )
        .explode("match", keep_nulls=False)
        .filter(~pl.col("match").str.contains(_STOPWORD_GAP_PATTERN))
        .select(
            "conversation_id",
            "image_id",
            category=pl.coalesce(*(suffix(k) for k in range(_MAX_FORM_WORDS, 0, -1)), fruit),
            stated=pl.coalesce(
                number.cast(pl.Int64, strict=False),
                number.replace_strict(NUMBER_WORDS, default=None, return_dtype=pl.Int64),
            ),
        )
        .drop_nulls(["category", "stated"])
    )
