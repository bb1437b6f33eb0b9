"""Checks for what small LLMs get wrong when they write conversations from annotations.

A real 0.5B model's conversations passed CHAIR, count and region checks while they denied
objects that are there, copied the prompt's in-context example, leaked the annotation wording
("There is no mention of ...") and asked the same question twice. One function,
:func:`llm_checks`, scores every conversation for these (one row per input row, in order);
like every metric it keeps rows and decides nothing. docs/metrics.md says which metric
catches what:

- ``n_denied_present`` / ``denied_present_objects``: categories an answer denies inside a
  negation scope ("there is no dog") although the image holds them, boxed or named by a
  caption. Null for an image without annotations.
- ``example_overlap`` / ``example_copy``: per turn, the share of its word 4-grams found in the
  in-context examples of the self-instruct prompt (``prompts.EXAMPLES``); the conversation
  gets its highest turn. 4-grams that the system prompts themselves use are not counted
  ("the object in the red box" is prescribed wording). ``example_copy`` is set when one turn
  has at least ``MIN_COPIED_GRAMS`` example 4-grams making up at least ``COPY_SHARE`` of it.
- ``annotation_leak`` / ``annotation_leak_terms``: wording that only makes sense to someone
  reading the annotations: mention, caption, annotation, bounding box, bbox, coordinates,
  "the description", or a box written as numbers ("[0.12, 0.30").
- ``n_repeated_questions``: questions that repeat an earlier question of the same
  conversation (case, punctuation and spacing ignored).
- ``n_unjudged_claims`` / ``unjudged_claims``: attribute words (colours, sizes, materials)
  and actions (``-ing`` words) in answers, outside negation and set phrases ("in short",
  "the red box"), that none of the image's captions uses (compared by stem). No metric here
  can tell whether "the dogs are holding cans" is true, so such claims are reported as
  unjudged, never as passed; a word a caption also uses counts as supported, which is weak
  evidence, not proof.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import polars as pl

from vlit_assets.core.generated.prompts import EXAMPLES, SYSTEM_PROMPTS
from vlit_assets.core.scored.metrics import image_annotations
from vlit_assets.core.text.objects import CATEGORY_NAMES
from vlit_assets.core.text.reading import caption_mentions, mentions_long, turns_long

NGRAM = 4
COPY_SHARE = 0.5
MIN_COPIED_GRAMS = 4


_WORD = r"[a-z0-9']+"
_LEAK_PATTERN = (
    r"\b(?:mention(?:s|ed|ing)?|captions?|captioned|annotat(?:ion|ions|ed|or|ors)|"
    r"bounding[ -]box(?:es)?|bbox(?:es)?|coordinates?|(?:the|this|that) description)\b"
    r"|[\[(]\s*[01]?\.\d+\s*,\s*[01]?\.\d+"
)

# fmt: off
ATTRIBUTE_WORDS = frozenset((
    "red", "blue", "green", "yellow", "white", "black", "brown", "grey", "gray", "pink",
    "purple", "orange", "silver", "golden", "gold", "beige", "tan", "colorful", "colourful",
    "striped", "spotted", "plaid", "dark", "bright", "shiny",
    "large", "small", "big", "tiny", "huge", "giant", "tall", "short", "long", "wide",
    "narrow", "thick", "thin",
    "wooden", "metal", "metallic", "plastic", "leather", "stone", "brick", "glass", "ceramic",
    "old", "new", "young", "elderly", "wet", "dry", "dirty", "clean", "empty", "full",
    "broken", "open", "closed",
))
# -ing words that are not actions (nouns, pronouns, prepositions).
_NOT_ACTIONS = frozenset((
    "thing", "something", "anything", "nothing", "everything", "king", "ring", "spring",
    "string", "wing", "sing", "bring", "building", "buildings", "ceiling", "morning",
    "evening", "during", "clothing", "parking", "being", "darling", "pudding", "icing",
    "stuffing", "topping", "toppings", "frosting", "filling", "dressing", "seasoning",
    "bedding", "railing", "painting", "paintings", "setting", "meeting", "wedding", "feeling",
    "awning", "awnings", "lightning", "sibling", "duckling", "swing", "including",
))
# fmt: on
# Words of category names ("dining table") and set phrases that are no claim about the scene.
_NAME_WORDS = frozenset(w for name in CATEGORY_NAMES for w in name.split())
_SET_PHRASES = (
    r"\b(?:in short|(?:the )?red (?:box|rectangle|frame)|"
    r"looking at (?:the|this) (?:picture|image|photo|photograph|scene|frame|shot|view))\b"
)


def _stem(word: pl.Expr) -> pl.Expr:
    """A crude stem so that "holds", "holding" and "held" meet "hold" half way: strip -ing,
    -ed, -es, -s and a final e (held and hold still differ: the check is about words)."""
    return (
        word.str.replace(r"(?:ing|ed|es|s)$", "")
        .str.replace(r"e$", "")
        .str.replace(r"([bdgmnprt])[bdgmnprt]$", "$1")  # running -> runn -> run
    )


def _example_texts() -> list[str]:
    return [text for examples in EXAMPLES.values() for ex in examples
            for pair in ex.conversation for text in pair]  # fmt: skip


def _grams(texts: Iterable[str], n: int = NGRAM) -> set[str]:
    out: set[str] = set()
    for text in texts:
        words = re.findall(_WORD, text.lower().replace("\u2019", "'"))
        out.update(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    return out


def example_grams(examples: Sequence[str] | None = None) -> frozenset[str]:
    """Word 4-grams of the in-context examples, less those the system prompts use."""
    texts = _example_texts() if examples is None else list(examples)
    return frozenset(_grams(texts) - _grams(SYSTEM_PROMPTS.values()))


def _turn_grams(turns: pl.DataFrame, n: int) -> pl.DataFrame:
    """turn_row, gram: every word n-gram of every turn."""
    tokens = (
        turns.select("turn_row", tok=pl.col("text").str.extract_all(_WORD))
        .explode("tok", keep_nulls=False)
        .with_columns(pl.col("turn_row").cast(pl.UInt32))
    )
    parts = [pl.col("tok")] + [pl.col("tok").shift(-k) for k in range(1, n)]
    same_turn = pl.col("turn_row").shift(-(n - 1)) == pl.col("turn_row")
    return tokens.select(
        "turn_row", gram=pl.when(same_turn).then(pl.concat_str(parts, separator=" "))
    ).drop_nulls("gram")


def _example_copy(turns: pl.DataFrame, grams: frozenset[str], n: int) -> pl.DataFrame:
    per_turn = (
        _turn_grams(turns, n)
        .with_columns(hit=pl.col("gram").is_in(pl.Series(sorted(grams), dtype=pl.String)))
        .group_by("turn_row")
        .agg(n_grams=pl.len(), hits=pl.col("hit").sum())
        .join(turns.select("turn_row", "conversation_id"), on="turn_row")
        .with_columns(share=pl.col("hits") / pl.col("n_grams"))
    )
    copied = (pl.col("hits") >= MIN_COPIED_GRAMS) & (pl.col("share") >= COPY_SHARE)
    return per_turn.group_by("conversation_id").agg(
        example_overlap=pl.col("share").max(), example_copy=copied.any()
    )


def _leaks(turns: pl.DataFrame) -> pl.DataFrame:
    found = (
        turns.select("conversation_id", term=pl.col("text").str.extract_all(_LEAK_PATTERN))
        .explode("term", keep_nulls=False)
        .with_columns(
            term=pl.when(pl.col("term").str.contains(r"^[\[(]"))
            .then(pl.lit("<box numbers>"))
            .otherwise(pl.col("term").str.replace_all(r"\s+", " "))
        )
    )
    return found.group_by("conversation_id").agg(
        annotation_leak_terms=pl.col("term").unique().sort()
    )


def _repeated(turns: pl.DataFrame) -> pl.DataFrame:
    questions = turns.filter(pl.col("role") == "human").with_columns(
        q=pl.col("text").str.extract_all(_WORD).list.join(" ")
    )
    return questions.group_by("conversation_id").agg(
        n_repeated_questions=(pl.len() - pl.col("q").n_unique()).cast(pl.Int32)
    )


def _denied_present(
    conversations: pl.DataFrame,
    mentions: pl.DataFrame,
    present: pl.DataFrame,
    judged: pl.DataFrame | None,
) -> pl.DataFrame:
    denied = mentions.filter((pl.col("role") == "gpt") & pl.col("negated")).select(
        "conversation_id", "image_id", "category"
    )
    if judged is not None:
        denied = denied.join(
            conversations.select("conversation_id", "source"), on="conversation_id"
        ).join(judged, on=["source", "category"], how="semi")
    hits = denied.join(present, on=["image_id", "category"], how="semi")
    return hits.group_by("conversation_id").agg(
        denied_present_objects=pl.col("category").unique().sort()
    )


def _unjudged(
    conversations: pl.DataFrame, turns: pl.DataFrame, captions: pl.DataFrame | None
) -> pl.DataFrame:
    words = (
        turns.filter(pl.col("role") == "gpt")
        .select(
            "conversation_id",
            "image_id",
            word=pl.col("affirmed_text").str.replace_all(_SET_PHRASES, " ").str.extract_all(_WORD),
        )
        .explode("word", keep_nulls=False)
        .filter(~pl.col("word").is_in(list(_NAME_WORDS)))
        .filter(
            pl.col("word").is_in(list(ATTRIBUTE_WORDS))
            | (
                pl.col("word").str.ends_with("ing")
                & (pl.col("word").str.len_chars() >= 5)
                & ~pl.col("word").is_in(list(_NOT_ACTIONS))
            )
        )
        .with_columns(stem=_stem(pl.col("word")))
    )
    if captions is not None:
        said = (
            captions.select(
                pl.col("image_id").cast(pl.String),
                word=pl.col("caption").cast(pl.String).str.to_lowercase().str.extract_all(_WORD),
            )
            .explode("word", keep_nulls=False)
            .select("image_id", stem=_stem(pl.col("word")))
            .unique()
        )
        words = words.join(said, on=["image_id", "stem"], how="anti")
    return words.group_by("conversation_id").agg(unjudged_claims=pl.col("word").unique().sort())


def llm_checks(
    conversations: pl.DataFrame,
    objects: pl.DataFrame | None = None,
    tags: pl.DataFrame | None = None,
    captions: pl.DataFrame | None = None,
    categories: pl.DataFrame | None = None,
    *,
    examples: Sequence[str] | None = None,
) -> pl.DataFrame:
    """The columns of ``LLM_CHECK_COLUMNS`` plus conversation_id: one row per input row.

    ``conversations`` has conversation_id, image_id, turns (and source when ``categories``
    limits judging to what each source annotates); the annotation frames are raw__objects,
    raw__tags, raw__captions and raw__categories and may be None (QC-only data): then
    ``n_denied_present`` is null, and every attribute/action claim is unjudged when no
    captions are given. ``examples`` replaces the prompt's in-context examples.
    """
    missing = [c for c in ("conversation_id", "image_id", "turns") if c not in conversations]
    if missing:
        raise ValueError(f"llm_checks: conversations lack columns {missing}")
    conv = conversations.with_columns(pl.col("image_id").cast(pl.String))
    turns = turns_long(conv).with_row_index("turn_row")
    mentions = mentions_long(turns)
    ann = image_annotations(objects, tags, categories, captions)
    present = ann.present.select("image_id", "category")
    if captions is not None:
        present = pl.concat([present, caption_mentions(captions)]).unique()
    parts = [
        _denied_present(conv, mentions, present, ann.judged),
        _example_copy(turns, example_grams(examples), NGRAM),
        _leaks(turns),
        _repeated(turns),
        _unjudged(conv, turns, captions),
    ]
    out = conv.select("conversation_id", "image_id")
    for part in parts:
        out = out.join(part, on="conversation_id", how="left", maintain_order="left")
    annotated = pl.col("image_id").is_in(ann.annotated.get_column("image_id").implode())
    empty = pl.lit([], dtype=pl.List(pl.String))
    return out.select(
        "conversation_id",
        n_denied_present=pl.when(annotated)
        .then(pl.col("denied_present_objects").list.len().fill_null(0))
        .cast(pl.Int32),
        denied_present_objects=pl.when(annotated).then(
            pl.col("denied_present_objects").fill_null(empty)
        ),
        example_overlap=pl.col("example_overlap").fill_null(0.0),
        example_copy=pl.col("example_copy").fill_null(False),
        annotation_leak=pl.col("annotation_leak_terms").list.len().fill_null(0) > 0,
        annotation_leak_terms=pl.col("annotation_leak_terms").fill_null(empty),
        n_repeated_questions=pl.col("n_repeated_questions").fill_null(0).cast(pl.Int32),
        n_unjudged_claims=pl.col("unjudged_claims").list.len().fill_null(0).cast(pl.Int32),
        unjudged_claims=pl.col("unjudged_claims").fill_null(empty),
    )
